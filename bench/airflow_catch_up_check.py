#!/usr/bin/env python3
"""``krone_score`` under a real Airflow scheduler, triggered by real asset events: does a night take up the
earlier days of its source that no score run recorded, and does a promotion take up all of them?

    .venv/bin/python bench/airflow_catch_up_check.py [--via event|parse|train|failed|late] [--timeout 900]
                                                      [--dags-folder DIR] [--keep-home]

What it does, in a throw-away home (``airflow standalone`` as ``bench/airflow_standalone_check.py`` starts it,
SQLite metadata, DuckDB warehouse, SQLite MLflow store), with the three days before today:

1. generates the three days of the ``syn`` source and runs ``krone night`` on the first (``--via parse``) or on
   all three (otherwise) with no model: parsed only, none scored, as a deployment's days before its first
   training;
2. except with ``--via train``, trains a model on the first day with ``krone train --end``, which promotes it:
   no Airflow asset event is emitted, so no catch-up run is started by the promotion;
3. starts Airflow and then
   * ``--via event`` (default): unpauses ``krone_score`` only and posts one ``krone_kseqs`` event naming the
     third day (``POST /api/v2/assets/events``, the event a ``krone_parse_syn`` run emits);
   * ``--via parse``: unpauses ``krone_parse_syn`` (``KRONE_START_DATE`` = the second day, so its catchup
     makes two runs) and ``krone_score``: the whole chain, each parse run's event triggering a score run;
   * ``--via train``: unpauses ``krone_train_syn`` and ``krone_score`` and triggers a training run on the first
     day over the REST API: its promotion's ``krone_model`` event triggers the score run;
   * ``--via failed``: as ``event``, with the second day's sessions file cut in half first (a restore that
     stopped half-way). The first run must fail that day only, at its first try; a second event for the third
     day must start a run that sets the second day aside (it maps the third day only) and succeeds; after
     ``krone sessionize`` of the second day (what its error says to run), a third event's run must take it up
     again by itself;
   * ``--via late``: as ``parse``, with the third day's raw logs held back (not delivered yet). Its run's
     ``raw_ready`` sensor must wait (``up_for_reschedule``, looking every ``KRONE_RAW_POKE_SECONDS`` = 30 s)
     while its ``parse`` has not run and no partition of the day exists, and its deadline alert must come
     (``KRONE_RUN_DEADLINE_HOURS`` = 0.03, 108 s); once the logs are delivered, the run must go on by itself
     and score the day;
4. waits until no run is left and prints each run, the partitions each ``krone_score`` run scored (its
   ``partitions`` XCom), the task instances that failed or needed a retry, and the days the warehouse has
   score runs for;
5. prints the alerts a webhook on 127.0.0.1 received (``KRONE_ALERT_URLS``, ``KRONE_ALERT_DIGEST=always``):
   one digest per ``krone_score`` run, and no failure alert but, with ``--via failed``, the damaged day's.

Exit 0 when every run succeeded with no task retried, all three days are scored and the alerts are as said
(``--via failed``: the runs went as said there), 1 otherwise (2 when Airflow never came up). Prints the
seconds of each step.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from airflow_standalone_check import Api, build_env, finish, free_port, get_token, stop, tail, wait_healthy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.alert_inbox import AlertInbox  # noqa: E402 (the webhook the alert tests use)

SOURCE = "syn"
DAGS = ("krone_parse_syn", "krone_train_syn", "krone_score")
MODES: dict[str, dict[str, Any]] = {
    "event": {"unpause": ("krone_score",), "expect": {"krone_score": 1}},
    "parse": {"unpause": ("krone_parse_syn", "krone_score"), "expect": {"krone_parse_syn": 2, "krone_score": 1}},
    "train": {"unpause": ("krone_train_syn", "krone_score"), "expect": {"krone_train_syn": 1, "krone_score": 1}},
    "failed": {"unpause": ("krone_score",), "expect": {"krone_score": 1}},
    "late": {"unpause": ("krone_parse_syn", "krone_score"), "expect": {"krone_parse_syn": 2, "krone_score": 2}},
}
"""Per ``--via``: the DAGs to unpause and the runs to wait for."""


def krone_env(home: Path, start: str) -> dict[str, str]:
    """The ``KRONE_*`` settings of the throw-away home, for the ``krone`` commands and the Airflow tasks."""
    return {"KRONE_DATA_ROOT": str(home / "data"), "KRONE_WAREHOUSE_URL": f"duckdb:///{home / 'warehouse.duckdb'}",
            "KRONE_MLFLOW_URI": f"sqlite:///{home / 'mlflow.db'}",
            "KRONE_MLFLOW_ARTIFACTS": (home / "mlflow-artifacts").as_uri(), "KRONE_SOURCES": f"{SOURCE}:krone",
            "KRONE_START_DATE": start, "KRONE_RAW_GRACE_MINUTES": "0", "KRONE_RAW_POKE_SECONDS": "30"}


def krone(env: dict[str, str], *args: str) -> None:
    out = subprocess.run([str(REPO / ".venv" / "bin" / "krone"), *args], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"krone {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def runs_of(api: Api, dag_id: str) -> list[dict[str, Any]]:
    return list(api.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100&order_by=run_after").get("dag_runs", []))


def wait_until_idle(api: Api, expect: dict[str, int], deadline: float, settle: float = 20.0) -> dict[str, list[Any]]:
    """The runs of :data:`DAGS` once each DAG has at least ``expect[dag]`` runs, none is queued or running, and
    that has held for ``settle`` seconds (an asset event may still be turning into a run)."""
    idle_since = None
    while time.monotonic() < deadline:
        runs = {dag: runs_of(api, dag) for dag in DAGS}
        busy = any(r["state"] in ("queued", "running") for rs in runs.values() for r in rs)
        enough = all(len(runs[dag]) >= n for dag, n in expect.items())
        if busy or not enough:
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= settle:
            return runs
        time.sleep(3.0)
    raise TimeoutError(f"runs still going or missing at the deadline (expected at least {expect})")


def scored_days(env: dict[str, str]) -> list[str]:
    from krone_jobs.warehouse import Warehouse

    with Warehouse(env["KRONE_WAREHOUSE_URL"]) as wh:
        return sorted(wh.stage_days(SOURCE, "score"))


def post_kseqs_event(api: Api, asset_id: Any, env: dict[str, str], dt: str) -> None:
    """The event a ``krone_parse_syn`` run of ``dt`` emits."""
    extra = {"source": SOURCE, "dt": dt, "data_root": env["KRONE_DATA_ROOT"]}
    status, payload = api.call("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": extra})
    assert status in (200, 201), f"asset event: HTTP {status}: {payload}"
    print(f"posted a krone_kseqs event {extra}", flush=True)


def scored_by(api: Api, run: dict[str, Any]) -> list[str]:
    """The days a ``krone_score`` run mapped (its ``partitions`` XCom)."""
    base = f"/api/v2/dags/krone_score/dagRuns/{run['dag_run_id']}"
    return [p["dt"] for p in api.get(f"{base}/taskInstances/partitions/xcomEntries/return_value").get("value") or []]


def not_clean(api: Api, dag: str, run: dict[str, Any]) -> list[tuple[str, int, str, int]]:
    """``(task, map index, state, try)`` of the run's task instances that did not succeed (or skip) at once."""
    tis = api.get(f"/api/v2/dags/{dag}/dagRuns/{run['dag_run_id']}/taskInstances?limit=100").get("task_instances", [])
    return [(ti["task_id"], int(ti.get("map_index", -1)), ti["state"], int(ti.get("try_number") or 1)) for ti in tis
            if ti["state"] not in ("success", "skipped") or int(ti.get("try_number") or 1) > 1]


