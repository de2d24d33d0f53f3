"""The docker-compose deployment, checked statically (no container engine needed, runs in well under a second).

docker-compose.yml, Dockerfile and .env.example must agree with what the code reads (``KRONE_*`` in
krone_jobs/config.py), with the DAGs (pool names in dags/krone_common.py) and with the README (the install
command). A real ``docker compose config`` runs too where the docker CLI has the compose plugin.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / ".env.example"
README = REPO / "README.md"
CONFIG = REPO / "krone_jobs" / "config.py"
DAGS_COMMON = REPO / "dags" / "krone_common.py"
POSTGRES_INIT = REPO / "deploy" / "postgres-init.sh"
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"

AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
LONG_RUNNING_AIRFLOW = AIRFLOW_SERVICES[1:]
REQUIRED_SERVICES = ("postgres", *AIRFLOW_SERVICES, "spark-master", "spark-worker", "mlflow")
# Where krone code runs: task processes (LocalExecutor: in the scheduler), DAG parsing, triggers, executors.
KRONE_CODE_SERVICES = ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "spark-worker")
HEALTHCHECKED = tuple(s for s in REQUIRED_SERVICES if s != "airflow-init")
EXPECTED_POOLS = {"krone_spark": 2, "krone_llm": 1}

# ${VAR}, ${VAR:-x}, ${VAR:?msg}, $VAR; "$$" is compose's escape for a literal "$" (left to the shell).
SUBSTITUTION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")
WHOLE_SUBSTITUTION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?[-?])[^}]*)?\}$")
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|API_KEY|FERNET_KEY|TOKEN)", re.IGNORECASE)
POOLS_SET = re.compile(r"airflow\s+pools\s+set\s+(\S+)\s+(\d+)")


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def raw_compose() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def compose(raw_compose: str) -> dict[str, Any]:
    data = yaml.safe_load(raw_compose)  # SafeLoader resolves the x-* anchors and "<<" merges
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, whichever of the two compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {k: v for k, v in pairs}
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def resolve(value: str, defaults: dict[str, str]) -> str:
    """Compose-style interpolation with the .env.example values (enough for the checks here)."""

    def one(match: re.Match[str]) -> str:
        whole = match.group(0)
        name = match.group(1) or match.group(2)
        default = re.match(r"^\$\{[A-Za-z0-9_]+:?-(.*)\}$", whole)
        return defaults.get(name) or (default.group(1) if default else "")

    return SUBSTITUTION.sub(one, value).replace("$$", "$")


def url_password(value: str) -> str | None:
    """The password part of ``scheme://user:password@host...`` taken literally (``urlsplit`` would stop at
    the ``?`` of a ``${VAR:?message}`` substitution)."""
    if "://" not in value:
        return None
    userinfo, at, _ = value.split("://", 1)[1].rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return userinfo.split(":", 1)[1]


def command_words(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def volume_pairs(service: dict[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            pairs.append((str(vol.get("source", "")), str(vol["target"])))
        else:
            parts = str(vol).split(":")
            pairs.append((parts[0], parts[1]) if len(parts) > 1 else ("", parts[0]))
    return pairs


def env_example() -> dict[str, str]:
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            entries[name.strip()] = value.strip()
    return entries


def config_variables() -> set[str]:
    names = set(re.findall(r"[\"'](KRONE_[A-Z0-9_]+)[\"']", CONFIG.read_text()))
    assert names, "found no KRONE_* variable in krone_jobs/config.py"
    return names


def shell_steps(command: str) -> list[str]:
    return [" ".join(step.split()) for step in command.split("&&") if step.strip()]


def readme_install_steps() -> list[str]:
    """The install part (venv + pip) of the README's first command under "Two commands"."""
    text = README.read_text()
    section = text.split("## Two commands", 1)
    assert len(section) == 2, "README has no 'Two commands' section"
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section[1], re.DOTALL)
    assert block, "no code block under 'Two commands'"
    line = next((ln for ln in block.group(1).splitlines() if "pip install" in ln and not ln.lstrip().startswith("#")), None)
    assert line, "no pip install command under 'Two commands'"
    steps = shell_steps(line)
    install = []
    for step in steps:
        if re.match(r"^python3? -m venv\b", step) or "pip install" in step:
            install.append(step)
        elif install:
            break
    assert install, line
    return install


