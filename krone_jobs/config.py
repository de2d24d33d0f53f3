"""One settings object for every stage, read from ``KRONE_*`` environment variables.

Credentials never live in code: the LLM key comes from ``KRONE_LLM_API_KEY`` (or ``OPENAI_API_KEY``), the
warehouse URL (which may carry a password) from ``KRONE_WAREHOUSE_URL``; in Airflow both can come from
connections that the DAGs export into these variables.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# The champion gate's defaults, in one place for the registry, `krone train` / `krone promote` and the
# krone_train_<source> DAGs (whose gate params default to null: these values).
GATE_FP_BOUND = 0.02
"""Highest held-out false-positive rate a candidate may have to become champion."""
GATE_TOLERANCE = 0.002
"""How much a candidate's held-out false-positive rate may exceed the champion's on the same sessions."""
GATE_MIN_HELDOUT = 20
"""Fewer held-out normal sessions than this measure no false-positive rate worth gating on (0 of 2 "passes"
any bound); the gate's reason gives the rate's 95 % upper bound, so an operator sees how sure it is."""
MAX_SESSION_SECONDS = 86_400.0
"""Default of ``KRONE_MAX_SESSION_SECONDS``: a session still open at the end of a day but spanning more than
this is closed there instead of carried over (``krone_jobs.jobs.sessionize``)."""
MAX_SESSION_EVENTS = 100_000
"""Default of ``KRONE_MAX_SESSION_EVENTS``: a session of more events is emitted as pieces of this many
(``krone_jobs.jobs.sessionize``); one row of millions of events would exhaust Spark's heap."""
MAX_NEW_TEMPLATES = 2_000
"""Default of ``KRONE_MAX_NEW_TEMPLATES``: how many templates one day of one source may open; on a day that would
open more, a text of one line opens none, and lines that fit no template are quarantined as ``template_flood``
(``krone_jobs.jobs.parse.mine_texts``). Real sources open far fewer: Thunderbird 376 on its first day, then
17-47 a day; HDFS 15, then 0-3."""


FP_BUDGET = 0.002
"""Default of ``KRONE_FP_BUDGET``: the share of normal sessions each rule of the Nested-Aware model may flag,
measured on held-out training days (its ``fp_budget``). Lower it for fewer false alarms, at the cost of the
anomalies only the rules it turns off would catch."""

