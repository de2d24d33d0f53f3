"""Test-wide settings: quiet, offline, and where the shared (read-only) data lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Must be set before anything imports airflow, mlflow, pyspark or great_expectations.
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".airflow"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__USAGE_DATA_COLLECTION__ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
for _name in ("KRONE_ALERT_URLS", "KRONE_ALERT_CONFIG", "AIRFLOW_CONN_KRONE_ALERTS"):
    os.environ.pop(_name, None)  # the tests never alert the developer's own targets

import pytest  # noqa: E402

from krone_jobs.datasets import default_data_dir  # noqa: E402
from krone_jobs.hierarchy.model import Hierarchy  # noqa: E402
from tests.alert_inbox import AlertInbox  # noqa: E402
from tests.toy import toy_hierarchy  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root; tests that need it skip with a clear reason when it is absent."""
    root = default_data_dir()
    if not (root / "krone_demo").is_dir():
        pytest.skip(f"shared data not present at {root} (set KRONE_SHARED_DATA)")
    return root


@pytest.fixture()
def toy() -> Hierarchy:
    """The tiny job/blob/worker hierarchy of :mod:`tests.toy`."""
    return toy_hierarchy()


@pytest.fixture()
def alert_inbox() -> Iterator[AlertInbox]:
    """A webhook on 127.0.0.1 that keeps the alerts Apprise posts to its :attr:`~AlertInbox.url`."""
    inbox = AlertInbox().start()
    yield inbox
    inbox.stop()
