"""The indexed leaf search gives Drain's own answers, and compares far fewer templates on a flooded leaf."""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import krone_jobs.drain_search as drain_search
from krone_jobs.templates import MinerSettings, TemplateStore


def _flood(rng: random.Random, n: int, vocabulary: int) -> list[str]:
    """Texts under one prefix ("user said"): a small vocabulary makes Drain generalise, a large one makes a
    template per text."""
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 5))) for _ in range(vocabulary)]
    return [f"user said {' '.join(rng.choice(words) for _ in range(rng.randint(6, 8)))}" for _ in range(n)]


def _mine_and_match(texts: Sequence[str], *, plain: bool) -> tuple[str, list[Any], list[Any]]:
    store = TemplateStore(MinerSettings())
    if plain:
        store._miner.drain.fast_match = store._search.plain  # Drain's own search
    mined = [store.mine(text) for text in texts]
    matched = [store.match(text) for text in texts]
    return store.to_json(), mined, matched


def _generated() -> list[str]:
    rng = random.Random(11)
    events = [f"job {{}} step {s} {verb} on node {{}}" for s in range(40) for verb in ("started", "failed")]
    texts = [rng.choice(events).format(rng.randint(1, 99), rng.choice("abc")) for _ in range(1500)]
    texts += _flood(rng, 1500, 12) + _flood(rng, 1500, 400)
    rng.shuffle(texts)
    return texts


@pytest.mark.parametrize("vocabulary", [12, 400])
def test_indexed_search_mines_and_matches_exactly_as_drain(monkeypatch: pytest.MonkeyPatch, vocabulary: int) -> None:
    """Index every leaf (threshold 2): templates, ids, generalisations and matches equal plain Drain's."""
    monkeypatch.setattr(drain_search, "MIN_INDEXED_LEAF", 2)
    texts = _generated() + _flood(random.Random(vocabulary), 800, vocabulary)
    assert _mine_and_match(texts, plain=False) == _mine_and_match(texts, plain=True)


def test_indexed_search_agrees_with_drain_on_every_loghub_sample(
        monkeypatch: pytest.MonkeyPatch, shared_data: Path) -> None:
    monkeypatch.setattr(drain_search, "MIN_INDEXED_LEAF", 2)
    samples = sorted((shared_data / "loghub_2k").glob("*/*_structured.csv"))
    assert len(samples) == 16
    for path in samples:
        with path.open(encoding="utf-8", errors="replace") as f:
            texts = [row["Content"] for row in csv.DictReader(f)]
        assert _mine_and_match(texts, plain=False) == _mine_and_match(texts, plain=True), path.parent.name


def test_a_flooded_leaf_is_searched_through_its_index() -> None:
    """3,000 unique texts under one prefix: Drain compares each with every template of the leaf (~4.5M
    comparisons to mine them); the index compares only templates that share enough tokens."""
    texts = _flood(random.Random(5), 3000, 5000)
    calls = {True: 0, False: 0}
    for plain in (True, False):
        store = TemplateStore(MinerSettings())
        drain = store._miner.drain
        if plain:
            drain.fast_match = store._search.plain
        distance = drain.get_seq_distance

        def counted(*args: Any, plain: bool = plain, distance: Any = distance) -> Any:
            calls[plain] += 1
            return distance(*args)

        drain.get_seq_distance = counted
        for text in texts:
            store.mine(text)
        assert len(store.templates()) > 2500
    assert calls[True] > 1_000_000 and calls[False] < calls[True] / 100
