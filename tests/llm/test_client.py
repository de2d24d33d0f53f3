"""LLMClient through the real openai client against the fake server: answers, retries, timeouts, breaker,
budget, token accounting."""

from __future__ import annotations

import time

import pytest
from tests.llm.fake_server import Reply

from krone_jobs.config import Settings
from krone_jobs.llm.client import Budget, LLMClient, parse_json_object

MSGS = [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]


def keys_ab(answer: object) -> dict | None:
    return answer if isinstance(answer, dict) and set(answer) == {"a"} else None


def test_good_answer_counts_tokens_and_asks_json_only(fake, make_client):
    fake.respond(Reply('{"a": 1}', usage={"prompt_tokens": 30, "completion_tokens": 5}))
    client = make_client()
    assert client.ask(MSGS, keys_ab) == {"a": 1}
    sent = fake.requests[0]
    assert sent["model"] == "fake-model"
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["temperature"] == 0
    assert sent["messages"] == MSGS
    m = client.metrics()
    assert (m["calls"], m["attempts"], m["retries"], m["failures"], m["invalid"]) == (1, 1, 0, 0, 0)
    assert (m["prompt_tokens"], m["completion_tokens"], m["breaker_open"]) == (30, 5, 0)


@pytest.mark.parametrize("content", ['```json\n{"a": 2}\n```', 'Sure! Here it is: {"a": 2} Hope it helps.'])
def test_servers_that_ignore_json_mode(fake, make_client, content):
    fake.respond(content)
    assert make_client().ask(MSGS, keys_ab) == {"a": 2}


def test_server_rejecting_json_mode_gets_plain_requests(fake, make_client):
    fake.respond(Reply(status=400), '{"a": 3}')
    client = make_client()
    assert client.ask(MSGS, keys_ab) == {"a": 3}
    assert "response_format" in fake.requests[0] and "response_format" not in fake.requests[1]
    assert client.ask(MSGS, keys_ab) == {"a": 3}
    assert "response_format" not in fake.requests[2]
    assert client.counters.failures == 0


@pytest.mark.parametrize("garbage", ["not json at all", '{"b": 1}', "[1, 2]", ""])
def test_invalid_answer_is_asked_once_more_then_none(fake, make_client, garbage):
    fake.respond(garbage)
    client = make_client()
    assert client.ask(MSGS, keys_ab, reminder="only JSON please") is None
    assert len(fake.requests) == 2
    assert fake.requests[1]["messages"][-1] == {"role": "user", "content": "only JSON please"}
    assert len(fake.requests[1]["messages"]) == 3  # the bad answer is never echoed back
    assert (client.counters.calls, client.counters.invalid, client.counters.failures) == (2, 2, 0)


def test_second_try_can_succeed(fake, make_client):
    fake.respond("garbage", '{"a": 4}')
    client = make_client()
    assert client.ask(MSGS, keys_ab) == {"a": 4}
    assert client.counters.invalid == 1


def test_slow_server_times_out_quickly(fake, make_client):
    fake.respond(Reply('{"a": 1}', delay=5.0))
    client = make_client(timeout=0.3, retries=1)
    start = time.monotonic()
    assert client.ask(MSGS, keys_ab) is None
    assert time.monotonic() - start < 2.0
    assert (client.counters.attempts, client.counters.retries, client.counters.failures) == (2, 1, 1)


def test_http_500_retried_with_backoff_then_failure(fake, make_client):
    fake.respond(Reply(status=500))
    client = make_client(backoff=0.1, max_backoff=1.0, breaker_threshold=10)
    start = time.monotonic()
    assert client.ask(MSGS, keys_ab) is None
    elapsed = time.monotonic() - start
    assert len(fake.requests) == 3  # 1 + 2 retries
    assert 0.1 * 0.5 + 0.2 * 0.5 <= elapsed < 2.0  # backoff 0.1 then 0.2, jitter in [0.5, 1]
    c = client.counters
    assert (c.calls, c.attempts, c.retries, c.failures, c.breaker_trips) == (1, 3, 2, 1, 0)
    fake.respond('{"a": 5}')  # the endpoint recovers
    assert client.ask(MSGS, keys_ab) == {"a": 5}


@pytest.mark.parametrize("body", ["<html>proxy error</html>", '{"foo": 1}', '{"choices": [{}]}',
                                  '{"choices": [{"message": {"content": null}}]}'])
