#!/usr/bin/env python3
"""Start ``airflow standalone`` on the krone DAGs and check, through the REST API, that they all load.

    .venv/bin/python bench/airflow_standalone_check.py                       # repo dags/: krone_parse_<source>,
                                                                             # krone_train_<source> per KRONE_SOURCES
                                                                             # source, and krone_score
    .venv/bin/python bench/airflow_standalone_check.py --dags-folder /tmp/d --expect my_dag

What it does: a throw-away ``AIRFLOW_HOME`` (SQLite metadata, examples off, DAGs paused at creation, so no
task ever runs), the API server on 127.0.0.1 and a free port, ``airflow standalone`` in its own process
group; then it waits for ``/api/v2/monitor/health``, gets a JWT from the simple auth manager (``POST
/auth/token`` with the admin password standalone generates in ``simple_auth_manager_passwords.json.generated``)
and polls ``GET /api/v2/dags`` and ``GET /api/v2/importErrors`` until every expected DAG is there and the
answer has stopped changing. It prints the DAG ids, the import errors and the timings, and exits 0 when
every expected DAG is present and there is no import error, 1 otherwise (2 when Airflow never came up).
The whole process group (and any straggler carrying this run's AIRFLOW_HOME) is killed at the end.
Only the standard library is used here (and the DAGs' own ``krone_common`` for the default DAG ids); Airflow
itself comes from ``--airflow`` (default .venv/bin/airflow).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


def default_expect() -> list[str]:
    """The DAG ids the repository's DAG files make for this environment's ``KRONE_SOURCES``."""
    sys.path.insert(0, str(REPO / "dags"))
    from krone_common import configured_sources

    sources = list(configured_sources())
    return [*(f"krone_parse_{s}" for s in sources), *(f"krone_train_{s}" for s in sources), "krone_score"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Api:
    """Minimal JSON client for the Airflow 3 REST API (v2) on one base URL."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.token: str | None = None
        # Never go through a proxy for 127.0.0.1.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self.opener.open(request, timeout=timeout) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, payload = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {payload}")
        return payload