def dockerfile_runs() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [ln.strip()[4:] for ln in text.splitlines() if ln.strip().startswith("RUN ")]


# --------------------------------------------------------------------------------------------- compose


def test_compose_file_is_compose_spec(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose spec has no top-level version key"
    assert isinstance(compose.get("services"), dict)


def test_required_services_present(services: dict[str, Any]) -> None:
    missing = [s for s in REQUIRED_SERVICES if s not in services]
    assert not missing, f"services missing from docker-compose.yml: {missing}"


def test_airflow_services_share_the_project_image(services: dict[str, Any]) -> None:
    images = set()
    for name in AIRFLOW_SERVICES:
        svc = services[name]
        build = svc.get("build")
        assert build, f"{name} is not built from the project's Dockerfile"
        context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        assert (REPO / context / dockerfile).resolve() == DOCKERFILE.resolve(), f"{name} builds {context}/{dockerfile}"
        images.add((svc.get("image"), str(build)))
    assert len(images) == 1, f"Airflow services differ in image/build: {images}"
    image = images.pop()
    for name in ("spark-master", "spark-worker", "mlflow"):  # same Python, pyspark, mlflow as the drivers
        assert (services[name].get("image"), str(services[name].get("build"))) == image, f"{name} does not run the project image"


def test_airflow_services_mount_the_dags_folder(services: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        dags_folder = environment(services[name]).get("AIRFLOW__CORE__DAGS_FOLDER")
        assert dags_folder, f"{name}: AIRFLOW__CORE__DAGS_FOLDER not set"
        mounts = {target.rstrip("/"): source for source, target in volume_pairs(services[name])}
        assert dags_folder.rstrip("/") in mounts, f"{name}: nothing mounted on {dags_folder}"
        assert (REPO / mounts[dags_folder.rstrip("/")]).resolve() == (REPO / "dags").resolve(), f"{name}: {dags_folder} is not ./dags"


def test_airflow_core_settings(services: dict[str, Any]) -> None:
    env = {name: environment(services[name]) for name in AIRFLOW_SERVICES}
    for name, e in env.items():
        assert e.get("AIRFLOW__CORE__EXECUTOR") == "LocalExecutor", name
        assert str(e.get("AIRFLOW__CORE__LOAD_EXAMPLES")).lower() == "false", name
        assert e.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").startswith("postgresql"), name
        url = urlsplit(e.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL") or "")
        assert url.hostname == "airflow-apiserver" and url.path.rstrip("/") == "/execution", name
    # Secrets that every component must share (task tokens are signed by one, checked by another).
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"):
        values = {e.get(key) for e in env.values()}
        assert len(values) == 1 and None not in values, f"{key} differs or is missing between Airflow services: {values}"
    assert command_words(services["airflow-apiserver"])[-1:] == ["api-server"]
    assert command_words(services["airflow-scheduler"])[-1:] == ["scheduler"]
    assert command_words(services["airflow-dag-processor"])[-1:] == ["dag-processor"]
    assert command_words(services["airflow-triggerer"])[-1:] == ["triggerer"]
    init_script = " ".join(command_words(services["airflow-init"]))
    assert "airflow db migrate" in init_script


def test_every_config_variable_is_set_where_krone_code_runs(services: dict[str, Any]) -> None:
    wanted = config_variables()
    for name in KRONE_CODE_SERVICES:
        missing = sorted(wanted - set(environment(services[name])))
        assert not missing, f"{name} lacks {missing} (read by krone_jobs/config.py)"


def test_the_dag_settings_reach_every_airflow_component(services: dict[str, Any]) -> None:
    """What dags/krone_common.py reads decides which DAGs exist: every component that parses DAG files or runs
    their tasks must see the same values."""
    read = set(re.findall(r"os\.environ\.get\(\"(KRONE_[A-Z_]+)\"", DAGS_COMMON.read_text()))
    assert {"KRONE_SOURCES", "KRONE_START_DATE"} <= read
    for key in read:
        values = {environment(services[name]).get(key) for name in AIRFLOW_SERVICES}
        assert len(values) == 1 and None not in values, f"{key} differs or is missing between Airflow services"


def test_krone_endpoints_point_at_their_services(services: dict[str, Any]) -> None:
    defaults = env_example()
    master_words = command_words(services["spark-master"])
    assert "org.apache.spark.deploy.master.Master" in master_words
    master_port = master_words[master_words.index("--port") + 1] if "--port" in master_words else "7077"
    master_names = {"spark-master", services["spark-master"].get("hostname")}
    worker_words = command_words(services["spark-worker"])
    assert "org.apache.spark.deploy.worker.Worker" in worker_words
    for name in KRONE_CODE_SERVICES:
        env = environment(services[name])
        spark = urlsplit(resolve(env["KRONE_SPARK_MASTER"], defaults))
        assert spark.scheme == "spark" and spark.hostname in master_names and str(spark.port) == master_port, name
        mlflow = urlsplit(resolve(env["KRONE_MLFLOW_URI"], defaults))
        assert mlflow.hostname == "mlflow" and mlflow.port == 5000, name
        warehouse = urlsplit(resolve(env["KRONE_WAREHOUSE_URL"], defaults))
        assert warehouse.scheme.startswith("postgresql") and warehouse.hostname == "postgres", name
        assert warehouse.path.lstrip("/") == "krone", name
    # The executors on spark-worker reach the master it registered with.
    assert f"spark://spark-master:{master_port}" in worker_words
    mlflow_words = command_words(services["mlflow"])
    assert mlflow_words[:2] == ["mlflow", "server"] and "--artifacts-destination" in mlflow_words
    assert mlflow_words[mlflow_words.index("--port") + 1] == "5000"
    assert mlflow_words[mlflow_words.index("--host") + 1] == "0.0.0.0"
    backend = environment(services["mlflow"]).get("MLFLOW_BACKEND_STORE_URI") or ""
    if "--backend-store-uri" in mlflow_words:
        backend = mlflow_words[mlflow_words.index("--backend-store-uri") + 1]
    assert urlsplit(resolve(backend, defaults)).hostname == "postgres", "MLflow's backend store is not the postgres service"


def test_postgres_init_creates_every_database_the_urls_use(services: dict[str, Any]) -> None:
    pg = services["postgres"]
    mounts = dict((t, s) for s, t in volume_pairs(pg))
    init_targets = [t for t in mounts if t.startswith("/docker-entrypoint-initdb.d/")]
    assert init_targets, "no init script mounted into /docker-entrypoint-initdb.d"
    assert any((REPO / mounts[t]).resolve() == POSTGRES_INIT.resolve() for t in init_targets)
    assert os.access(POSTGRES_INIT, os.X_OK), "the postgres entrypoint only executes (rather than sources) +x scripts"
    created = set(re.findall(r"CREATE DATABASE (\w+)", POSTGRES_INIT.read_text()))
    urls = [environment(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
            environment(services["airflow-scheduler"])["KRONE_WAREHOUSE_URL"],
            environment(services["mlflow"]).get("MLFLOW_BACKEND_STORE_URI", "")]
    used = {urlsplit(resolve(u, env_example())).path.lstrip("/") for u in urls if u}
    assert used == {"airflow", "krone", "mlflow"}, used
    assert used <= created, f"databases used but not created by {POSTGRES_INIT.name}: {used - created}"
    # Each password the init script reads is handed to the postgres container.
    read = set(re.findall(r"\$\{([A-Z_]+_PASSWORD)", POSTGRES_INIT.read_text()))
    assert read <= set(environment(pg)), read - set(environment(pg))


def strings(node: Any) -> list[str]:
    """Every string (keys and values) of a parsed YAML tree: what compose interpolates (not comments)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def test_substitutions_have_env_example_entries(compose: dict[str, Any]) -> None:
    used = {a or b for text in strings(compose) for a, b in SUBSTITUTION.findall(text)}
    documented = set(env_example())
    assert used, "docker-compose.yml substitutes nothing (secrets must come from .env)"
    missing = sorted(used - documented)
    assert not missing, f"substituted in docker-compose.yml but not in .env.example: {missing}"
    unused = sorted(documented - used)
    assert not unused, f".env.example lists variables docker-compose.yml never uses: {unused}"


def test_no_literal_secrets_in_compose(services: dict[str, Any], raw_compose: str) -> None:
    for name, svc in services.items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and value and not key.endswith("_FILE"):
                assert WHOLE_SUBSTITUTION.match(value), f"{name}: {key} is a literal, not a ${{VAR}} from .env"
            password = url_password(value or "")
            if password is not None:
                assert WHOLE_SUBSTITUTION.match(password), f"{name}: {key} has a literal password in its URL"
    for name, svc in services.items():  # URLs on command lines too
        for word in command_words(svc):
            password = url_password(word)
            assert password is None or WHOLE_SUBSTITUTION.match(password), f"{name}: literal password on the command line"
    body = "\n".join(ln for ln in raw_compose.splitlines() if not ln.lstrip().startswith("#"))
    assert "change-me" not in body, "a placeholder of .env.example was copied into docker-compose.yml"


def test_env_example_has_no_real_secrets() -> None:
    for name, value in env_example().items():
        if SECRET_NAME.search(name):
            assert value == "" or value.startswith("change-me"), f".env.example: {name} must be empty or a change-me placeholder"


def test_healthchecks_and_dependency_conditions(services: dict[str, Any]) -> None:
    for name in HEALTHCHECKED:
        hc = services[name].get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = (spec or {}).get("condition")
            assert condition in {"service_healthy", "service_completed_successfully", "service_started"}, (name, dep)
            if condition == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep} to be healthy, but it has no healthcheck"
    for name in LONG_RUNNING_AIRFLOW:
        deps = services[name]["depends_on"]
        assert deps.get("postgres", {}).get("condition") == "service_healthy", name
        assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", name
    assert services["airflow-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["spark-worker"]["depends_on"]["spark-master"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_shared_data_volume(services: dict[str, Any], compose: dict[str, Any]) -> None:
    """Drivers (Airflow tasks) and executors (spark-worker) must see the same KRONE_DATA_ROOT."""
    data_root = environment(services["airflow-scheduler"])["KRONE_DATA_ROOT"]
    sources = set()
    for name in ("airflow-scheduler", "spark-worker"):
        assert environment(services[name])["KRONE_DATA_ROOT"] == data_root, name
        mounts = {t.rstrip("/"): s for s, t in volume_pairs(services[name])}
        assert data_root.rstrip("/") in mounts, f"{name}: no volume on {data_root}"
        sources.add(mounts[data_root.rstrip("/")])
    assert len(sources) == 1 and sources <= set(compose.get("volumes") or {}), sources


def test_pools_match_the_dags(services: dict[str, Any]) -> None:
    script = " ".join(command_words(services["airflow-init"]))
    pools = {name: int(slots) for name, slots in POOLS_SET.findall(script)}
    assert pools == EXPECTED_POOLS, pools
    if not DAGS_COMMON.exists():
        pytest.skip(f"{DAGS_COMMON.relative_to(REPO)} does not exist yet: pool names not compared with the DAGs")
    source = DAGS_COMMON.read_text()
    constants = dict(re.findall(r"^([A-Z_]*POOL)\s*(?::[^=\n]+)?=\s*[\"']([^\"']+)[\"']", source, re.MULTILINE))
    assert {"SPARK_POOL", "LLM_POOL"} <= set(constants), f"dags/krone_common.py defines {constants}"
    assert set(constants.values()) == set(pools), f"DAG pools {constants} != pools created by airflow-init {pools}"


# --------------------------------------------------------------------------------------------- image


def test_dockerfile_base_java_and_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim-bookworm\s*$", text, re.MULTILINE)
    assert "openjdk-17-jre-headless" in text
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE), "the image should not run as root"
    assert os.access(ENTRYPOINT, os.X_OK)
    assert "deploy/entrypoint.sh" in text


def test_dockerfile_installs_with_the_readme_command() -> None:
    readme = readme_install_steps()
    for run in dockerfile_runs():
        steps = shell_steps(run)
        for i in range(len(steps) - len(readme) + 1):
            if steps[i : i + len(readme)] == readme:
                return
    pytest.fail(f"no RUN in the Dockerfile runs the README's install command {' && '.join(readme)!r}")


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".git", ".env", "data"} <= ignored


def test_docker_compose_config_when_available(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("docker CLI without the compose plugin")
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text())
    result = subprocess.run(
        [docker, "compose", "--project-directory", str(REPO), "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_standalone_check_script_help() -> None:
    script = REPO / "bench" / "airflow_standalone_check.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--dags-folder" in result.stdout and "--expect" in result.stdout, result.stderr


def test_catch_up_check_script_help() -> None:
    script = REPO / "bench" / "airflow_catch_up_check.py"
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--via" in result.stdout and "train" in result.stdout, result.stderr
