"""Data-quality gates (Great Expectations 1.x) for the parsed, sessions and reports outputs.

A stage validates the frame it is about to publish and stops (``gate``) rather than let a bad partition
flow downstream, where it would surface as false anomalies. The same suites run on pandas and Spark
frames, so a unit test and the nightly Spark job check the same contract.

GX is imported lazily and its context is ephemeral (nothing on disk) and cached per process: DAG files
import this module, and parsing them must stay fast. Progress bars are switched off in the context, and
usage statistics are off unless ``GX_ANALYTICS_ENABLED`` says otherwise.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from krone_jobs.hierarchy.kseqs import LEVELS

TEMPLATE_ID_PATTERN = r"^T[0-9a-f]{16}$"
"""``templates.template_id``: ``T`` + the 16 hex digits of an 8-byte BLAKE2b digest."""

DEFAULT_MAX_QUARANTINE_RATIO = 0.05
REPORT_DETECTORS: tuple[str, ...] = ("local", "nested", "llm")

PARSED_COLUMNS: tuple[str, ...] = (
    "source", "dt", "file", "line_no", "timestamp", "level", "component", "node", "content",
    "session_keys", "template_id",
)
SESSION_COLUMNS: tuple[str, ...] = ("source", "dt", "session_id", "template_ids", "n_events", "first_ts", "last_ts")
REPORT_COLUMNS: tuple[str, ...] = ("source", "dt", "session_id", "level", "detector", "reason", "score")
SUITES: tuple[str, ...] = ("parsed", "sessions", "reports")
COUNT_KEYS: tuple[str, ...] = ("raw", "parsed", "quarantined")
"""Required run-level counts of a parse; ``continuation`` (lines of multi-line records, kept in quarantine/
but expected) may be given too and is left out of the quarantine ratio."""

_COUNTS_SUITE = "parsed_counts"
_EXPECTED_KWARGS = ("column_set", "value_set", "regex", "type_", "min_value", "max_value", "or_equal")


@dataclass(frozen=True)
class FailedCheck:
    """One failed expectation, reduced to what a person needs to act on it."""

    expectation: str
    column: str | None
    observed: str
    expected: str = ""

    def __str__(self) -> str:
        where = f" on {self.column}" if self.column else ""
        expected = f" (expected {self.expected})" if self.expected else ""
        return f"{self.expectation}{where}: observed {self.observed}{expected}"


@dataclass(frozen=True)
class QualityResult:
    """Outcome of one suite on one frame; ``validations`` holds GX's full results as JSON dicts."""

    suite: str
    run_name: str
    success: bool
    evaluated: int
    failed: tuple[FailedCheck, ...]
    seconds: float
    counts: Mapping[str, int] | None = None
    validations: tuple[dict[str, Any], ...] = ()
    result_path: Path | None = None

    @property
    def summary(self) -> str:
        head = f"Quality gate {self.suite!r} (run {self.run_name})"
        if self.success:
            text = f"{head} passed all {self.evaluated} checks."
        else:
            failures = "; ".join(map(str, self.failed))
            text = f"{head} failed {len(self.failed)} of {self.evaluated} checks: {failures}."
        if self.counts is not None:
            text += " Counts: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()) + "."
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "run_name": self.run_name,
            "success": self.success,
            "summary": self.summary,
            "counts": dict(self.counts) if self.counts is not None else None,
            "failed": [asdict(f) for f in self.failed],
            "validations": list(self.validations),
        }


class QualityGateError(RuntimeError):
    """A gate failed; the message is the readable summary, the full result is ``.result``."""

    def __init__(self, result: QualityResult) -> None:
        super().__init__(result.summary)
        self.result = result


