"""A tiny hand-made hierarchy shared by hierarchy, detector and job tests."""

from __future__ import annotations

from krone_jobs.hierarchy.model import Hierarchy, make_node


def toy_hierarchy() -> Hierarchy:
    """job: submit, complete; blob: open, read (ok / failed), close; worker: run."""
    rows = [
        ("t1", "job <*> submitted", "job", "submit", "none"),
        ("t2", "open blob <*>", "blob", "open", "none"),
        ("t3", "read blob <*> ok", "blob", "read", "success"),
        ("t4", "read blob <*> failed", "blob", "read", "failed"),
        ("t5", "close blob <*>", "blob", "close", "none"),
        ("t6", "worker <*> running task", "worker", "run", "none"),
        ("t7", "job <*> completed", "job", "complete", "success"),
    ]
    return Hierarchy(make_node(tid, text, e, a, s, "offline") for tid, text, e, a, s in rows)
