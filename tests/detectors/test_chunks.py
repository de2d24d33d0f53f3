from __future__ import annotations

from krone_jobs.detectors.chunks import TABLES, ChunkExample, cap_repeats, chunk_examples, chunk_key
from krone_jobs.detectors.codebook import Codebook
from krone_jobs.hierarchy.model import Hierarchy


def test_repeats_are_capped_runs_kept_apart() -> None:
    assert cap_repeats([1] * 10 + [2] + [1] * 3, limit=6) == (1,) * 6 + (2,) + (1,) * 3
    assert cap_repeats([]) == ()


def test_every_chunk_has_its_parent_children_and_the_session_bag(toy: Hierarchy) -> None:
    book = Codebook.from_hierarchy(toy)
    cut = book.cut(["t1", "t2", "t3", "t3", "t5", "t7"])
    assert cut is not None
    exs = chunk_examples(cut)
    entity, = exs["entity"]
    assert entity.parent == -1 and len(entity.children) == len(exs["action"])
    # every action chunk's children are the status chunks inside it, in order
    assert [kid for a in exs["action"] for kid in a.children] == [s.nodes for s in exs["status"]]
    status_of = {tid: book.codes[tid][TABLES["status"][0]] for tid in ("t1", "t2", "t3", "t5", "t7")}
    assert dict(entity.bag) == {status_of["t1"]: 1, status_of["t2"]: 1, status_of["t3"]: 2, status_of["t5"]: 1,
                                status_of["t7"]: 1}  # repeats counted, not capped
    assert all(ex.bag == entity.bag for lvl in exs for ex in exs[lvl])
    assert chunk_key(ChunkExample(4, (1, 2), ())) == (4, 1, 2)