def validate(
    frame: Any,
    suite: str,
    *,
    run_name: str,
    counts: Mapping[str, int] | None = None,
    result_dir: Path | None = None,
    max_quarantine_ratio: float = DEFAULT_MAX_QUARANTINE_RATIO,
) -> QualityResult:
    """Run ``suite`` on a pandas or Spark ``frame``. ``counts`` (raw/parsed/quarantined lines of the run) is
    required for "parsed" and checked as its own tiny frame, so the run-level checks land in the same result.
    With ``result_dir``, the whole result is written to ``result_dir/<suite>-<run_name>.json``."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
    if (suite == "parsed") != (counts is not None):
        raise ValueError("counts (raw, parsed, quarantined) are required for 'parsed' and only for it")
    if counts is not None and not set(COUNT_KEYS) <= set(counts) <= {*COUNT_KEYS, "continuation"}:
        raise ValueError(f"counts must have the keys {COUNT_KEYS} (and optionally 'continuation'), "
                         f"got {sorted(counts)}")

    started = time.perf_counter()
    validations = [_run(frame, suite, run_name, {}, "BOOLEAN_ONLY" if _is_spark(frame) else "SUMMARY")]
    if not validations[0]["success"]:
        validations = [_run(frame, suite, run_name, {}, "SUMMARY")]
    if counts is not None:
        validations.append(
            _run(_counts_frame(counts), _COUNTS_SUITE, run_name, {"max_quarantine_ratio": max_quarantine_ratio},
                 "SUMMARY")
        )
    results = [r for v in validations for r in v["results"]]
    result = QualityResult(
        suite=suite,
        run_name=run_name,
        success=all(v["success"] for v in validations),
        evaluated=len(results),
        failed=tuple(_failed_check(r) for r in results if not r["success"]),
        seconds=time.perf_counter() - started,
        counts={k: int(counts[k]) for k in COUNT_KEYS} if counts is not None else None,
        validations=tuple(validations),
    )
    if result_dir is None:
        return result
    path = Path(result_dir) / f"{suite}-{re.sub(r'[^A-Za-z0-9._-]', '_', run_name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = replace(result, result_path=path)
    path.write_text(json.dumps(result.to_json(), indent=1, default=str), encoding="utf-8")
    return result


def gate(frame: Any, suite: str, **kwargs: Any) -> QualityResult:
    """``validate`` and raise :class:`QualityGateError` on failure, so an Airflow task fails visibly."""
    result = validate(frame, suite, **kwargs)
    if not result.success:
        raise QualityGateError(result)
    return result


def _counts_frame(counts: Mapping[str, int]) -> Any:
    """One row of run-level figures; the reconciliation compares ``raw_lines`` with ``accounted_lines``.
    Continuation lines are accounted for (in quarantine/) but are no sign of bad input, so the ratio the
    bound applies to leaves them out."""
    import pandas as pd

    raw, parsed, quarantined = (int(counts[k]) for k in COUNT_KEYS)
    bad = quarantined - int(counts.get("continuation", 0))
    return pd.DataFrame(
        {
            "raw_lines": [raw],
            "accounted_lines": [parsed + quarantined],
            "quarantine_ratio": [bad / raw if raw else 0.0],
        }
    )


def _is_spark(frame: Any) -> bool:
    return type(frame).__module__.startswith("pyspark.sql.")


def _run(frame: Any, suite: str, run_name: str, parameters: dict[str, Any], result_format: str) -> dict[str, Any]:
    """One GX validation as a JSON dict. A Spark frame is not cached by GX (see :func:`_datasource`), so
    validation leaves no memory behind and a frame the caller cached stays cached.

    :func:`validate` checks a Spark frame with ``BOOLEAN_ONLY`` first and asks for ``SUMMARY`` (observed
    values, sample of unexpected rows) only when that fails: the sample costs one more Spark job per
    expectation, which on a 1M-line parsed partition was two thirds of a passing gate's time."""
    from great_expectations.core.run_identifier import RunIdentifier

    engine = "spark" if _is_spark(frame) else "pandas"
    result = _validation_definition(suite, engine).run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        result_format=result_format,
        run_id=RunIdentifier(run_name=run_name),
    )
    return result.to_json_dict()


@cache
def _context() -> Any:
    """The process's ephemeral GX context, with progress bars off (they flood task logs)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@cache
def _datasource(engine: str) -> Any:
    """Created on first use: the Spark datasource attaches to (or starts) a SparkSession when added.

    ``persist=False``: by default GX persists the whole Spark frame before computing metrics, which
    materialises every column (``content`` included) in the block cache, although the checks read only a
    few: on a ~1M-line parsed partition that cache was half to three quarters of the gate's time. Unpersisted,
    each of GX's Spark jobs reads just its columns from Parquet (``source``/``dt`` are literals)."""
    sources = _context().data_sources
    if engine == "spark":
        return sources.add_spark(f"krone_{engine}", persist=False)
    return sources.add_pandas(f"krone_{engine}")


