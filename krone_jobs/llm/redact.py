"""Secrets out before any prompt leaves the machine.

Log text is attacker-controlled and may carry credentials, addresses and user names; an LLM endpoint
(often a third party) must never see them. Every pattern here is linear-time: no nested or unbounded
overlapping quantifiers, and the fuzzy checks (is this run of characters a key? an IPv6 address?) are
done in Python on the matched text instead of with look-aheads that rescan the input.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from re import Match

ENV_PATTERNS = "KRONE_REDACT_PATTERNS"
SECRET = "<secret>"

_KEYWORDS = (r"pass(?:word|wd)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
             r"|client[_-]?secret|auth|credentials?|session[_-]?id|cookie")


def _keep_or(replacement: str, test: Callable[[str], bool]) -> Callable[[Match[str]], str]:
    """A ``re.sub`` callback that replaces the match only when ``test`` accepts its text."""
    return lambda m: replacement if test(m.group(0)) else m.group(0)


def _is_ipv6(text: str) -> bool:
    """Tell IPv6 (and MAC) addresses from clock times like ``12:30:45``."""
    body = text.strip("[]")
    return "::" in body or body.count(":") >= 5 or any(c in "abcdefABCDEF" for c in body)


def _is_host(text: str) -> bool:
    """``node-7:50010``, ``db.internal:5432``, ``localhost:8080``; not ``retry:3`` or ``Class.method:10``."""
    host = text.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    labels = host.split(".")
    if len(labels) > 1:  # dotted: a host name unless it reads like a Java/Python qualified name
        return labels[-1].islower() and not any(label[:1].isupper() for label in labels)
    return "-" in host or any(c.isdigit() for c in host)


def _is_key(text: str) -> bool:
    """A long run of base64/url-safe characters that mixes cases and digits, but is not a path."""
    body = text.rstrip("=")
    if max((len(part) for part in body.split("/")), default=0) < 24:
        return False
    return any(c.isdigit() for c in body) and any(c.isupper() for c in body) and any(c.islower() for c in body)


# (pattern, replacement) in order: specific shapes first, so a later, looser pattern never sees them.
_RULES: tuple[tuple[re.Pattern[str], str | Callable[[Match[str]], str]], ...] = (
    # scheme://user:password@host
    (re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,20}://)[^\s/:@]{1,256}:[^\s/@]{1,256}@"), rf"\1<user>:{SECRET}@"),
    # Authorization: Basic <credentials>, and bearer tokens anywhere
    (re.compile(r"(?i)\b(authorization\"?\s{0,3}[=:]\s{0,3}(?:(?:bearer|basic|digest|negotiate|token)\s{1,4})?)"
                r"[^\s,;&\"']+"), rf"\1{SECRET}"),
    (re.compile(r"(?i)\b(bearer)\s{1,4}[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {SECRET}"),
    # password=..., "token": "...", db_api_key=... (a keyword anywhere, even inside a longer name)
    (re.compile(rf"(?i)({_KEYWORDS})(\"?\s{{0,3}}[=:]\s{{0,3}})"
                r"(?:\"[^\"\n]{0,512}\"|'[^'\n]{0,512}'|[^\s,;&\"']+)"), rf"\1\2{SECRET}"),
    # AWS access key ids
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), "<aws-key>"),
    # JSON Web Tokens
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "<jwt>"),
    # private key blocks (the header is enough to drop the line's secret part)
    (re.compile(r"-----BEGIN [A-Z ]{0,30}PRIVATE KEY-----[A-Za-z0-9+/=\s]{0,8192}"), "<private-key>"),
    # e-mail addresses
    (re.compile(r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}\b"), "<email>"),
    # IPv6 (optionally bracketed with a port), MAC addresses
    (re.compile(r"\[?(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])\]?(?::\d{1,5}\b)?"),
     _keep_or("<ip>", _is_ipv6)),
    # IPv4, optionally with a port
    (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])(?::\d{1,5}\b)?"), "<ip>"),
    # host:port
    (re.compile(r"(?<![\w.-])[A-Za-z][A-Za-z0-9-]{0,62}(?:\.[A-Za-z0-9-]{1,63}){0,10}:\d{2,5}\b"),
     _keep_or("<host>", _is_host)),
    # user names in home directories
    (re.compile(r"(/home/|/Users/|[A-Za-z]:\\Users\\)[^/\\\s]{1,64}"), r"\1<user>"),
    # long hex strings (hashes, keys, session ids)
    (re.compile(r"\b[0-9A-Fa-f]{32,}\b"), "<hex>"),
    # long base64 / url-safe tokens
    (re.compile(r"[A-Za-z0-9+/_-]{32,}={0,2}"), _keep_or("<key>", _is_key)),
)


class Redactor:
    """Replace secrets in text with placeholders; ``extra`` patterns (or ``KRONE_REDACT_PATTERNS``, a JSON
    list of regexes) are applied last and become ``<redacted>``.

    A bad extra pattern raises at construction: a redaction that silently does nothing would leak."""

    def __init__(self, extra: Iterable[str] | None = None) -> None:
        patterns = list(extra) if extra is not None else _env_patterns()
        self._extra = tuple(re.compile(p) for p in patterns)

    def __call__(self, text: str) -> str:
        for pattern, repl in _RULES:
            text = pattern.sub(repl, text)
        for pattern in self._extra:
            text = pattern.sub("<redacted>", text)
        return text


def _env_patterns() -> list[str]:
    raw = os.environ.get(ENV_PATTERNS, "").strip()
    if not raw:
        return []
    value = json.loads(raw)
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{ENV_PATTERNS} must be a JSON list of regex strings")
    return value