RAW_MARKER = "_SUCCESS"
"""Default of ``KRONE_RAW_MARKER``: the file a log shipper puts in a day's raw partition once the day is complete
(the Hadoop/Spark convention); it starts with ``_``, so it is never read as data (``krone_jobs.raw_readiness``)."""
RAW_GRACE_MINUTES = 60.0
"""Default of ``KRONE_RAW_GRACE_MINUTES``: how long after a day ends its late log files are waited for before a
scheduled run parses it without a marker."""
LOCK_WAIT_MINUTES = 60.0
"""Default of ``KRONE_LOCK_WAIT_MINUTES``: a night's stage of one source rarely runs longer, and a longer wait
only hides a run that hangs (Airflow's task timeout is 6 hours)."""
ALERT_DIGESTS = ("anomalies", "always", "never")
"""Values of ``KRONE_ALERT_DIGEST``, when a night's digest is sent (:mod:`krone_jobs.alerts`); the first is the
default."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _days(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    if not value.strip().isdigit():
        raise ValueError(f"{name} must be a whole number of days, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Paths, engines and budgets. Relative defaults live under ``home`` (``KRONE_HOME``, default: cwd)."""

    home: Path = field(default_factory=lambda: Path(_env("KRONE_HOME", os.getcwd())).resolve())

    @property
    def data_root(self) -> Path:
        """Root of ``raw/``, ``parsed/``, ``quarantine/``, ``sessions/``, ``kseqs/`` partitions."""
        return Path(_env("KRONE_DATA_ROOT", str(self.home / "data")))

    @property
    def formats_file(self) -> Path | None:
        """TOML file with the line formats of one's own logs (``krone_jobs.logformats.load_formats_file``)."""
        value = os.environ.get("KRONE_FORMATS_FILE")
        return Path(value) if value else None

    @property
    def spark_master(self) -> str:
        return _env("KRONE_SPARK_MASTER", "local[2]")

    @property
    def mlflow_uri(self) -> str:
        return _env("KRONE_MLFLOW_URI", f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}")

    @property
    def mlflow_artifacts(self) -> str:
        """Artifact root for experiments created by krone (absolute, so the cwd never matters)."""
        return _env("KRONE_MLFLOW_ARTIFACTS", (self.home / "mlflow" / "artifacts").as_uri())

    @property
    def warehouse_url(self) -> str:
        return _env("KRONE_WAREHOUSE_URL", f"duckdb:///{self.data_root / 'warehouse.duckdb'}")

    @property
    def llm_base_url(self) -> str | None:
        return os.environ.get("KRONE_LLM_BASE_URL") or None

    @property
    def llm_model(self) -> str | None:
        return os.environ.get("KRONE_LLM_MODEL") or None

    @property
    def llm_api_key(self) -> str | None:
        return os.environ.get("KRONE_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or None

    @property
    def llm_max_calls(self) -> int:
        return int(_env("KRONE_LLM_MAX_CALLS", "200"))

    @property
    def llm_max_fraction(self) -> float:
        return float(_env("KRONE_LLM_MAX_FRACTION", "0.005"))

    @property
    def max_session_seconds(self) -> float:
        return float(_env("KRONE_MAX_SESSION_SECONDS", str(MAX_SESSION_SECONDS)))

    @property
    def max_session_events(self) -> int:
        return int(_env("KRONE_MAX_SESSION_EVENTS", str(MAX_SESSION_EVENTS)))

    @property
    def max_new_templates(self) -> int:
        return int(_env("KRONE_MAX_NEW_TEMPLATES", str(MAX_NEW_TEMPLATES)))

    @property
    def fp_budget(self) -> float:
        value = float(_env("KRONE_FP_BUDGET", str(FP_BUDGET)))
        if not 0.0 < value < 1.0:
            raise ValueError(f"KRONE_FP_BUDGET must lie between 0 and 1, not {value}")
        return value

    @property
    def retain_days(self) -> int | None:
        """Days of a source's partitions and dated state that retention keeps (``krone_jobs.retention``);
        unset: nothing is removed."""
        return _days("KRONE_RETAIN_DAYS")

    @property
    def retain_raw_days(self) -> int | None:
        """Days of raw logs that retention keeps; unset: raw logs are never removed."""
        return _days("KRONE_RETAIN_RAW_DAYS")

    @property
    def raw_marker(self) -> str:
        """The name of the marker file that says a day's raw partition is complete (``_`` or ``.`` first: a
        marker must never be read as a log file)."""
        value = _env("KRONE_RAW_MARKER", RAW_MARKER)
        if not re.fullmatch(r"[_.][A-Za-z0-9_.-]{0,63}", value) or value in (".", ".."):
            raise ValueError(f"KRONE_RAW_MARKER must be a file name that starts with '_' or '.', not {value!r}")
        return value

    @property
    def raw_wait_for_marker(self) -> bool:
        """Whether a day is parsed on its marker only (``KRONE_RAW_WAIT_FOR_MARKER``), not after the grace."""
        return _env("KRONE_RAW_WAIT_FOR_MARKER", "false").strip().lower() in ("1", "true", "yes", "on")

    @property
    def raw_grace_minutes(self) -> float:
        value = float(_env("KRONE_RAW_GRACE_MINUTES", str(RAW_GRACE_MINUTES)))
        if not 0.0 <= value <= 7 * 24 * 60:
            raise ValueError(f"KRONE_RAW_GRACE_MINUTES must lie between 0 and a week, not {value}")
        return value

    @property
    def reparse_late(self) -> bool:
        """Whether a night first parses again the stale days of the week before it (``KRONE_REPARSE_LATE``: a
        log file delivered after its day was parsed), instead of only naming them."""
        return _env("KRONE_REPARSE_LATE", "false").strip().lower() in ("1", "true", "yes", "on")

    @property
    def lock_wait_minutes(self) -> float:
        """How long a stage waits for another run of its source to let the source's lock go
        (``KRONE_LOCK_WAIT_MINUTES``, :mod:`krone_jobs.source_lock`) before it fails."""
        value = float(_env("KRONE_LOCK_WAIT_MINUTES", str(LOCK_WAIT_MINUTES)))
        if not 0.0 <= value <= 24 * 60:
            raise ValueError(f"KRONE_LOCK_WAIT_MINUTES must lie between 0 and a day, not {value}")
        return value

    @property
    def alert_urls(self) -> str | None:
        """Where alerts go (``KRONE_ALERT_URLS``): Apprise URLs, separated by commas or spaces, as for Apprise's
        own ``APPRISE_URLS``, each getting every alert (tags route those of ``KRONE_ALERT_CONFIG``); unset: none
        (in Airflow the ``krone_alerts`` connection wins)."""
        return os.environ.get("KRONE_ALERT_URLS", "").strip() or None

    @property
    def alert_config(self) -> str | None:
        """An Apprise configuration file of alert targets (``KRONE_ALERT_CONFIG``: a path, ``file://`` or
        ``https://`` URL; TEXT lines ``tag[, tag]=URL`` or YAML), whose tags route them; its targets join those of
        ``KRONE_ALERT_URLS``. Unset: none (in Airflow the ``krone_alerts`` connection wins but for deadline
        alerts)."""
        return os.environ.get("KRONE_ALERT_CONFIG", "").strip() or None

    @property
    def alert_digest(self) -> str:
        """When a night's digest is sent (``KRONE_ALERT_DIGEST``): ``anomalies`` (a day with anomalous sessions,
        an earlier day whose score failed for good, or stale days), ``always`` or ``never``. Failures are always
        sent."""
        value = _env("KRONE_ALERT_DIGEST", ALERT_DIGESTS[0]).strip().lower()
        if value not in ALERT_DIGESTS:
            raise ValueError(f"KRONE_ALERT_DIGEST must be one of {', '.join(ALERT_DIGESTS)}, not {value!r}")
        return value

    @property
    def llm_band(self) -> float | None:
        """How close to its threshold a Nested-Aware score must be for the LLM to decide (``|ratio - 1|``);
        unset: the band the model was trained with."""
        value = os.environ.get("KRONE_LLM_BAND")
        return float(value) if value else None


def settings() -> Settings:
    """Fresh settings (environment is read on every call, so tests and DAG tasks can change it)."""
    return Settings()