@cache
def _validation_definition(suite: str, engine: str) -> Any:
    """Built once per suite and engine: GX names must be unique in a context, and rebuilding costs time."""
    import great_expectations as gx

    context = _context()
    name = f"{suite}.{engine}"
    batch = _datasource(engine).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    expectations = gx.ExpectationSuite(name=name, expectations=_expectations(suite, spark=engine == "spark"))
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(expectations))
    )


def _expectations(suite: str, *, spark: bool) -> list[Any]:
    """The rules of each suite. Array columns are type-checked on Spark only: pandas has no array dtype
    (values come back as lists or numpy arrays depending on the reader)."""
    import great_expectations.expectations as gxe

    def not_null(*columns: str) -> list[Any]:
        return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]

    def arrays(*columns: str) -> list[Any]:
        return [gxe.ExpectColumnValuesToBeOfType(column=c, type_="ArrayType") for c in columns] if spark else []

    if suite == "parsed":
        return [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(PARSED_COLUMNS), exact_match=True),
            *not_null("source", "dt", "file", "line_no", "template_id"),
            gxe.ExpectColumnValuesToMatchRegex(column="template_id", regex=TEMPLATE_ID_PATTERN),
            gxe.ExpectColumnValuesToBeBetween(column="line_no", min_value=1),
            *arrays("session_keys"),
        ]
    if suite == _COUNTS_SUITE:
        return [
            gxe.ExpectColumnPairValuesToBeEqual(column_A="raw_lines", column_B="accounted_lines"),
            gxe.ExpectColumnValuesToBeBetween(
                column="quarantine_ratio", min_value=0.0, max_value={"$PARAMETER": "max_quarantine_ratio"}
            ),
        ]
    if suite == "sessions":
        return [
            gxe.ExpectTableColumnsToMatchSet(column_set=list(SESSION_COLUMNS), exact_match=True),
            *not_null("source", "dt", "session_id"),
            gxe.ExpectColumnValuesToBeBetween(column="n_events", min_value=1),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="last_ts", column_B="first_ts", or_equal=True),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["source", "dt", "session_id"]),
            *arrays("template_ids"),
        ]
    # reports: at least these columns; the warehouse table carries more (segment ids, model version, ...)
    return [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(REPORT_COLUMNS), exact_match=False),
        *not_null(*REPORT_COLUMNS),
        gxe.ExpectColumnValuesToBeInSet(column="level", value_set=list(LEVELS)),
        gxe.ExpectColumnValuesToBeInSet(column="detector", value_set=list(REPORT_DETECTORS)),
    ]


def _failed_check(result: Mapping[str, Any]) -> FailedCheck:
    """Reduce a GX expectation result (JSON dict) to expectation, column(s), observed and expected values."""
    config = result["expectation_config"]
    kwargs = config["kwargs"]
    columns = kwargs.get("column") or kwargs.get("column_list") or [
        kwargs[k] for k in ("column_A", "column_B") if k in kwargs
    ]
    column = ",".join(columns) if isinstance(columns, list) else columns
    expected = ", ".join(f"{k}={json.dumps(kwargs[k])}" for k in _EXPECTED_KWARGS if kwargs.get(k) is not None)
    observed = _observed(result, exact=kwargs.get("exact_match", True))
    return FailedCheck(config["type"], column or None, observed, expected)


def _observed(result: Mapping[str, Any], *, exact: bool) -> str:
    info = result.get("exception_info") or {}
    errors = [info] if "raised_exception" in info else list(info.values())
    messages = [e["exception_message"] for e in errors if e.get("raised_exception")]
    if messages:
        return "error: " + messages[0].removeprefix("Error: ").rstrip(".")
    outcome = result.get("result") or {}
    if "observed_value" in outcome:
        mismatch = dict(outcome.get("details", {}).get("mismatched") or {})
        if not exact:  # extra columns are allowed by an at-least column set
            mismatch.pop("unexpected", None)
        suffix = f" {json.dumps(mismatch)}" if mismatch else ""
        return json.dumps(outcome["observed_value"], default=str) + suffix
    sample = json.dumps(outcome.get("partial_unexpected_list", [])[:5], default=str)
    return f"{outcome.get('unexpected_count')} of {outcome.get('element_count')} rows unexpected, e.g. {sample}"