def build_env(home: Path, dags: Path, port: int, airflow: Path, all_admins: bool) -> dict[str, str]:
    env = dict(os.environ)
    # standalone starts its components as plain "airflow ...": the venv's bin must come first on PATH.
    env["PATH"] = f"{airflow.parent}{os.pathsep}{env.get('PATH', '')}"
    for key in [k for k in env if k.startswith("AIRFLOW__") or k in ("AIRFLOW_CONFIG",)]:
        del env[key]  # nothing of the caller's Airflow configuration leaks into this throw-away instance
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True" if all_admins else "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        # krone code imported while parsing writes nothing into the repo, and reaches nothing outside.
        "KRONE_HOME": str(home / "krone"),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GX_ANALYTICS_ENABLED": "false",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "NO_COLOR": "1",
        "no_proxy": "127.0.0.1,localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    })
    return env


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes], home: Path, grace: float = 20.0) -> None:
    """SIGTERM the process group, then SIGKILL it; finally any process of ours left outside the group."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    # Components that left the group (setsid) still carry this run's unique AIRFLOW_HOME.
    marker = f"AIRFLOW_HOME={home}".encode()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_healthy(api: Api, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            status, payload = api.call("GET", "/api/v2/monitor/health", timeout=5)
            if status == 200 and isinstance(payload, dict):
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    return False


def get_token(api: Api, home: Path, all_admins: bool, deadline: float) -> str:
    """A JWT from the simple auth manager: with a password from the generated file, or none (all admins)."""
    last = ""
    while time.monotonic() < deadline:
        if all_admins:
            status, payload = api.call("GET", "/auth/token")
        else:
            try:
                passwords = json.loads((home / PASSWORDS_FILE).read_text())
            except (OSError, ValueError):
                time.sleep(1.0)
                continue
            username, password = next(iter(passwords.items()))
            status, payload = api.call("POST", "/auth/token", {"username": username, "password": password})
        if status in (200, 201) and isinstance(payload, dict) and payload.get("access_token"):
            return str(payload["access_token"])
        last = f"HTTP {status}: {payload}"
        time.sleep(1.0)
    raise RuntimeError(f"no token from /auth/token ({last or 'password file never appeared'})")


def finish(timings: dict[str, float], t0: float, home: Path, keep: bool) -> None:
    """Print the step timings (and the total since ``t0``), then remove the throw-away home unless kept."""
    timings["total"] = time.monotonic() - t0
    print("timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()), flush=True)
    if keep:
        print(f"kept {home}")
    else:
        shutil.rmtree(home, ignore_errors=True)


def snapshot(api: Api) -> tuple[dict[str, str], list[dict[str, Any]]]:
    dags = api.get("/api/v2/dags?limit=1000")
    errors = api.get("/api/v2/importErrors?limit=1000")
    return ({d["dag_id"]: d.get("fileloc", "") for d in dags.get("dags", [])}, list(errors.get("import_errors", [])))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dags-folder", type=Path, default=REPO / "dags", help="DAG folder to load (default: the repo's dags/)")
    p.add_argument("--expect", nargs="*", default=None, metavar="DAG_ID",
                   help="DAG ids that must be present (default: those of the repo's DAGs for KRONE_SOURCES)")
    p.add_argument("--airflow", type=Path, default=REPO / ".venv" / "bin" / "airflow", help="airflow executable")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds for the whole check (default: 240)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds the DAG list and import errors must stay unchanged before the verdict (default: 10)")
    p.add_argument("--all-admins", action="store_true",
                   help="skip the login (simple_auth_manager_all_admins) instead of using the generated password")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary AIRFLOW_HOME (logs) afterwards")
    args = p.parse_args(argv)

    dags = args.dags_folder.resolve()
    if not dags.is_dir():
        print(f"DAG folder {dags} does not exist", file=sys.stderr)
        return 2
    if not os.access(args.airflow, os.X_OK):
        print(f"airflow executable {args.airflow} not found (set up the venv as the README says)", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    deadline = t0 + args.timeout
    home = Path(tempfile.mkdtemp(prefix="krone-airflow-standalone-"))
    port = free_port()
    log_path = home / "standalone.log"
    api = Api(f"http://127.0.0.1:{port}")
    timings: dict[str, float] = {}
    print(f"airflow standalone: AIRFLOW_HOME={home} dags={dags} api=http://127.0.0.1:{port}", flush=True)

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(args.airflow), "standalone"], cwd=home, env=build_env(home, dags, port, args.airflow, args.all_admins),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    rc = 1
    try:
        if not wait_healthy(api, proc, deadline):
            state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not healthy after {args.timeout:.0f} s"
            print(f"FAIL: the API server never answered ({state}); last lines of {log_path}:\n{tail(log_path)}")
            return 2
        timings["api healthy"] = time.monotonic() - t0
        api.token = get_token(api, home, args.all_admins, deadline)
        timings["token"] = time.monotonic() - t0

        expected = set(args.expect if args.expect is not None else default_expect())
        seen: tuple[dict[str, str], list[dict[str, Any]]] = ({}, [])
        stable_since = time.monotonic()
        first_all = None
        while time.monotonic() < deadline:
            current = snapshot(api)
            key = lambda s: (sorted(s[0]), sorted(e.get("filename", "") for e in s[1]))  # noqa: E731
            if key(current) != key(seen):
                seen, stable_since = current, time.monotonic()
            found = expected <= set(seen[0])
            if found and first_all is None:
                first_all = time.monotonic() - t0
            # Done once every expected DAG is there (or something failed to import) and nothing changes;
            # or, when an expected DAG never comes, once the parsed state has not moved for a long while.
            stable_for = time.monotonic() - stable_since
            if (found or seen[1]) and stable_for >= args.settle:
                break
            if (seen[0] or seen[1]) and stable_for >= max(args.settle, 60.0):
                break
            if proc.poll() is not None:
                print(f"airflow standalone exited early with {proc.returncode}; last lines:\n{tail(log_path)}")
                break
            time.sleep(2.0)
        if first_all is not None:
            timings["expected DAGs visible"] = first_all
        timings["verdict"] = time.monotonic() - t0

        dag_ids, errors = seen
        print(f"DAGs found ({len(dag_ids)}):")
        for dag_id in sorted(dag_ids):
            print(f"  {dag_id:32s} {os.path.relpath(dag_ids[dag_id], dags) if dag_ids[dag_id] else ''}")
        print(f"import errors ({len(errors)}):")
        for err in errors:
            trace = (err.get("stack_trace") or "").strip().splitlines()
            print(f"  {err.get('filename')}: {trace[-1] if trace else ''}")
            for line in trace[-12:-1]:
                print(f"      {line}")
        missing = sorted(expected - set(dag_ids))
        if missing:
            print(f"missing DAGs: {', '.join(missing)}")
        rc = 0 if not missing and not errors else 1
        print("OK" if rc == 0 else "FAIL")
        return rc
    except Exception as exc:  # noqa: BLE001 - report, clean up, fail
        print(f"FAIL: {type(exc).__name__}: {exc}\nlast lines of {log_path}:\n{tail(log_path)}")
        return 1
    finally:
        t_stop = time.monotonic()
        stop(proc, home)
        timings["shutdown"] = time.monotonic() - t_stop
        finish(timings, t0, home, args.keep_home)


if __name__ == "__main__":
    sys.exit(main())
