"""How many test sessions cause an LLM call, with the LLM on (a scripted local endpoint), per demo split.

For HDFS and Thunderbird at 80 % and 10 % training (the authors' official splits, offline hierarchy),
the routed detector is fitted once and judges the test sessions three times:

* **off**: no LLM (the figures of ``krone evaluate --detector routed``);
* **on, uncapped**: an :class:`LLMJudge` through the real ``openai`` client on a scripted
  OpenAI-protocol server on 127.0.0.1 (the tests' :class:`FakeLLM`), budget fraction 1.0: how many
  sessions the router *wants* to ask about (chunks within ``llm_band`` of the Nested-Aware threshold,
  reached by the early-exit walk);
* **on, default budget**: ``KRONE_LLM_MAX_FRACTION`` = 0.005 of the test sessions, as a night runs.

The scripted model answers ``Abnormal`` when the chunk's own steps name an error (fail, error, exception,
invalid, timeout, refused, denied, fatal) and ``Normal`` otherwise. It prints, per row: sessions, LLM
requests from the router, HTTP calls made, calls refused by the budget, judge cache hits, the fraction of
test sessions that caused a call, and F1/precision/recall for each mode. Run it from the repository root:

    .venv/bin/python bench/llm_fraction.py [--datasets hdfs-demo thunderbird-demo] [--train-percents 80 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' scripted server

from krone_jobs.datasets import DEMOS, load_demo, load_demo_templates, split  # noqa: E402
from krone_jobs.detectors.router import RoutedDetector  # noqa: E402
from krone_jobs.evaluate import confusion, load_hierarchy  # noqa: E402
from krone_jobs.llm.client import Budget, LLMClient  # noqa: E402
from krone_jobs.llm.judge import LLMJudge  # noqa: E402
from tests.llm.fake_server import FakeLLM  # noqa: E402

ERROR_WORDS = re.compile(r"fail|error|exception|invalid|timeout|refused|denied|fatal", re.IGNORECASE)
DEFAULT_FRACTION = 0.005


def scripted_answer(body: dict[str, Any]) -> str:
    """Judge only the chunk under test (and its sub-steps), never the normal examples shown after it."""
    chunk = body["messages"][-1]["content"].split("normal_examples_same_parent", 1)[0]
    abnormal = bool(ERROR_WORDS.search(chunk))
    return json.dumps({"prediction": "Abnormal" if abnormal else "Normal",
                       "reason": "an error step" if abnormal else "steps match normal executions"})


def judge_pass(detector: RoutedDetector, test: Any, llm: LLMJudge | None) -> dict[str, Any]:
    detector.llm = llm
    detector._reset_runtime()  # a fresh night: empty caches, zeroed stats
    y_pred = detector.predict(test.sequences)
    fig = confusion(test.labels, y_pred)
    out: dict[str, Any] = {"f1": fig["f1"], "precision": fig["precision"], "recall": fig["recall"],
                           "requests": detector.stats_["llm_requests"]}
    if llm is not None:
        c = llm.client.counters
        out.update(calls=c.calls, budget_refusals=c.budget_refusals,
                   judge_cache_hits=llm.stats["cache_hits"], session_cache_hits=detector.stats_["session_cache_hits"],
                   decided_by_llm=llm.stats["decided"], tokens=c.prompt_tokens + c.completion_tokens)
        out["call_fraction"] = out["calls"] / len(test)
    return out


def run_row(dataset: str, train_percent: int, server: FakeLLM) -> dict[str, Any]:
    train, test = split(load_demo(dataset), dataset, train_percent, "official")
    detector = RoutedDetector(load_hierarchy(dataset, "offline")).fit(train.sequences)
    templates = load_demo_templates(dataset)
    row: dict[str, Any] = {"dataset": dataset, "train_percent": train_percent, "n_test": len(test),
                           "off": judge_pass(detector, test, None)}
    for name, fraction in (("uncapped", 1.0), ("default", DEFAULT_FRACTION)):
        client = LLMClient(server.base_url, "scripted", api_key="bench", timeout=5.0,
                           budget=Budget(max_calls=len(test), max_fraction=fraction, n_sessions=len(test)))
        row[name] = judge_pass(detector, test, LLMJudge(client, templates, k=detector.llm_examples))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DEMOS), choices=list(DEMOS))
    ap.add_argument("--train-percents", type=int, nargs="+", default=[80, 10], choices=[80, 10, 1])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    server = FakeLLM().start()
    server.respond(scripted_answer)
    try:
        rows = [run_row(d, tp, server) for d in args.datasets for tp in args.train_percents]
    finally:
        server.stop()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        off, unc, dflt = r["off"], r["uncapped"], r["default"]
        print(f"{r['dataset']} {r['train_percent']}%: {r['n_test']:,} test sessions | LLM off F1 {off['f1']:.4f} "
              f"(P {off['precision']:.4f} R {off['recall']:.4f})")
        for name, m in (("uncapped", unc), ("budget 0.5%", dflt)):
            print(f"  LLM on, {name:<11}: {m['requests']} router requests, {m['calls']} calls "
                  f"({100 * m['call_fraction']:.3f} % of sessions), {m['budget_refusals']} refused by the budget, "
                  f"{m['judge_cache_hits']} judge cache hits, {m['session_cache_hits']} session cache hits, "
                  f"{m['decided_by_llm']} decided by the LLM, {m['tokens']:,} tokens | F1 {m['f1']:.4f} "
                  f"(P {m['precision']:.4f} R {m['recall']:.4f})")


if __name__ == "__main__":
    main()
