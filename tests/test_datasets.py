from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from krone_jobs.datasets import DEMOS, chronological_split, load_demo, official_split, random_split


@pytest.mark.shared_data
@pytest.mark.parametrize("dataset", sorted(DEMOS))
@pytest.mark.parametrize("train_percent", [80, 10, 1])
def test_protocol_reproduces_the_published_split(shared_data: Path, dataset: str, train_percent: int) -> None:
    sessions = load_demo(dataset, shared_data)
    train_ids, test_ids = official_split(dataset, train_percent, shared_data)
    train, test = random_split(sessions.labels, train_percent)
    assert sorted(train_ids) == sorted(sessions.ids[i] for i in train)
    assert sorted(test_ids) == sorted(sessions.ids[i] for i in test)
    assert len(sessions) == 20_000 and sessions.labels[train].sum() == 0


def test_chronological_split_trains_on_the_past_only() -> None:
    labels = np.array([0, 1, 0, 0, 0, 1, 0, 0, 0, 0], dtype=np.int8)
    train, test = chronological_split(labels, 50)
    assert train.tolist() == [0, 2, 3, 4] and test.tolist() == [5, 6, 7, 8, 9]
