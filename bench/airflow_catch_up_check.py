#!/usr/bin/env python3
"""``krone_score`` under a real Airflow scheduler, triggered by a real ``krone_kseqs`` asset event: does a
night take up the earlier days of its source that no score run recorded?

    .venv/bin/python bench/airflow_catch_up_check.py [--timeout 900] [--dags-folder DIR] [--keep-home]

What it does, in a throw-away home (``airflow standalone`` as ``bench/airflow_standalone_check.py`` starts it,
SQLite metadata, DuckDB warehouse, SQLite MLflow store):

1. generates three days of the ``syn`` source and runs ``krone night`` on them with no model: parsed only,
   none scored (as a deployment's days before its first training);
2. trains a model on the first two days with ``krone train --end``, which promotes it: no Airflow asset event
   is emitted, so no catch-up run is started by the promotion;
3. starts Airflow, unpauses ``krone_score`` only and posts one ``krone_kseqs`` event naming the third day
   (``POST /api/v2/assets/events``, the event a ``krone_parse_syn`` run emits);
4. waits for the run it triggers and prints its partitions (the ``partitions`` XCom), the state of each mapped
   ``score``, and the days the warehouse now has score runs for.

Exit 0 when the run succeeded and every day is scored (the named one and the two before it), 1 otherwise
(2 when Airflow never came up). Prints the seconds of each step.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from airflow_standalone_check import Api, build_env, free_port, get_token, stop, tail, wait_healthy

REPO = Path(__file__).resolve().parents[1]
SOURCE = "syn"
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")


def krone_env(home: Path) -> dict[str, str]:
    """The ``KRONE_*`` settings of the throw-away home, for the ``krone`` commands and the Airflow tasks."""
    return {"KRONE_DATA_ROOT": str(home / "data"), "KRONE_WAREHOUSE_URL": f"duckdb:///{home / 'warehouse.duckdb'}",
            "KRONE_MLFLOW_URI": f"sqlite:///{home / 'mlflow.db'}",
            "KRONE_MLFLOW_ARTIFACTS": (home / "mlflow-artifacts").as_uri(), "KRONE_SOURCES": f"{SOURCE}:krone",
            "KRONE_START_DATE": DAYS[0]}


def krone(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([str(REPO / ".venv" / "bin" / "krone"), *args], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"krone {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def wait_for_run(api: Api, deadline: float) -> dict[str, Any]:
    """The first ``krone_score`` run, once it has finished."""
    while time.monotonic() < deadline:
        runs = api.get("/api/v2/dags/krone_score/dagRuns?limit=10").get("dag_runs", [])
        done = [r for r in runs if r.get("state") in ("success", "failed")]
        if done:
            return done[0]
        time.sleep(3.0)
    raise TimeoutError("no krone_score run finished in time")


def scored_days(env: dict[str, str]) -> list[str]:
    from krone_jobs.warehouse import Warehouse

    with Warehouse(env["KRONE_WAREHOUSE_URL"]) as wh:
        return sorted(wh.stage_days(SOURCE, "score"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole check (default: 900)")
    p.add_argument("--dags-folder", type=Path, default=REPO / "dags",
                   help="DAG folder (default: the repo's dags/; another revision's, to compare)")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home (logs, stores) afterwards")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    timings: dict[str, float] = {}
    home = Path(tempfile.mkdtemp(prefix="krone-airflow-catch-up-"))
    port, airflow = free_port(), REPO / ".venv" / "bin" / "airflow"
    env = {**build_env(home, a.dags_folder.resolve(), port, airflow, all_admins=False), **krone_env(home)}
    for name in ("KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL", "KRONE_LLM_API_KEY", "OPENAI_API_KEY"):
        env.pop(name, None)  # no network: the LLM stays off
    api = Api(f"http://127.0.0.1:{port}")
    proc = None
    try:
        krone(env, "generate", "--source", SOURCE, "--days", "3", "--sessions-per-day", "150", "--seed", "7",
              "--start-date", DAYS[0])
        krone(env, "night", "--source", SOURCE, "--format", "krone", "--date", DAYS[0], "--end", DAYS[-1])
        timings["generate + krone night (parse only)"] = time.monotonic() - t0
        krone(env, "train", "--source", SOURCE, "--end", DAYS[1], "--days", "2", "--labels",
              str(home / "data" / "labels" / SOURCE / "labels.csv"), "--fp-bound", "1.0", "--min-heldout", "0")
        timings["krone train (promoted, no asset event)"] = time.monotonic() - t0
        print(f"before: days with a score run {scored_days(env)}", flush=True)

        log_path = home / "standalone.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([str(airflow), "standalone"], cwd=home, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_healthy(api, proc, deadline):
            print(f"FAIL: the API server never answered; last lines of {log_path}:\n{tail(log_path)}")
            return 2
        api.token = get_token(api, home, False, deadline)
        for pool, slots in (("krone_spark", 2), ("krone_llm", 1)):
            api.call("POST", "/api/v2/pools", {"name": pool, "slots": slots})
        asset_id = None
        while asset_id is None and time.monotonic() < deadline:
            assets = api.get("/api/v2/assets?name_pattern=krone_kseqs").get("assets", [])
            asset_id = next((x["id"] for x in assets if x["name"] == "krone_kseqs"), None)
            if asset_id is None:
                time.sleep(2.0)
        status, payload = api.call("PATCH", "/api/v2/dags/krone_score", {"is_paused": False})
        assert status == 200, f"unpause: HTTP {status}: {payload}"
        timings["Airflow up, krone_score unpaused"] = time.monotonic() - t0
        extra = {"source": SOURCE, "dt": DAYS[-1], "data_root": env["KRONE_DATA_ROOT"]}
        status, payload = api.call("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": extra})
        assert status in (200, 201), f"asset event: HTTP {status}: {payload}"
        print(f"posted a krone_kseqs event {extra}", flush=True)

        run = wait_for_run(api, deadline)
        timings["krone_score run finished"] = time.monotonic() - t0
        base = f"/api/v2/dags/krone_score/dagRuns/{run['dag_run_id']}"
        parts = api.get(f"{base}/taskInstances/partitions/xcomEntries/return_value").get("value")
        print(f"run {run['dag_run_id']} ({run.get('run_type')}): {run['state']}")
        print(f"  partitions: {[(p['source'], p['dt']) for p in parts or []]}")
        tis = api.get(f"{base}/taskInstances?limit=100").get("task_instances", [])
        for ti in sorted(tis, key=lambda t: (t["task_id"], t.get("map_index", -1))):
            print(f"  {ti['task_id']}[{ti.get('map_index', -1)}]: {ti['state']}")
        after = scored_days(env)
        print(f"after: days with a score run {after}")
        ok = run["state"] == "success" and after == list(DAYS)
        print("OK" if ok else "FAIL")
        if not ok:
            print(f"last lines of {log_path}:\n{tail(log_path)}")
        return 0 if ok else 1
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        print(f"FAIL: {type(exc).__name__}: {exc}")
        return 1
    finally:
        if proc is not None:
            stop(proc, home)
        timings["total"] = time.monotonic() - t0
        print("timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()), flush=True)
        if a.keep_home:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
