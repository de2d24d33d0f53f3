#!/usr/bin/env bash
# Entrypoint of the krone image (see Dockerfile): set the address Spark binds to and advertises, then run
# the service's command.
#
# krone_jobs.spark.get_spark() defaults SPARK_LOCAL_IP to 127.0.0.1 (right for local mode, wrong in a
# cluster: executors on spark-worker must reach the driver inside an Airflow task, and the master must
# reach the worker). Here it defaults to this container's own address on the compose network instead.
set -euo pipefail

if [[ -z "${SPARK_LOCAL_IP:-}" ]]; then
  SPARK_LOCAL_IP="$(hostname -i 2>/dev/null | awk '{print $1}')" || true
  if [[ -z "${SPARK_LOCAL_IP}" || "${SPARK_LOCAL_IP}" == 127.* ]]; then
    SPARK_LOCAL_IP="$(python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))')"
  fi
  export SPARK_LOCAL_IP
fi

exec "$@"
