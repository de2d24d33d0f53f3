# One image for the whole krone deployment (docker-compose.yml): the Airflow components, the Spark master
# and workers, and the MLflow server all run it, so Python, pyspark, mlflow and krone_jobs are the same
# version everywhere (Spark executors run krone_jobs code on the workers; PYSPARK_PYTHON is this venv).
#
#   docker build -t krone:local .
#
# The project is installed with exactly the README's install command ("Two commands"), into
# /opt/krone/.venv; tests/test_deployment.py checks that the two stay the same.
FROM python:3.11-slim-bookworm

# Optional: an extra package index for the install (e.g. a CPU-only torch index, or a local mirror).
# Left undefined by default, so pip sees no such variable.
ARG PIP_EXTRA_INDEX_URL

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

# Java 17 for Spark (driver in the Airflow task processes, master and workers); curl for healthchecks;
# tini reaps the JVMs and Python children of every service.
RUN mkdir -p /usr/share/man/man1 \
    && apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl procps tini \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sfn "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

# Non-root runtime user (uid 50000, group 0, as the official Airflow image: files stay group-writable).
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home --shell /bin/bash airflow

WORKDIR /opt/krone

# Dependencies first (their layer is reused while only DAGs, SQL or scripts change).
COPY pyproject.toml README.md ./
COPY krone_jobs ./krone_jobs
RUN python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e ".[dev]"

# The rest of the project: sql/ (warehouse DDL read by krone_jobs.warehouse), dags/, deploy/, bench/ ...
COPY . .

# Directories that named volumes are mounted on inherit this ownership on first use.
RUN mkdir -p /opt/krone/data /opt/airflow/logs /opt/airflow/auth /mlartifacts \
    && chown -R 50000:0 /opt/krone/data /opt/airflow /mlartifacts \
    && chmod -R g+rwX /opt/krone/data /opt/airflow /mlartifacts \
    && chmod 0755 /opt/krone/deploy/entrypoint.sh

ENV PATH=/opt/krone/.venv/bin:$PATH \
    JAVA_HOME=/opt/java \
    KRONE_HOME=/opt/krone \
    KRONE_DATA_ROOT=/opt/krone/data \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/krone/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    PYSPARK_PYTHON=/opt/krone/.venv/bin/python \
    MLFLOW_DISABLE_TELEMETRY=true \
    GX_ANALYTICS_ENABLED=false

# Run from a writable directory (Spark may create spark-warehouse/ or derby.log in the working directory).
WORKDIR /opt/airflow
USER 50000
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/krone/deploy/entrypoint.sh"]
CMD ["krone", "--help"]
