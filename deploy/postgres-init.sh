#!/usr/bin/env bash
# Runs once, when the postgres service initialises an empty data volume (/docker-entrypoint-initdb.d):
# one role and one database each for the Airflow metadata, the MLflow backend store and the krone
# warehouse. Passwords come from the environment (.env), never from this file. To re-run it, remove the
# postgres-data volume (docker compose down -v), which deletes all three databases.
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD in .env}"
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env}"
: "${KRONE_DB_PASSWORD:?set KRONE_DB_PASSWORD in .env}"

# psql's :'name' quotes each value as an SQL literal, so any character is safe in a password here (the
# URLs in docker-compose.yml still need URL-safe characters).
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v airflow_pw="${AIRFLOW_DB_PASSWORD}" \
  -v mlflow_pw="${MLFLOW_DB_PASSWORD}" \
  -v krone_pw="${KRONE_DB_PASSWORD}" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';

CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow ENCODING 'UTF8';

CREATE ROLE krone LOGIN PASSWORD :'krone_pw';
CREATE DATABASE krone OWNER krone ENCODING 'UTF8';
SQL

echo "postgres-init: databases airflow, mlflow, krone created"
