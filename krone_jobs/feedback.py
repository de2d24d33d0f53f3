"""Operators' feedback on reported KRONE Seqs (``krone feedback``).

A report names its chunk by two keys: the level key ``<level>|<parent>|<nodes>`` (what the knowledge base
stores) and the cache key (the chunk with its whole span). An operator may paste either; both are stored,
with who and when, in the append-only ``feedback`` table (the newest verdict per chunk counts). A chunk
marked normal is treated as known normal by every later scoring run (its level key joins the model's
knowledge base when the run starts) and joins the knowledge base for good at the next training.
"""

from __future__ import annotations

import argparse
import getpass
import os

from krone_jobs.warehouse import VERDICTS, Warehouse


def record_feedback(source: str, key: str, verdict: str, *, note: str | None = None, author: str | None = None,
                    warehouse_url: str | None = None) -> list[tuple[str, str]]:
    """Record ``verdict`` for every chunk ``key`` names (reports and cache are searched for it); returns the
    ``(cache_key, kseq_key)`` pairs recorded. A key that no report or cache entry holds is refused, so a
    typo cannot silently whitelist nothing (or something else)."""
    who = author or os.environ.get("KRONE_USER") or getpass.getuser()
    with Warehouse(warehouse_url) as wh:
        wh.ensure_schema()
        chunks = wh.find_chunk(source, key)
        if not chunks:
            raise LookupError(f"no report or cached verdict of source {source!r} has the key {key!r}")
        for cache_key, kseq_key in chunks:
            wh.record_feedback(source, cache_key, verdict, author=who, kseq_key=kseq_key, note=note)
    return chunks


def add_feedback_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True)
    p.add_argument("--key", required=True, help="a report's kseq_key or cache_key")
    p.add_argument("--verdict", required=True, choices=VERDICTS)
    p.add_argument("--note", default=None)
    p.add_argument("--author", default=None, help="default: $KRONE_USER or the login name")
    p.set_defaults(func=main_feedback)


def main_feedback(args: argparse.Namespace) -> int:
    chunks = record_feedback(args.source, args.key, args.verdict, note=args.note, author=args.author)
    for cache_key, kseq_key in chunks:
        print(f"recorded {args.verdict}: {kseq_key} (cache key {cache_key})")
    if args.verdict == "normal":
        print("scoring treats it as normal from the next run; it joins the knowledge base at the next training")
    return 0
