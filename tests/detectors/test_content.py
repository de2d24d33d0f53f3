from __future__ import annotations

import numpy as np

from krone_jobs.detectors.codebook import Codebook
from krone_jobs.detectors.content import BagModel
from krone_jobs.hierarchy.model import Hierarchy


def _model(toy: Hierarchy) -> tuple[Codebook, BagModel, dict[str, int]]:
    book = Codebook.from_hierarchy(toy)
    status = {tid: codes[2] for tid, codes in book.codes.items()}
    seen = ({book.codes[t][0] for t in ("t1", "t2")}, {book.codes[t][1] for t in ("t1", "t2", "t3")},
            {status[t] for t in ("t1", "t2", "t3")})
    bags = [((status["t1"], 1), (status["t2"], 1), (status["t3"], n)) for n in (1, 2, 2, 3)]
    return book, BagModel(book, seen).fit(bags), status


def test_a_training_bag_is_at_distance_zero_and_more_reads_are_farther(toy: Hierarchy) -> None:
    book, model, status = _model(toy)
    near = ((status["t1"], 1), (status["t2"], 1), (status["t3"], 2))
    far = ((status["t1"], 1), (status["t2"], 1), (status["t3"], 40))
    dist, row, col = model.score([near, far])
    assert dist[0] == 0.0 and dist[1] > 1.0
    assert model.columns[col[1]] in {(1, book.codes["t3"][1]), (2, status["t3"])}  # the read count differs
    assert model.raw_count(int(row[1]), int(col[1])) == 3  # the nearest normal session read 3 times


def test_an_unseen_node_counts_for_its_nearest_seen_ancestor(toy: Hierarchy) -> None:
    book, model, status = _model(toy)
    # t4 (read failed) is unseen, but its action (blob/read) was seen: it counts there and at the root
    assert [model.columns[j] for j in model.route[status["t4"]]] == [(-1, 0), (0, book.codes["t4"][0]),
                                                                     (1, book.codes["t4"][1])]
    assert model.route[status["t6"]] == (0,)  # worker was never seen: only the session root


def test_state_round_trip_scores_the_same(toy: Hierarchy) -> None:
    book, model, status = _model(toy)
    again = BagModel.from_state(book, model.to_state())
    bags = [((status["t1"], 2),), ((status["t3"], 5), (status["t6"], 1))]
    for a, b in zip(model.score(bags), again.score(bags)):
        np.testing.assert_array_equal(a, b)
