"""Labelled session sets for evaluation: the KRONE authors' demo sets and their exact splits.

The demo files live outside the project (``../shared/data/krone_demo``, or ``$KRONE_SHARED_DATA``);
nothing here is copied into the repository. Splits follow the authors' ``train_percent`` protocol
(``official/README.md``): train = ``train_size`` normal sessions drawn with ``RandomState(0)``, test =
everything else in file order. The id files they published are read when present, and
:func:`random_split` recomputes the same split from the protocol (a test checks both agree).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TOKEN = re.compile(r"-?\d+")


@dataclass(frozen=True)
class DemoSpec:
    """Where one demo dataset's files are, relative to the data root."""

    name: str  # the authors' dataset name, used in their file names
    sequences: str
    templates: str
    template_id_column: str


DEMOS: dict[str, DemoSpec] = {
    "hdfs-demo": DemoSpec("HDFS", "HDFS_demo_sequences.csv", "HDFS.log_templates.csv", "EventId"),
    "thunderbird-demo": DemoSpec(
        "ThunderBird", "ThunderBird_demo_sequences.csv", "ThunderBird.log_templates.csv", "EventId"
    ),
}


class DataNotFoundError(FileNotFoundError):
    """The shared data folder (or one of its files) is not there."""


def default_data_dir() -> Path:
    """``$KRONE_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("KRONE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@dataclass(frozen=True)
class LabelledSessions:
    """Sessions as template-id sequences with 0/1 labels, in file order."""

    ids: list[int]
    sequences: list[tuple[str, ...]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: Sequence[int] | np.ndarray) -> LabelledSessions:
        idx = np.asarray(index, dtype=np.int64)
        return LabelledSessions([self.ids[i] for i in idx], [self.sequences[i] for i in idx], self.labels[idx])


def _demo_root(data_dir: Path | None) -> Path:
    root = (data_dir or default_data_dir()) / "krone_demo"
    if not root.is_dir():
        raise DataNotFoundError(f"KRONE demo data not found at {root} (set KRONE_SHARED_DATA or --data-dir)")
    return root


def load_demo(dataset: str, data_dir: Path | None = None) -> LabelledSessions:
    """Read ``<DS>_demo_sequences.csv``: seq_id, EventSequence, Label."""
    spec = DEMOS[dataset]
    path = _demo_root(data_dir) / spec.sequences
    ids: list[int] = []
    seqs: list[tuple[str, ...]] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            ids.append(int(row["seq_id"]))
            seqs.append(tuple(_TOKEN.findall(row["EventSequence"])))
            labels.append(int(row["Label"]))
    return LabelledSessions(ids, seqs, np.asarray(labels, dtype=np.int8))


def load_demo_templates(dataset: str, data_dir: Path | None = None) -> dict[str, str]:
    """template_id -> template text for a demo dataset."""
    spec = DEMOS[dataset]
    path = _demo_root(data_dir) / spec.templates
    with open(path, newline="", encoding="utf-8") as fh:
        return {str(row[spec.template_id_column]).strip(): row["EventTemplate"] for row in csv.DictReader(fh)}


def official_node_table(dataset: str, data_dir: Path | None = None) -> Path:
    return _demo_root(data_dir) / "official" / f"krone_official_{DEMOS[dataset].name}_tree_nodes.csv"


def official_split(dataset: str, train_percent: int, data_dir: Path | None = None) -> tuple[list[int], list[int]]:
    """The authors' published train/test seq_ids for ``train_percent`` (80, 10 or 1)."""
    root = _demo_root(data_dir) / "official"
    name = DEMOS[dataset].name
    tag = "" if train_percent == 80 else f"_tp{train_percent}"
    folder = root if train_percent == 80 else root / "splits"
    out = []
    for part in ("train", "test"):
        path = folder / f"krone_official_{name}{tag}_{part}_ids.txt"
        if not path.exists():
            raise DataNotFoundError(f"no published split at {path}")
        out.append([int(x) for x in path.read_text().split()])
    return out[0], out[1]


def random_split(labels: np.ndarray, train_percent: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The authors' protocol: positions of train (normal only) and test rows, both in file order.

    Equivalent to ``df[df.Label == 0].sample(n=train_size, random_state=seed)``.
    """
    train_size = int(train_percent * len(labels) / 100)
    normal = np.flatnonzero(labels == 0)
    train = np.sort(normal[np.random.RandomState(seed).permutation(len(normal))[:train_size]])
    mask = np.ones(len(labels), dtype=bool)
    mask[train] = False
    return train, np.flatnonzero(mask)


def chronological_split(labels: np.ndarray, train_percent: float) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered protocol: rows are assumed in time order; the first ``train_percent`` % of rows is
    the training window (its normal sessions train, its anomalies are dropped: they are not in the
    future), the rest is the test set. This is how a nightly retraining sees data."""
    cut = int(train_percent * len(labels) / 100)
    head = np.arange(cut)
    return head[labels[:cut] == 0], np.arange(cut, len(labels))


def split(
    sessions: LabelledSessions, dataset: str, train_percent: int, protocol: str, data_dir: Path | None = None
) -> tuple[LabelledSessions, LabelledSessions]:
    """Split by ``protocol``: ``official`` (published ids, else the protocol), ``random`` or ``chronological``."""
    if protocol == "chronological":
        train_idx, test_idx = chronological_split(sessions.labels, train_percent)
    elif protocol == "official":
        try:
            train_ids, test_ids = official_split(dataset, train_percent, data_dir)
        except DataNotFoundError:
            train_idx, test_idx = random_split(sessions.labels, train_percent)
        else:
            pos = {sid: i for i, sid in enumerate(sessions.ids)}
            train_idx = np.asarray([pos[i] for i in train_ids])
            test_idx = np.asarray(sorted(pos[i] for i in test_ids))
    elif protocol == "random":
        train_idx, test_idx = random_split(sessions.labels, train_percent)
    else:
        raise ValueError(f"unknown split protocol {protocol!r}")
    return sessions.subset(train_idx), sessions.subset(test_idx)
