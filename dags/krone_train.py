"""
### krone_train_&lt;source&gt;: retrain a source's model, weekly and on demand

One DAG per source of `KRONE_SOURCES` (default `synthetic`).

`window_ready` (a sensor in reschedule mode, looking every 10 minutes) waits until the window's last day has
its sessions partition, so a run does not train on a week whose last day's logs are late; it fails after
`KRONE_RAW_WAIT_HOURS` (24), or at once when that day's logs were due longer ago than that and are not
there, and the previous champion stays. Then `train` fits the knowledge base and the Nested-Aware model on
the normal sessions of the `days` days ending at `end` (default: the last day of the weekly data interval,
i.e. the Sunday before the Monday 06:00 UTC run), logs one MLflow run and registers a new version of
`krone-<source>`. The validation gate
runs inside the same call and moves the alias `champion` only when the candidate passes.
`promote` shows that verdict as its own step: it succeeds (and updates the asset `krone_model`) when the
candidate became champion, and is *skipped*, with the gate's reasons in its log, when it was refused.

Params: `source` (fixed: the DAG's own), `end` (YYYY-MM-DD), `days` (window length), `labels` (CSV of session labels; relative
to the data root; known anomalies are kept out of training), `seed`, `data_root`, and the gate's
`fp_bound` and `min_heldout`. No catchup: training on
an old window would only produce a model the gate compares with today's champion. MLflow and the
warehouse come from `KRONE_MLFLOW_URI` / `KRONE_WAREHOUSE_URL` (or the `krone_warehouse` connection).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, PokeReturnValue, dag, task

if str(Path(__file__).parent) not in sys.path:  # a plain DagBag or runpy does not add the dags folder
    sys.path.append(str(Path(__file__).parent))

from krone_common import (  # noqa: E402
    MODEL_ASSET,
    begin_task,
    configured_sources,
    date_param,
    day_of,
    fail_fast,
    give_up_if_overdue,
    raw_wait_seconds,
    source_dag_args,
    source_params,
)

log = logging.getLogger(__name__)


def window_end(context: Mapping[str, Any]) -> str:
    """Last day of the training window: ``params.end``, else the last day of the data interval, else
    (a manual run without a logical date) the day before the run."""
    end = context["params"].get("end")
    if end:
        return str(end)
    last = context.get("data_interval_end") or context["dag_run"].run_after
    return str(day_of(last - timedelta(days=1)))


@task.sensor(poke_interval=600, timeout=raw_wait_seconds(), mode="reschedule")
def window_ready() -> PokeReturnValue:
    """Wait until the training window's last day is sessionized (``krone_jobs.pipeline.window_ready``)."""
    from krone_jobs import pipeline

    context = begin_task()
    params = context["params"]
    verdict = pipeline.window_ready(params["source"], window_end(context), data_root=params.get("data_root"))
    log.info("%s", verdict["reason"])
    give_up_if_overdue(verdict, context)
    return PokeReturnValue(is_done=verdict["ready"], xcom_value=verdict)


@task
@fail_fast
def train() -> dict[str, Any]:
    """Train, register and gate one candidate model."""
    from krone_jobs import pipeline

    context = begin_task()
    params = context["params"]
    return pipeline.train_window(params["source"], window_end(context), days=int(params["days"]),
                                 data_root=params.get("data_root"), labels=params.get("labels"),
                                 seed=int(params["seed"]), run_id=context["dag_run"].run_id,
                                 **{k: params[k] for k in ("fp_bound", "min_heldout") if params.get(k) is not None})


@task(outlets=[MODEL_ASSET])
def promote(result: dict[str, Any], *, outlet_events: Any = None) -> dict[str, Any]:
    """Report the gate's verdict; skipped (no asset event) when the candidate was refused."""
    from airflow.sdk.exceptions import AirflowSkipException

    summary = result["summary"]
    verdict = {"source": result["source"], "end": result["dt"], "model_version": summary.get("model_version"),
               "promoted": bool(summary.get("promoted")), "gate": summary.get("gate")}
    if not verdict["promoted"]:
        raise AirflowSkipException(f"candidate v{verdict['model_version']} not promoted: {verdict['gate']}")
    outlet_events[MODEL_ASSET].extra = {**{k: verdict[k] for k in ("source", "end", "model_version")},
                                        "data_root": begin_task()["params"].get("data_root")}
    return verdict


def train_dag(source: str) -> Any:
    """The weekly training DAG of one source."""

    @dag(
        **source_dag_args("train", source, "0 6 * * 1", __doc__ or "", catchup=False),
        params={
            **source_params(source),
            **date_param("end", "last day of the training window (default: end of the data interval)"),
            "days": Param(7, type="integer", minimum=1, description="days in the training window"),
            "labels": Param(None, type=["null", "string"], description="CSV of session labels (anomalies left out)"),
            "seed": Param(0, type="integer", description="seed of the held-out split and the model"),
            "fp_bound": Param(None, type=["null", "number"], minimum=0, maximum=1,
                              description="gate: highest held-out false-positive rate to promote (default: "
                                          "krone_jobs.config.GATE_FP_BOUND)"),
            "min_heldout": Param(None, type=["null", "integer"], minimum=0,
                                 description="gate: fewest held-out normal sessions (default: "
                                             "krone_jobs.config.GATE_MIN_HELDOUT)"),
        },
        tags=["krone", "train", "mlflow"],
    )
    def krone_train() -> None:
        trained = train()
        window_ready() >> trained
        promote(trained)

    return krone_train()


for _source in configured_sources():
    train_dag(_source)