def test_malformed_bodies_are_failures_or_invalid_never_exceptions(fake, make_client, body):
    fake.respond(Reply(body=body))
    client = make_client()
    assert client.ask(MSGS, keys_ab) is None
    assert client.counters.failures + client.counters.invalid >= 1


def test_client_errors_are_not_retried(fake, make_client):
    fake.respond(Reply(status=401))
    client = make_client()
    assert client.ask(MSGS, keys_ab) is None
    assert len(fake.requests) == 1 and client.counters.failures == 1


def test_dead_endpoint_opens_breaker_and_costs_seconds(closed_port):
    client = LLMClient(closed_port, "m", budget=Budget(1000))  # production defaults: 10 s, 2 retries, 0.5 s
    start = time.monotonic()
    results = [client.ask(MSGS, keys_ab) for _ in range(50)]
    elapsed = time.monotonic() - start
    assert results == [None] * 50
    c = client.counters
    assert (c.attempts, c.failures, c.breaker_trips, c.breaker_refusals) == (3, 1, 1, 49)
    assert client.breaker_open and client.metrics()["breaker_open"] == 1
    assert elapsed < 3.0  # backoff 0.5 + 1.0 at most, then nothing


def test_breaker_cooldown_lets_one_probe_through(fake, make_client, closed_port):
    client = make_client(base_url=closed_port, breaker_threshold=2, breaker_cooldown=0.2, retries=0)
    assert client.ask(MSGS, keys_ab) is None and client.ask(MSGS, keys_ab) is None
    assert client.breaker_open
    assert client.ask(MSGS, keys_ab) is None and client.counters.breaker_refusals == 1
    time.sleep(0.25)
    assert not client.breaker_open
    assert client.ask(MSGS, keys_ab) is None  # the probe fails: open again at once
    assert client.breaker_open and client.counters.breaker_trips == 2


def test_budget_max_calls(fake, make_client):
    fake.respond('{"a": 1}')
    client = make_client(budget=Budget(max_calls=2))
    assert [client.ask(MSGS, keys_ab) for _ in range(4)] == [{"a": 1}, {"a": 1}, None, None]
    assert len(fake.requests) == 2
    assert client.counters.budget_refusals == 2


def test_budget_max_fraction_of_sessions(fake, make_client):
    fake.respond('{"a": 1}')
    budget = Budget(max_calls=100, max_fraction=0.05, n_sessions=40)  # 2 calls for 40 sessions
    client = make_client(budget=budget)
    assert [client.ask(MSGS, keys_ab) is not None for _ in range(3)] == [True, True, False]
    budget.add_sessions(20)  # 60 sessions: 3 calls
    assert [client.ask(MSGS, keys_ab) is not None for _ in range(2)] == [True, False]
    assert client.counters.budget_refusals == 2 and len(fake.requests) == 3


def test_budget_invalid_retry_is_charged(fake, make_client):
    fake.respond("garbage")
    client = make_client(budget=Budget(max_calls=1))
    assert client.ask(MSGS, keys_ab) is None
    assert (len(fake.requests), client.counters.budget_refusals) == (1, 1)


def test_from_settings(monkeypatch, fake):
    for var in ("KRONE_LLM_BASE_URL", "KRONE_LLM_MODEL", "KRONE_LLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert LLMClient.from_settings() is None
    monkeypatch.setenv("KRONE_LLM_BASE_URL", fake.base_url)
    assert LLMClient.from_settings() is None  # a model is needed too
    monkeypatch.setenv("KRONE_LLM_MODEL", "m1")
    monkeypatch.setenv("KRONE_LLM_MAX_CALLS", "7")
    monkeypatch.setenv("KRONE_LLM_MAX_FRACTION", "0.1")
    client = LLMClient.from_settings(Settings(), n_sessions=50, timeout=1.0)
    assert client is not None and client.model == "m1"
    assert client.budget.limit() == 5
    assert LLMClient.from_settings().budget.limit() == 7  # no sessions: only max_calls
    fake.respond('{"a": 1}')
    assert client.ask(MSGS, keys_ab) == {"a": 1}


def test_parse_json_object():
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object("x {bad") is None
    assert parse_json_object('"just a string"') is None
