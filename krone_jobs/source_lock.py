"""One writer per source: the stages that write a source's partitions and state hold its lock while they run.

Two runs of one source at once happen: a cron ``krone night`` still running when the next one starts, an
operator's rerun (the command ``krone status`` gives) beside the Airflow DAG. Without a lock they swap the same
partition at the same moment (the second rename finds the folder back and the run fails half-way, leaving
staging behind) and seed a day from a miner state about to be replaced. With it, the second stage waits for the
first, then runs on what it wrote, as if the runs had been one after the other.

The lock is an advisory ``flock`` on ``state/<source>/.lock``: the kernel frees it when its process ends, so a
run that is killed (a task timeout, the OOM killer) never leaves its source locked. The file says who holds it
(stage, day, process, host, since), so a stage that waits can say for whom. A thread that holds it takes it
again at once (a stage that calls another). The wait is bounded (``KRONE_LOCK_WAIT_MINUTES``): then
:class:`SourceBusy`, which Airflow retries. Scoring does not take it: it reads sealed partitions (checked by
their manifests) and writes the warehouse in one transaction keyed by the partition.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from krone_jobs.config import settings
from krone_jobs.partitions import check_source, state_dir

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
POLL_S = 0.5
F = TypeVar("F", bound=Callable[..., Any])

_held: dict[tuple[str, int], int] = {}
_guard = threading.Lock()


class SourceBusy(RuntimeError):
    """Another run held the source's lock for longer than a stage waits (``KRONE_LOCK_WAIT_MINUTES``)."""


def lock_path(root: Path, source: str) -> Path:
    return state_dir(root, check_source(source)) / LOCK_NAME


@contextmanager
def source_lock(root: Path, source: str, what: str, *, wait_s: float | None = None) -> Iterator[None]:
    """Hold ``source``'s lock for ``what`` (a stage and its day), waiting up to ``wait_s`` seconds (default
    ``KRONE_LOCK_WAIT_MINUTES``) for another run to let it go."""
    path = lock_path(root, source)
    key = (os.path.abspath(path), threading.get_ident())
    with _guard:
        again = key in _held
        if again:
            _held[key] += 1
    if again:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, source, what, settings().lock_wait_minutes * 60 if wait_s is None else wait_s)
        holder = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, source: str, what: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if waited:
                log.info("%s: %s has the lock of %s now", source, what, path)
            return
        except BlockingIOError:
            pass
        if not waited:
            log.warning("%s: %s waits for another run of the source: %s", source, what, holder(path))
            waited = True
        if time.monotonic() >= deadline:
            raise SourceBusy(f"{source}: {what} waited {wait_s / 60:g} min for another run of the source "
                             f"({holder(path)}; KRONE_LOCK_WAIT_MINUTES): let it finish, or stop it, and run again")
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def running(root: Path, source: str) -> str | None:
    """Who holds ``source``'s lock now (a run in progress, :func:`holder`), or ``None``; takes nothing."""
    path = lock_path(root, source)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file says (it may have just let it go)."""
    try:
        found = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        found = {}
    if not isinstance(found, dict) or not found.get("what"):
        return f"{path} is held"
    return (f"{found['what']} holds it (process {found.get('pid')} on {found.get('host')}, since "
            f"{found.get('since')})")


def holds_source_lock(stage: str) -> Callable[[F], F]:
    """Run the decorated stage ``f(source, day, ..., data_root=...)`` holding its source's lock."""
    def wrap(f: F) -> F:
        @functools.wraps(f)
        def run(source: str, *args: Any, **kwargs: Any) -> Any:
            data_root = kwargs.get("data_root")
            root = Path(data_root) if data_root is not None else settings().data_root
            day = args[0] if args else kwargs.get("date", kwargs.get("dt"))
            with source_lock(root, source, f"{stage} {day}" if day else stage):
                return f(source, *args, **kwargs)
        return cast(F, run)
    return wrap
