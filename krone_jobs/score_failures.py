"""Days whose scoring failed for good, and when the catch-up takes them up again.

A score run that fails in a way no retry mends (``pipeline.permanent_failures``: a damaged sessions file, the
*reports* quality gate, a broken hierarchy, a damaged champion) records the failure in the warehouse's
``score_failures`` table, with what the day was scored from (:func:`score_inputs`). Without that, every catch-up
(the ``krone_score`` DAG, ``krone score --unscored``) would take the day up again, night after night: each
time the Spark walk and the LLM budget spent on the same failure, and each night's run failed, so that a new
failure no longer stands out.

So the catch-up *sets aside* a day whose recorded inputs are still the ones it would be scored from, and takes
it up again by itself once one of them changes: its sessions partition is written again (``krone sessionize``
after a damaged file), the hierarchy in force for it is edited or put back, or another model becomes champion.
What the inputs do not cover (a quality-gate bound changed, operators' feedback) a person says: ``krone score
--date D``, a manual ``krone_score`` run for the day, or ``krone score --unscored --retry-failed``. A successful
score run of the day removes its record in the transaction that writes its reports.

The inputs are compared by file names, sizes, modification times and inodes, not content: a file put back with
the bytes it had when it was written is still a change worth another try.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from krone_jobs.lineage import json_digest
from krone_jobs.partitions import latest_before, partition_dir, state_dir

if TYPE_CHECKING:
    from krone_jobs.warehouse import Warehouse

log = logging.getLogger(__name__)

MESSAGE_CHARS = 2000
"""The longest error message kept (a quality-gate failure lists every failed expectation)."""


@dataclass(frozen=True)
class ScoreFailure:
    """The last failure of a day's score runs that no retry mends, as recorded."""

    dt: str
    run_id: str
    error: str
    message: str
    inputs: str
    attempts: int
    first_failed_at: str
    failed_at: str

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "inputs"}

    def set_aside_line(self, source: str) -> str:
        """What the catch-up says of the day it leaves (the command line and the task log)."""
        return (f"{source} {self.dt} set aside: its score failed for good ({self.error}, {self.attempts} time(s), "
                f"last {self.failed_at}) on what it would be scored from now")


def score_inputs(root: Path, source: str, dt: str, model_version: str | None) -> str:
    """An id of what a score run of ``dt`` reads that a person may mend: the sessions partition's files and
    the dated hierarchy in force for the day (names, sizes, modification times, inodes), and the champion's
    version."""
    sessions = partition_dir(root, "sessions", source, dt)
    files = sorted(p for p in sessions.iterdir() if p.is_file()) if sessions.is_dir() else []
    hierarchy = latest_before(state_dir(root, source) / "hierarchy", dt, inclusive=True)
    return json_digest({"sessions": [_stat(p) for p in files],
                        "hierarchy": _stat(hierarchy) if hierarchy is not None and hierarchy.is_file() else None,
                        "model_version": model_version})


def record(wh: Warehouse, root: Path, source: str, dt: str, run_id: str, error: BaseException,
           model_version: str | None) -> None:
    """Record a score run's failure (logged, never raised: the failure itself is what the caller raises)."""
    try:
        wh.record_score_failure(source, dt, run_id=run_id, error=type(error).__name__,
                                message=str(error)[:MESSAGE_CHARS],
                                inputs=score_inputs(root, source, dt, model_version))
    except Exception as exc:  # noqa: BLE001 - a record that cannot be written must not hide the failure
        log.warning("%s %s: the score failure could not be recorded (%r): the catch-up will try the day again",
                    source, dt, exc)


def recorded(wh: Warehouse, source: str) -> dict[str, ScoreFailure]:
    """The recorded score failures of ``source`` by day."""
    return {r["dt"]: ScoreFailure(dt=r["dt"], run_id=r["run_id"], error=r["error"], message=r["message"],
                                  inputs=r["inputs"], attempts=int(r["attempts"]),
                                  first_failed_at=_instant(r["first_failed_at"]), failed_at=_instant(r["failed_at"]))
            for r in wh.score_failures(source)}


def set_aside(failures: Mapping[str, ScoreFailure], root: Path, source: str, days: Iterable[str],
              model_version: str | None) -> dict[str, ScoreFailure]:
    """The ``days`` whose recorded failure was on the inputs they still have: the catch-up leaves them."""
    return {dt: failures[dt] for dt in days
            if dt in failures and failures[dt].inputs == score_inputs(root, source, dt, model_version)}


def _instant(value: Any) -> str:
    """A timestamp as ISO 8601 (PostgreSQL and DuckDB give datetimes; anything else as it came)."""
    return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value)


def _stat(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return path.name, st.st_size, st.st_mtime_ns, st.st_ino  # a file swapped in is another inode