LATE = " not done by its deadline"
"""How the title of a deadline alert ends."""


def check_alerts(inbox: AlertInbox, score_runs: int, failures: list[str]) -> bool:
    """One digest per ``krone_score`` run, and the failure alerts titled ``failures``, besides deadline alerts
    (those :func:`check_late_day` waits for)."""
    time.sleep(2.0)  # a teardown's post may trail its run's end
    titles = [m["title"] for m in inbox.received if not m["title"].endswith(LATE)]
    for message in inbox.received:
        print(f"alert ({message['type']}): {message['title']}\n    " + message["message"].replace("\n", "\n    "))
    digests = [t for t in titles if not t.endswith(" failed") and " failed, " not in t]
    return len(digests) == score_runs and sorted(set(titles) - set(digests)) == sorted(failures)


def check_set_aside(api: Api, asset_id: Any, env: dict[str, str], days: list[str], deadline: float) -> bool:
    """``--via failed`` once the first run is over (module docstring): True when every run went as expected."""
    ok = True
    first = runs_of(api, "krone_score")[-1]
    bad = not_clean(api, "krone_score", first)
    print(f"run 1: {first['state']}; mapped {scored_by(api, first)}; not clean {bad}")
    ok &= first["state"] == "failed" and scored_by(api, first) == days
    ok &= {(task, index) for task, index, _, _ in bad} <= {(f"partition.{t}", 1)
                                                          for t in ("score", "reports_gate", "night_report")}
    ok &= ("partition.score", 1, "failed", 1) in bad  # the damaged day failed at its first try
    for n, step in ((2, "set aside"), (3, "taken up again")):
        if n == 3:
            krone(env, "sessionize", "--source", SOURCE, "--date", days[1])
        post_kseqs_event(api, asset_id, env, days[-1])
        run = wait_until_idle(api, {"krone_score": n}, deadline)["krone_score"][-1]
        mapped, bad = scored_by(api, run), not_clean(api, "krone_score", run)
        print(f"run {n} ({step}): {run['state']}; mapped {mapped}; not clean {bad}")
        ok &= run["state"] == "success" and not bad and mapped == ([days[-1]] if n == 2 else days[1:])
    after = scored_days(env)
    print(f"after: days with a score run {after}")
    return ok and after == days


