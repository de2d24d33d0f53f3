"""Redaction: every secret shape goes, ordinary template text stays, and the patterns stay linear-time."""

from __future__ import annotations

import time

import pytest

from krone_jobs.llm.redact import ENV_PATTERNS, Redactor

SECRETS = [
    ("connect from 10.2.3.4:50010 ok", "10.2.3.4", "<ip>"),
    ("src: /10.250.19.102 dest", "10.250.19.102", "<ip>"),
    ("peer fe80::1ff:fe23:4567:890a up", "fe80::1ff", "<ip>"),
    ("listen [2001:db8::1]:443", "2001:db8", "<ip>"),
    ("mail to alice@example.com failed", "alice@example.com", "<email>"),
    ("login password=hunter2 user=bob", "hunter2", "password=<secret>"),
    ('{"password": "hunter 2"}', "hunter 2", "<secret>"),
    ("conf my_db_password=s3cr3t; next", "s3cr3t", "<secret>"),
    ("token=abc123 api_key=XYZ987 secret: zz9", "abc123", "token=<secret>"),
    ("token=abc123 api_key=XYZ987 secret: zz9", "XYZ987", "api_key=<secret>"),
    ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE", "<aws-key>"),
    ("Authorization: Bearer abcdefghijklmnop123", "abcdefghijklmnop123", "Bearer <secret>"),
    ("Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz", "Basic <secret>"),
    ("sent bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGci", "<secret>"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGci", "<jwt>"),
    ("open /home/alice/.ssh/id_rsa", "alice", "/home/<user>/.ssh"),
    ("open /Users/bob/data", "bob", "/Users/<user>/data"),
    ("url https://admin:pa55@db.example.com/x", "pa55", "<user>:<secret>@"),
    ("to node-12:50010 and db.internal:5432", "node-12", "<host>"),
    ("sha 0123456789abcdef0123456789abcdef01 ok", "0123456789abcdef", "<hex>"),
    ("tok aGVsbG8gd29ybGQgdGhpcyBpcyBhIHNlY3JldCBrZXkx== end", "aGVsbG8", "<key>"),
]

KEPT = [
    "Receiving block blk_-1608999687919862906 src: /<*>:50010 dest: /<*>:50010",
    "PacketResponder <*> for block <*> terminating",
    "BLOCK* NameSystem.allocateBlock: <*>",
    "basic authentication succeeded at 12:30:45 after retry:3 tokens: 5 passed: 2",
    "loaded /usr/lib/python3.11/site-packages/openai/_base_client.py",
    "std::vector reallocated",
]


@pytest.mark.parametrize(("text", "secret", "placeholder"), SECRETS)
def test_secrets_are_replaced(text, secret, placeholder):
    out = Redactor([])(text)
    assert secret not in out
    assert placeholder in out


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_log_text_is_kept(text):
    assert Redactor([])(text) == text


def test_extra_patterns_from_argument_and_env(monkeypatch):
    assert Redactor([r"cust-\d+"])("order for cust-4711") == "order for <redacted>"
    monkeypatch.setenv(ENV_PATTERNS, '["tenant-[a-z]+"]')
    assert Redactor()("tenant-acme login") == "<redacted> login"
    monkeypatch.setenv(ENV_PATTERNS, '{"not": "a list"}')
    with pytest.raises(ValueError):
        Redactor()


@pytest.mark.parametrize("unit", ["a", "a:", "1.", "A1b", "a@", "-", "::", "a.a", "/home/", "[:", "password ", "0"])
def test_linear_time_on_hostile_input(unit):
    redact = Redactor([])
    timings = []
    for n in (20_000, 200_000):
        text = unit * (n // len(unit))
        start = time.perf_counter()
        redact(text)
        timings.append(time.perf_counter() - start)
    assert timings[1] < 1.0
    assert timings[1] < 40 * max(timings[0], 1e-3)  # 10x input: about 10x time, never 100x
