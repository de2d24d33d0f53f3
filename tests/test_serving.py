"""Message sessions -> template ids for the served model (the pyfunc end to end: test_model_registry.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from krone_jobs.hierarchy.model import Hierarchy
from krone_jobs.serving import MAX_MESSAGE_CHARS, BadMessages, messages, placed, template_sessions
from krone_jobs.templates import TemplateStore, template_id


def test_messages_reads_lists_texts_and_missing_values() -> None:
    assert messages(["a b", "c"], 0) == messages(np.asarray(["a b", "c"]), 0) == ("a b", "c")
    assert messages("a b\r\nc\n", 0) == ("a b", "c")
    assert messages(None, 0) == messages(float("nan"), 0) == messages([], 0) == ()


@pytest.mark.parametrize(("value", "says"), [
    (["ok", b"bytes"], "row 3, message 1: not a string (bytes)"),
    (7, "row 3: messages must be a list of strings or one string, not int"),
    (["x" * (MAX_MESSAGE_CHARS + 1)], "over 65,536"),
])
def test_messages_refuses_what_it_cannot_read(value: object, says: str) -> None:
    with pytest.raises(BadMessages, match=re.escape(says)):
        messages(value, 3)


def test_unmatched_messages_become_their_masked_text_and_are_placed_offline() -> None:
    store = TemplateStore()
    for n in range(5):
        store.mine(f"job_{n} read block 4{n} ok")
    sessions, texts = template_sessions([("job_7 read block 99 ok", "job_7 lost block 99: disk failed"),
                                         ("job_8 lost block 12: disk failed",)], store)
    known = store.match("job_1 read block 3 ok")
    assert known is not None and sessions[0][0] == known.template_id
    lost = template_id("<ID> lost block <NUM>: disk failed")  # the store's masks, no Drain generalisation
    assert sessions[0][1] == sessions[1][0] == lost and texts[lost] == "<ID> lost block <NUM>: disk failed"
    grown = placed(texts, Hierarchy(()))
    assert grown[lost].status == "failed" and grown[lost].origin == "offline"
    assert set(grown) == set(texts)