def check_late_day(api: Api, env: dict[str, str], held: Path, raw: Path, dt: str, deadline: float,
                   inbox: AlertInbox) -> bool:
    """``--via late``, before the held-back logs of ``dt`` are delivered (module docstring): True when its run's
    sensor waits, nothing of the day was parsed, the run's deadline alert came, and the logs are then moved
    into place."""
    waiting: list[tuple[str, int, str, int]] = []
    while not waiting and time.monotonic() < deadline:
        run = next((r for r in runs_of(api, "krone_parse_syn") if str(r.get("data_interval_start")).startswith(dt)),
                   None)
        tis = not_clean(api, "krone_parse_syn", run) if run else []
        waiting = [t for t in tis if t[0] == "raw_ready" and t[2] == "up_for_reschedule"]
        time.sleep(3.0)
    time.sleep(65.0)  # two more looks at the empty partition
    states = {t[0]: t[2] for t in not_clean(api, "krone_parse_syn", run)} if run else {}
    parsed = (Path(env["KRONE_DATA_ROOT"]) / "parsed" / f"source={SOURCE}" / f"dt={dt}").exists()
    print(f"{dt} while its logs are held back: raw_ready {states.get('raw_ready')}, parse {states.get('parse')}, "
          f"parsed partition {'exists' if parsed else 'none'}", flush=True)
    still = states.get("raw_ready") in ("up_for_reschedule", "scheduled", "queued", "running")  # a look may be on
    ok = bool(waiting) and still and states.get("parse") in (None, "none") and not parsed
    late = []
    while run and not late and time.monotonic() < deadline:
        late = [m for m in inbox.received if m["title"].endswith(LATE) and run["dag_run_id"] in m["message"]]
        time.sleep(3.0)
    print(f"{dt}: the run's deadline alert {'came' if late else 'never came'}", flush=True)
    ok &= bool(late)
    held.rename(raw)
    print(f"delivered {raw}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--via", choices=list(MODES), default="event",
                   help="event: post one krone_kseqs event; parse: let krone_parse_syn parse two days; train: trigger "
                        "krone_train_syn; failed: a damaged day is failed once, then set aside, then taken up again "
                        "once mended; late: the last day's logs arrive after its run started (default: event)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole check (default: 900)")
    p.add_argument("--dags-folder", type=Path, default=REPO / "dags",
                   help="DAG folder (default: the repo's dags/; another revision's, to compare)")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home (logs, stores) afterwards")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + a.timeout
    timings: dict[str, float] = {}
    today = date.today()
    days = [(today - timedelta(days=n)).isoformat() for n in (3, 2, 1)]
    home = Path(tempfile.mkdtemp(prefix="krone-airflow-catch-up-"))
    port, airflow = free_port(), REPO / ".venv" / "bin" / "airflow"
    env = {**build_env(home, a.dags_folder.resolve(), port, airflow, all_admins=False), **krone_env(home, days[1])}
    for name in ("KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL", "KRONE_LLM_API_KEY", "OPENAI_API_KEY"):
        env.pop(name, None)  # no network: the LLM stays off
    api = Api(f"http://127.0.0.1:{port}")
    proc = None
    log_path = home / "standalone.log"
    try:
        krone(env, "generate", "--source", SOURCE, "--days", "3", "--sessions-per-day", "150", "--seed", "7",
              "--start-date", days[0])
        krone(env, "night", "--source", SOURCE, "--format", "krone", "--date", days[0],
              *(["--end", days[-1]] if a.via not in ("parse", "late") else []))
        timings["generate + krone night (parse only)"] = time.monotonic() - t0
        labels = str(home / "data" / "labels" / SOURCE / "labels.csv")
        if a.via != "train":
            krone(env, "train", "--source", SOURCE, "--end", days[0], "--days", "1", "--labels", labels,
                  "--fp-bound", "1.0", "--min-heldout", "0")
            timings["krone train (promoted, no asset event)"] = time.monotonic() - t0
        print(f"days {days}; before: days with a score run {scored_days(env)}", flush=True)
        if a.via == "failed":
            part = sorted((home / "data" / "sessions" / f"source={SOURCE}" / f"dt={days[1]}").glob("*.parquet"))[0]
            part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
            print(f"cut {part} in half", flush=True)
        raw = home / "data" / "raw" / SOURCE / f"dt={days[-1]}"
        held = home / "held-back"
        if a.via == "late":
            raw.rename(held)
            print(f"held back {raw}", flush=True)

        inbox = AlertInbox().start()
        env |= {"KRONE_ALERT_URLS": inbox.url, "KRONE_ALERT_DIGEST": "always"}  # Airflow's tasks only
        if a.via == "late":  # 108 s: the held-back day's run is overdue while it waits (until that alert came)
            env["KRONE_RUN_DEADLINE_HOURS"] = "0.03"
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
        for dag in MODES[a.via]["unpause"]:
            status, payload = api.call("PATCH", f"/api/v2/dags/{dag}", {"is_paused": False})
            assert status == 200, f"unpause {dag}: HTTP {status}: {payload}"
        timings["Airflow up, DAGs unpaused"] = time.monotonic() - t0
        if a.via in ("event", "failed"):
            post_kseqs_event(api, asset_id, env, days[-1])
        if a.via == "train":
            conf = {"end": days[0], "days": 1, "labels": labels, "fp_bound": 1.0, "min_heldout": 0}
            status, payload = api.call("POST", "/api/v2/dags/krone_train_syn/dagRuns", {"logical_date": None, "conf": conf})
            assert status in (200, 201), f"trigger krone_train_syn: HTTP {status}: {payload}"
            print(f"triggered krone_train_syn {conf}", flush=True)

        late_ok = check_late_day(api, env, held, raw, days[-1], deadline, inbox) if a.via == "late" else True
        runs = wait_until_idle(api, MODES[a.via]["expect"], deadline)
        if a.via == "failed":
            ok = check_set_aside(api, asset_id, env, days, deadline)
            ok &= check_alerts(inbox, 3, [f"krone: krone_score.partition.score failed, {SOURCE} {days[1]}"])
            timings["all runs finished"] = time.monotonic() - t0
            print("OK" if ok else "FAIL")
            return 0 if ok else 1
        timings["all runs finished"] = time.monotonic() - t0
        ok = late_ok
        for dag in DAGS:
            for run in runs[dag]:
                ok &= run["state"] == "success"
                line = f"{dag} {run['dag_run_id']} ({run.get('run_type')}): {run['state']}"
                print(line + (f"; scored {scored_by(api, run)}" if dag == "krone_score" else ""))
                for task, index, state, tries in not_clean(api, dag, run):
                    print(f"    {task}[{index}]: {state}, try {tries}")
                    ok &= tries <= 1  # a retry means a try failed (a warehouse lock, ...)
        after = scored_days(env)
        print(f"after: days with a score run {after}")
        ok &= after == days
        ok &= check_alerts(inbox, len(runs["krone_score"]), [])
        print("OK" if ok else "FAIL")
        if not ok:
            print(f"last lines of {log_path}:\n{tail(log_path)}")
        return 0 if ok else 1
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        print(f"FAIL: {type(exc).__name__}: {exc}\nlast lines of {log_path}:\n{tail(log_path)}")
        return 1
    finally:
        if proc is not None:
            stop(proc, home)
        finish(timings, t0, home, a.keep_home)


if __name__ == "__main__":
    sys.exit(main())
