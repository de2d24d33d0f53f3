"""Reasons stay readable, and cheap to make, however long the chunk."""

from __future__ import annotations

import random
import time
from difflib import SequenceMatcher

from krone_jobs.detectors.explain import MAX_COMPARED, describe_difference, k_nearest, nearest, render_steps
from krone_jobs.detectors.router import RoutedDetector
from tests.toy import toy_hierarchy


def test_runs_are_counted_and_long_chunks_elided() -> None:
    assert render_steps(["a", "a", "a", "b", "a"]) == "a ×3 -> b -> a"
    many = [str(i) for i in range(100)]
    shown = render_steps(many, limit=4)
    assert shown == "0 -> 1 -> … 96 more … -> 98 -> 99"
    assert render_steps(many, ", ", limit=100) == ", ".join(many)


def test_difference_and_nearest_look_at_a_bounded_prefix() -> None:
    assert describe_difference(["a", "b"], ["a", "c"]) == "c instead of b"
    long = ["a"] * 100_000 + ["z"]  # the z lies beyond what is compared
    assert describe_difference(["a"] * 10, long).endswith(f"first {MAX_COMPARED} steps compared")
    assert nearest(long, [["b"], ["a", "a"]]) == (("a", "a"), nearest(["a"] * MAX_COMPARED, [["a", "a"]])[1])


def test_a_million_event_session_is_judged_in_linear_time_with_a_short_reason() -> None:
    """A node that never falls silent for a day makes one session of every event: its reason used to list
    every step and compare them all with difflib (2.6 min and 19 MB of text for 10^6 events)."""
    routed = RoutedDetector(toy_hierarchy(), nested=False).fit([["t1", "t2", "t3", "t5", "t6", "t7"]] * 5)
    session = ["t1"] + ["t2", "t3", "t5", "t6"] * 250_000 + ["t7"]  # an entity-level chunk of 500,002 steps
    t0 = time.perf_counter()
    (v,) = routed.detect([session])
    assert time.perf_counter() - t0 < 20
    assert v.anomalous and v.level == "entity"
    assert len(v.reason) < 2_000 and "more …" in v.reason and "steps compared" in v.reason


def test_the_bounded_search_finds_what_rating_every_candidate_finds() -> None:
    """Candidates are visited best upper bound first and the search stops early; the answer, ties included
    (the first candidate of equal similarity), is that of rating them all."""
    rng = random.Random(7)
    for _ in range(200):
        chunk = rng.choices("abcd", k=rng.randint(0, 12))
        normals = [rng.choices("abcd", k=rng.randint(0, 12)) for _ in range(rng.randint(1, 30))]
        rated = sorted((-SequenceMatcher(a=n, b=chunk, autojunk=False).ratio(), i) for i, n in enumerate(normals))
        assert nearest(chunk, normals) == (tuple(normals[rated[0][1]]), -rated[0][0])
        assert k_nearest(chunk, normals, 3) == [tuple(normals[i]) for _, i in rated[:3]]
