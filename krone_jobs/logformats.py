"""Line formats and session-key rules (files are read by :mod:`krone_jobs.logfiles`, stamps parsed by
:mod:`krone_jobs.timestamps`).

Everything here works on raw BYTES because log files are attacker-controlled: a line may be 10 MB long,
binary, or not UTF-8. :func:`parse_line` never raises on bad input; it returns :class:`Quarantined` with a
reason code from a small fixed set so the parse stage can write it to ``quarantine/`` and count it.

Decoding rule (explicit, tested): strict UTF-8 first. If that fails, the line is decoded as latin-1 only
when it still *looks like text* (at most 30 % non-ASCII bytes and none in 0x80-0x9F, which latin-1 maps to
invisible C1 controls and which legacy text encodings rarely produce alone); the result records
``encoding="latin-1"``. Anything else is quarantined as ``bad_encoding``. Lines with NUL or other C0
control bytes (TAB and ESC, used by coloured logs, excepted) are quarantined as ``binary``.

A format reads the decoded line with a regex of named groups or, for JSON lines (one object per line, as
structured loggers, container runtimes and cloud log exports write them), takes the same fields from keys
of the object (``LineFormat.from_json``). A JSON line that does not parse, is not an object, has no
content or holds an object where a value belongs is quarantined as ``no_format_match`` with the reason in
words; ``json.loads`` limits are part of that (nesting bombs, over-long integers), under the same size limit.
Escapes that decode to what a raw line may not hold are quarantined as the raw bytes would be: a control
character as ``binary``, a lone UTF-16 surrogate (unwritable as UTF-8) as ``bad_encoding``.

Timestamps are naive ``datetime`` values on the log's own clock; a stamp with a UTC offset (``%z``, ISO
8601) becomes naive UTC. The Thunderbird text stamp has no year, so that format uses its epoch column
instead (naive UTC). A ``strptime`` pattern without a year (classic syslog's ``%b %d %H:%M:%S``) is parsed
in a leap year, so ``Feb 29`` parses; the parse stage then moves each stamp to the year that puts it
nearest its partition's day, so a session crossing midnight or New Year's Eve keeps its order and closes
when it ends. A format with a ``timezone`` (an IANA name) says that its stamps without an offset are
wall-clock time there: the parse stage turns them into naive UTC, so a daylight-saving change neither opens
an hour's gap nor runs an hour twice (all in :mod:`krone_jobs.timestamps`).

A format also names the Drain settings a new source of it starts mining with (``LineFormat.miner``): how
templates should be grouped depends on what the content looks like (see ``THUNDERBIRD``), and how its lines
make sessions (``LineFormat.session``: an id in the content, or a node's burst of activity).

Formats of one's own logs come from a TOML file named by ``KRONE_FORMATS_FILE`` (:func:`load_formats_file`);
:func:`get_format` finds them by name after the built-in ones, so the CLI and the DAGs take them like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from functools import lru_cache
from operator import itemgetter
from typing import Literal, NamedTuple, Protocol

from krone_jobs.logfiles import DEFAULT_MAX_LINE_BYTES, QUARANTINE_SAMPLE_BYTES, OversizedLine
from krone_jobs.templates import MinerSettings
from krone_jobs.timestamps import (
    EPOCH,
    TimestampParser,
    YearlessStrptime,
    bgl_ts,
    epoch_ts,
    hdfs_ts,
    timestamp_parser,
    zone_of,
)

_FIELD_ORDER = ("timestamp", "level", "component", "node", "content", "label", "session")
_FIELDS = frozenset(_FIELD_ORDER)
_CONTENT = _FIELD_ORDER.index("content")
_COMPONENT = _FIELD_ORDER.index("component")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f]")
_CONTROL_BYTES = bytes([*range(0x00, 0x09), *range(0x0A, 0x1B), *range(0x1C, 0x20), 0x7F])
_C1 = re.compile(rb"[\x80-\x9f]")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
# what a JSON escape can spell in a decoded string but a raw line may not hold: _CONTROL_BYTES as characters
# and lone UTF-16 surrogates (``"\ud83d"`` from a logger that cut an emoji in half), which no UTF-8 writer takes
_UNSAFE_TEXT = re.compile(f"[{re.escape(_CONTROL_BYTES.decode('latin-1'))}\ud800-\udfff]")
_LINE_BREAK = re.compile("[\r\n]")
_MAX_NON_ASCII_SHARE = 0.3


class QuarantineReason(StrEnum):
    """Why a line did not become a :class:`ParsedLine` (stored as plain strings)."""

    EMPTY = "empty"
    OVERSIZED = "oversized"
    BINARY = "binary"
    BAD_ENCODING = "bad_encoding"
    NO_FORMAT_MATCH = "no_format_match"
    BAD_TIMESTAMP = "bad_timestamp"
    CONTINUATION = "continuation"
    """Not an event: a line of a multi-line record (a stack trace under its log line), by the format's
    ``continuation`` pattern. Kept with its raw bytes; not counted against the quarantine-ratio bound."""


class ParsedLine(NamedTuple):
    """Header fields and content of one line; ``None`` where the format has no such field. ``session`` is
    the line's own session id, for formats that carry one (``session = "field"``)."""

    timestamp: datetime | None
    level: str | None
    component: str | None
    node: str | None
    content: str
    label: str | None = None
    encoding: Literal["utf-8", "latin-1"] = "utf-8"
    session: str | None = None
    offset: bool = False
    """Whether the stamp carried its UTC offset (it is then UTC already, whatever the format's ``timezone``)."""

    @property
    def is_alert(self) -> bool | None:
        """Loghub alert label: ``-`` is normal, anything else an alert; ``None`` if the format has none."""
        return None if self.label is None else self.label != "-"


class Quarantined(NamedTuple):
    """A line that could not be parsed. ``raw`` is the whole line unless ``truncated`` is set."""

    reason: QuarantineReason
    message: str
    raw: bytes
    truncated: bool = False


SessionKind = Literal["block_id", "id_pattern", "node_window", "field"]
_SESSION_KINDS = ("block_id", "id_pattern", "node_window", "field")


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """How a format's lines make sessions: ``block_id`` (HDFS block ids), ``id_pattern`` (every match of
    ``pattern`` in the content, group 1 if it has one), ``node_window`` (a node's lines until a gap of
    more than ``gap_seconds``) or ``field`` (the line's own ``session`` field: a request or trace id of a
    JSON log, a ``session`` group of a regex). A spec, not a rule, because a node-window rule is stateful:
    :meth:`make` gives each run a fresh one."""

    kind: SessionKind = "node_window"
    pattern: str | None = None
    gap_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.kind not in _SESSION_KINDS:
            raise ValueError(f"session kind {self.kind!r}: use one of {', '.join(_SESSION_KINDS)}")
        if (self.kind == "id_pattern") != (self.pattern is not None):
            raise ValueError("a session pattern goes with, and only with, session kind id_pattern")
        if self.pattern is not None:
            re.compile(self.pattern)  # a bad pattern fails here, not on an executor
        if self.gap_seconds < 1:
            raise ValueError("gap_seconds must be at least 1")

    def make(self) -> SessionKeyRule:
        if self.kind == "block_id":
            return BlockIdSessionKey()
        if self.kind == "id_pattern":
            return IdPatternSessionKey(self.pattern or "")
        if self.kind == "field":
            return FieldSessionKey()
        return NodeWindowSessionKey(self.gap_seconds)


@dataclass(frozen=True, slots=True)
class LineFormat:
    """A line layout: a regex with named groups among ``_FIELDS`` (``content`` required), or for JSON lines
    (``regex`` ``None``) ``json_fields``: which key of each line's object holds each of those fields. A
    key is looked up as it is first (flattened names such as ECS ``log.level``), then as a dotted path
    into nested objects (``kubernetes.pod_name``). ``tag_content`` (JSON only) writes the component in
    front of the message, ``<component>: <message>``, as a syslog tag or the ``krone`` text format keep it:
    Drain then keeps the components' messages apart and the offline hierarchy takes the component as the
    entity (``krone demo`` written as JSON lines: F1 0.903 without the tag, 0.962 with it and Drain depth
    6 as the ``krone`` format has, the text demo's figure; 0.952 at depth 4).

    ``continuation`` matches the lines that continue a multi-line record (``^\\s`` for indented stack-trace
    frames): such a line that does not match the format is set aside as ``continuation`` instead of
    ``no_format_match``; the record's event is its first line. (The parse job checks that a run of them has
    a record above it: ``jobs.parse.orphan_continuations``.)

    ``parse_timestamp`` turns the ``timestamp`` text into a datetime; it must raise ``ValueError`` (or
    ``OverflowError``) on bad input so the line is quarantined as ``bad_timestamp``. ``miner`` is what the
    parse job mines a source's first day with; from then on the settings travel in the source's miner state.
    ``session`` says which lines belong together. ``timezone`` (an IANA name such as ``Europe/Berlin``): the
    zone whose wall-clock time the stamps without an offset are (``None``: take them as they are).
    """

    name: str
    regex: re.Pattern[str] | None
    parse_timestamp: TimestampParser | None = None
    miner: MinerSettings = MinerSettings()
    session: SessionSpec = SessionSpec()
    json_fields: tuple[tuple[str, str], ...] = ()
    tag_content: bool = False
    continuation: re.Pattern[str] | None = None
    timezone: str | None = None
    groups: frozenset[str] = field(init=False)
    _pick: itemgetter[tuple[str | None, ...]] | None = field(init=False, repr=False, compare=False)
    _paths: tuple[tuple[str, tuple[str, ...]] | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.regex is None) == (not self.json_fields):
            raise ValueError(f"format {self.name!r}: give a regex or JSON fields, one of the two")
        what = "group" if self.regex is not None else "field"
        if self.regex is not None:
            groups = frozenset(self.regex.groupindex)
        else:
            names = [name for name, _ in self.json_fields]
            if len(set(names)) != len(names):
                raise ValueError(f"format {self.name!r}: a field is mapped twice")
            bad = [name for name, path in self.json_fields if not isinstance(path, str) or not path]
            if bad:
                raise ValueError(f"format {self.name!r}: field(s) {bad} need a non-empty key")
            groups = frozenset(names)
        unknown = groups - _FIELDS
        if unknown:
            kind = "named groups" if self.regex is not None else "fields"
            raise ValueError(f"format {self.name!r}: unknown {kind} {sorted(unknown)}, allowed: {_FIELD_ORDER}")
        if "content" not in groups:
            raise ValueError(f"format {self.name!r}: a 'content' {what} is required")
        if ("timestamp" in groups) != (self.parse_timestamp is not None):
            raise ValueError(f"format {self.name!r}: give a timestamp {what} and a timestamp parser together")
        if self.session.kind == "field" and "session" not in groups:
            raise ValueError(f"format {self.name!r}: session kind 'field' needs a 'session' {what}")
        if self.tag_content and (self.regex is not None or "component" not in groups):
            raise ValueError(f"format {self.name!r}: tag_content needs JSON fields with a 'component' "
                             "(a regex keeps the tag by capturing it in the content)")
        if self.timezone is not None:
            if "timestamp" not in groups:
                raise ValueError(f"format {self.name!r}: a timezone needs a timestamp {what}")
            zone_of(self.timezone)
        object.__setattr__(self, "groups", groups)
        if self.regex is not None:
            # m.groups() + (None,): an absent field reads the trailing None; one C call picks all of them
            missing = self.regex.groups
            slots = [self.regex.groupindex[name] - 1 if name in groups else missing for name in _FIELD_ORDER]
            object.__setattr__(self, "_pick", itemgetter(*slots))
            object.__setattr__(self, "_paths", ())
        else:
            keys = dict(self.json_fields)
            object.__setattr__(self, "_pick", None)
            object.__setattr__(self, "_paths", tuple(
                (keys[name], tuple(keys[name].split("."))) if name in keys else None for name in _FIELD_ORDER))

    @property
    def yearless(self) -> bool:
        """Whether the stamps carry no year (:class:`YearlessStrptime`): the parse stage then gives each the
        year that puts it nearest its partition's day (:func:`~krone_jobs.timestamps.nearest_year`)."""
        return isinstance(self.parse_timestamp, YearlessStrptime)

    @classmethod
    def from_regex(
        cls, pattern: str, *, timestamp_format: str | TimestampParser | None = None, name: str = "custom",
        miner: MinerSettings | None = None, session: SessionSpec | None = None, continuation: str | None = None,
        timezone: str | None = None,
    ) -> LineFormat:
        """User-defined format; ``timestamp_format`` is a ``strptime`` pattern, one of
        :data:`TIMESTAMP_KEYWORDS` or a callable, ``miner`` the Drain settings a new source of this format
        starts with (default :class:`MinerSettings`), ``session`` its session rule (default: node windows),
        ``continuation`` the pattern of a multi-line record's further lines, ``timezone`` the zone of stamps
        without an offset (both: see the class docstring).

        The regex runs on at most ``max_bytes`` of text per line; keep it free of nested quantifiers.
        """
        return cls(name, re.compile(pattern), timestamp_parser(timestamp_format), miner or MinerSettings(),
                   session or SessionSpec(), continuation=_compiled(continuation), timezone=timezone)

    @classmethod
    def from_json(
        cls, fields: Mapping[str, str], *, timestamp_format: str | TimestampParser | None = None,
        name: str = "custom", miner: MinerSettings | None = None, session: SessionSpec | None = None,
        tag_content: bool = False, continuation: str | None = None, timezone: str | None = None,
    ) -> LineFormat:
        """JSON lines (one object per line); ``fields`` maps our field names (``content`` required) to the
        keys that hold them, e.g. ``{"timestamp": "@timestamp", "content": "message", "session": "trace.id"}``.
        ``tag_content``: see the class docstring. Other arguments as :meth:`from_regex`."""
        return cls(name, None, timestamp_parser(timestamp_format), miner or MinerSettings(),
                   session or SessionSpec(), tuple(fields.items()), tag_content, _compiled(continuation), timezone)


def _compiled(pattern: str | None) -> re.Pattern[str] | None:
    return re.compile(pattern) if pattern is not None else None


HDFS = LineFormat(
    "hdfs",
    re.compile(r"^(?P<timestamp>\d{6} \d{6}) \d+ (?P<level>[A-Z]+) (?P<component>[^\s:]+): (?P<content>.*)$"),
    hdfs_ts,
    session=SessionSpec("block_id"),
)
BGL = LineFormat(
    "bgl",
    re.compile(
        r"^(?P<label>\S+) \d+ \d{4}\.\d{2}\.\d{2} (?P<node>\S+) "
        r"(?P<timestamp>\d{4}-\d{2}-\d{2}-\d{2}\.\d{2}\.\d{2}\.\d{6}) \S+ \S+ "
        r"(?P<component>\S+) (?P<level>\S+)(?: (?P<content>.*))?$"
    ),
    bgl_ts,
)
# Thunderbird's content keeps the syslog tag (``sshd[2915]: ...``): the program is part of what happened, the
# KRONE authors' Thunderbird templates start with it, and without it Drain files lines of different programs
# under their free-text first words. ``component`` is still extracted (the tag without its pid).
# Drain depth 3: no prefix-tree level below the token count, so the tag is one token of the similarity test
# rather than a branch. A tag with a pid is a wildcard branch anyway (the masked pid routes it there); a tag
# without one would keep one event apart per tag: a kernel boot line comes with ``kernel:`` or ``CPU0:``, and
# the initscripts' ``<service>: <daemon> startup succeeded`` is one message whatever the service.
THUNDERBIRD = LineFormat(
    "thunderbird",
    re.compile(
        r"^(?P<label>\S+) (?P<timestamp>\d{1,12}) \d{4}\.\d{2}\.\d{2} (?P<node>\S+) [A-Z][a-z]{2} +\d{1,2} "
        r"\d{2}:\d{2}:\d{2} \S+ (?P<content>(?:(?P<component>[^\s\[]{1,128}?)(?:\[\d+\])?: )?.*)$"
    ),
    epoch_ts,
    MinerSettings(depth=3),
)
KRONE_SESSION_PATTERN = r"\b(job_\d+)\b"  # every line of a synthetic job names it
# ``<timestamp> <LEVEL> [<node>] <component>: <message>``. As with Thunderbird's syslog tag, the content keeps
# the component: it names the subsystem the message is about, so Drain keeps the components' messages apart
# and the offline hierarchy takes it as the entity (the tag rule), instead of guessing one from free text.
# Drain depth 6: a line is routed by its first four tokens (tag, job id, verb, the word after it). The tag
# is a token every message of a component shares, so with the default depth 4 same-length messages of one
# component meet in one leaf, where it lifts their similarity over ``sim_th`` and unlike ones merge ("open
# blob <path> on ..." with "close blob <path> after ..."). On the generator's 122k demo lines: 35 templates,
# none mixing two of its template keys (depth 4: 39 templates, 8,012 lines under a template of another key).
KRONE = LineFormat(
    "krone",
    re.compile(
        r"^(?P<timestamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}) (?P<level>[A-Z]+) "
        r"\[(?P<node>[\w.-]+)\] (?P<content>(?:(?P<component>[\w.$-]{1,128}): )?.*)$"
    ),
    # Same result as strptime("%Y-%m-%d %H:%M:%S.%f") for what the regex admits, ~30x faster.
    datetime.fromisoformat,
    MinerSettings(depth=6),
    session=SessionSpec("id_pattern", KRONE_SESSION_PATTERN),
)

# The generator's jobs as JSON lines (``krone generate --layout json``): ECS-style keys, nested and flattened,
# the job id in a field of its own. ``tag_content`` and depth 6 give exactly the ``krone`` format's contents,
# so both layouts of a day make the same templates and sessions (tested).
KRONE_JSON = LineFormat.from_json(
    {"timestamp": "@timestamp", "level": "log.level", "node": "host.name", "component": "log.logger",
     "content": "message", "session": "labels.job"},
    timestamp_format="iso8601", name="krone-json", miner=MinerSettings(depth=6), session=SessionSpec("field"),
    tag_content=True,
)

FORMATS: dict[str, LineFormat] = {f.name: f for f in (HDFS, BGL, THUNDERBIRD, KRONE, KRONE_JSON)}


_FORMAT_KEYS = {"regex", "fields", "tag_content", "continuation", "timestamp_format", "timezone", "session",
                "session_pattern", "session_gap_seconds", "sim_th", "depth", "max_children"}
_FORMAT_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def load_formats_file(path: str | os.PathLike[str]) -> dict[str, LineFormat]:
    r"""Formats of one's own logs from a TOML file, one table per format (lower-case name)::

        [myapp]
        regex = '^(?P<timestamp>\S+ \S+) (?P<level>[A-Z]+) (?P<component>\S+): (?P<content>.*)$'
        timestamp_format = "%Y-%m-%d %H:%M:%S,%f"   # strptime, "epoch", "epoch_ms", "iso8601"; none: no timestamp
        timezone = "Europe/Berlin"                    # optional: stamps without an offset are local time there
        session = "id_pattern"                        # or node_window (default), block_id, field
        session_pattern = '\b(job_\d+)\b'
        continuation = '^\s'                           # optional: further lines of a record (stack traces)
        # optional: session_gap_seconds = 60, and Drain's sim_th, depth, max_children

        [orders]                                      # JSON lines: `fields` instead of `regex`
        fields = { timestamp = "@timestamp", level = "log.level", content = "message", session = "trace.id" }
        timestamp_format = "iso8601"
        session = "field"                             # the session is the line's own `session` field
        # optional: tag_content = true writes "<component>: <message>" as the content (see LineFormat)

    Every table is checked here (names, keys, regex groups or fields, session rule, Drain settings), so a
    typo fails the run at its start with the file and format named, not on an executor. Raises the first
    table's error; :func:`read_formats_file` keeps the others.
    """
    formats, broken = read_formats_file(path)
    if broken:
        raise ValueError(next(iter(broken.values())))
    return formats


def read_formats_file(path: str | os.PathLike[str]) -> tuple[dict[str, LineFormat], dict[str, str]]:
    """The formats of the file that are sound, and the error of each that is not (by name), as
    :func:`load_formats_file` checks them: one source's typo must not stop the nights of the other sources
    whose formats share the file (a file TOML cannot read is an error of all of them)."""
    with open(path, "rb") as fh:
        tables = tomllib.load(fh)
    formats: dict[str, LineFormat] = {}
    broken: dict[str, str] = {}
    for name, spec in tables.items():
        where = f"{os.fspath(path)}: format [{name}]"
        try:
            if not isinstance(spec, dict):
                raise ValueError("must be a table")
            if not _FORMAT_NAME.fullmatch(name) or name in FORMATS:
                raise ValueError(f"name must match {_FORMAT_NAME.pattern} and not be a built-in ({sorted(FORMATS)})")
            unknown = set(spec) - _FORMAT_KEYS
            if unknown or ("regex" in spec) == ("fields" in spec):
                raise ValueError(f"needs 'regex' or 'fields' (one of them); unknown keys {sorted(unknown)}; "
                                 f"allowed {sorted(_FORMAT_KEYS)}")
            miner = MinerSettings(**{k: spec[k] for k in ("sim_th", "depth", "max_children") if k in spec})
            session = SessionSpec(spec.get("session", "node_window"), spec.get("session_pattern"),
                                  float(spec.get("session_gap_seconds", 60.0)))
            common = {"timestamp_format": spec.get("timestamp_format"), "name": name, "miner": miner,
                      "session": session, "continuation": spec.get("continuation"), "timezone": spec.get("timezone")}
            if "regex" in spec:
                if "tag_content" in spec:
                    raise ValueError("tag_content is for JSON 'fields'; a regex keeps the tag in its content group")
                formats[name] = LineFormat.from_regex(spec["regex"], **common)
            elif isinstance(spec["fields"], dict):
                if not isinstance(spec.get("tag_content", False), bool):
                    raise ValueError("tag_content must be true or false")
                formats[name] = LineFormat.from_json(spec["fields"], tag_content=spec.get("tag_content", False),
                                                     **common)
            else:
                raise ValueError("'fields' must be a table of field = key, e.g. { content = \"message\" }")
            if session.kind == "node_window" and not {"node", "timestamp"} <= formats[name].groups:
                raise ValueError("session 'node_window' (the default) needs a 'node' and a 'timestamp': without them "
                                 "every line is quarantined with no session key. For the log of one host, capture its "
                                 "name as the node, or choose session 'id_pattern' or 'field'")
        except (ValueError, TypeError, re.error) as exc:
            formats.pop(name, None)
            broken[name] = f"{where}: {exc}"
    return formats, broken


@lru_cache(maxsize=4)
def _formats_file(path: str, mtime_ns: int) -> tuple[dict[str, LineFormat], dict[str, str]]:
    return read_formats_file(path)


def user_formats() -> tuple[dict[str, LineFormat], dict[str, str]]:
    """The formats of ``KRONE_FORMATS_FILE`` and the errors of its broken ones (none when it is unset);
    re-read when the file changes."""
    from krone_jobs.config import settings

    path = settings().formats_file
    if path is None:
        return {}, {}
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise FileNotFoundError(f"KRONE_FORMATS_FILE={path}: {exc.strerror}") from None
    return _formats_file(str(path), mtime)


def get_format(name: str) -> LineFormat:
    """Format by case-insensitive name: a built-in one (``hdfs``, ``bgl``, ``thunderbird``, ``krone``),
    else one of ``KRONE_FORMATS_FILE`` (a broken one raises its own error, the others still load)."""
    key = name.lower()
    if key in FORMATS:
        return FORMATS[key]
    user, broken = user_formats()
    if key in user:
        return user[key]
    if key in broken:
        raise ValueError(broken[key])
    raise KeyError(f"unknown log format {name!r}; known: {sorted(FORMATS) + sorted(user)}"
                   + (f"; broken: {sorted(broken)}" if broken else ""))


def _content_end(raw: bytes) -> int:
    end = len(raw)
    while end and raw[end - 1] in b"\r\n":
        end -= 1
    return end


def _oversized(head: bytes, size: int, max_bytes: int) -> Quarantined:
    keep = head[:QUARANTINE_SAMPLE_BYTES]
    return Quarantined(
        QuarantineReason.OVERSIZED,
        f"line of {size} bytes exceeds max_bytes={max_bytes}; raw keeps its first {len(keep)} bytes",
        keep,
        truncated=True,
    )


def _decode(line: bytes) -> tuple[str, Literal["utf-8", "latin-1"]] | None:
    try:
        return line.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if _C1.search(line) or len(_NON_ASCII.findall(line)) > _MAX_NON_ASCII_SHARE * len(line):
        return None
    return line.decode("latin-1"), "latin-1"


def parse_line(
    raw: bytes | OversizedLine, fmt: LineFormat, *, max_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> ParsedLine | Quarantined:
    """Parse one raw line (trailing CR/LF allowed). Never raises on bad input; see the module docstring."""
    if isinstance(raw, OversizedLine):
        return _oversized(raw.head, raw.size, max_bytes)
    end = len(raw)
    if end > max_bytes:  # size check before any copy or regex: 10 MB lines cost nothing
        end = _content_end(raw)
        if end > max_bytes:
            return _oversized(raw, end, max_bytes)
    line = raw.rstrip(b"\r\n")
    if not line or line.isspace():
        return Quarantined(QuarantineReason.EMPTY, "empty or whitespace-only line", raw)
    if len(line.translate(None, _CONTROL_BYTES)) != len(line):  # fast test; the regex only locates it
        bad = _CONTROL.search(line)
        assert bad is not None
        return Quarantined(
            QuarantineReason.BINARY, f"control byte 0x{bad.group()[0]:02x} at offset {bad.start()}", raw
        )
    decoded = _decode(line)
    if decoded is None:
        return Quarantined(QuarantineReason.BAD_ENCODING, "not UTF-8 and does not look like latin-1 text", raw)
    text, encoding = decoded
    if fmt._pick is not None:
        m = fmt.regex.match(text)  # type: ignore[union-attr]
        if m is None:
            return _unmatched(text, fmt, f"line does not match format {fmt.name!r}", raw)
        ts_text, level, component, node, content, label, session = fmt._pick(m.groups() + (None,))
    else:
        values = _json_fields(text, fmt)
        if isinstance(values, str):
            return _unmatched(text, fmt, f"{values} (format {fmt.name!r})", raw)
        unsafe = _unsafe_text(values, raw)
        if unsafe is not None:
            return unsafe
        ts_text, level, component, node, content, label, session = values
    ts: datetime | None = None
    if fmt.parse_timestamp is not None:
        if ts_text is None:
            return Quarantined(QuarantineReason.BAD_TIMESTAMP, "no timestamp", raw)
        try:
            ts = fmt.parse_timestamp(ts_text)
            if ts.tzinfo is not None:
                ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
                return ParsedLine(ts, level, component, node, content or "", label, encoding, session, True)
        except (ValueError, OverflowError) as exc:
            return Quarantined(QuarantineReason.BAD_TIMESTAMP, f"timestamp {ts_text[:100]!r}: {exc}", raw)
    return ParsedLine(ts, level, component, node, content or "", label, encoding, session)


def _unmatched(text: str, fmt: LineFormat, why: str, raw: bytes) -> Quarantined:
    if fmt.continuation is not None and fmt.continuation.match(text):
        return Quarantined(QuarantineReason.CONTINUATION, "continues the record of an earlier line", raw)
    return Quarantined(QuarantineReason.NO_FORMAT_MATCH, why, raw)


_JSON_KINDS = {dict: "object", list: "array"}


def _json_fields(text: str, fmt: LineFormat) -> tuple[str | None, ...] | str:
    """The format's fields of one JSON line (``_FIELD_ORDER``), or why it has none, in words.

    Strings are taken as they are (of the content, its first line), numbers and booleans as JSON writes
    them; a missing key or ``null`` is ``None``. An object or array where a value belongs is refused rather
    than flattened: it means the key points at the wrong place, which a quarantine count shows at once."""
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, nesting bombs
        return f"not JSON ({str(exc)[:120]})"
    if not isinstance(record, dict):
        return f"a JSON {_JSON_KINDS.get(type(record), 'value')}, not an object"
    out: list[str | None] = []
    for slot in fmt._paths:
        if slot is None:
            out.append(None)
            continue
        key, path = slot
        value = record.get(key) if key in record else _walk(record, path)
        if value is None or isinstance(value, str):
            out.append(value)
        elif isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, (int, float)):
            out.append(repr(value))
        else:
            return f"key {key!r} holds a JSON {_JSON_KINDS[type(value)]}, not a value"
    content = out[_CONTENT]
    if content is None:
        return f"no content: key {fmt._paths[_CONTENT][0]!r} is missing or null"  # type: ignore[index]
    # Docker's json-file driver keeps the line's own line break; a message of several lines (an exception
    # logged with its stack trace) is its first line, as a multi-line record of a text log is
    content = _LINE_BREAK.split(content.strip("\r\n"), 1)[0]
    tag = out[_COMPONENT]
    out[_CONTENT] = f"{tag}: {content}" if fmt.tag_content and tag else content
    return tuple(out)


def _unsafe_text(values: tuple[str | None, ...], raw: bytes) -> Quarantined | None:
    """A JSON line whose escapes decode to a control character other than tab and ESC (``\\u0000``:
    PostgreSQL text refuses it) or to a lone surrogate (not encodable: the Parquet write would fail the whole
    stage) is quarantined, as such characters in a raw line are."""
    for name, value in zip(_FIELD_ORDER, values):
        bad = _UNSAFE_TEXT.search(value) if value is not None else None
        if bad is not None:
            code = ord(bad.group())
            if 0xD800 <= code <= 0xDFFF:
                return Quarantined(QuarantineReason.BAD_ENCODING,
                                   f"escaped lone surrogate U+{code:04X} in the {name} field", raw)
            return Quarantined(QuarantineReason.BINARY, f"escaped control character U+{code:04X} in the {name} "
                               "field", raw)
    return None


def _walk(record: dict[str, object], path: tuple[str, ...]) -> object:
    value: object = record
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


# --- session keys -------------------------------------------------------------------------------------

MAX_SESSION_KEY_CHARS = 200
"""Longest session key kept as it is. Keys come from log text (a block id of 3,000 digits, a runaway trace
id), and the key becomes the report's ``session_id``, part of a primary key: PostgreSQL refuses an index
entry over 2,704 bytes, so one such line would fail the whole day's report write. Longer keys are
shortened by :func:`bounded_session_key`."""


def bounded_session_key(key: str) -> str:
    """``key`` itself, or when longer than :data:`MAX_SESSION_KEY_CHARS` its head, ``~`` and a 128-bit
    BLAKE2b digest of the whole key: still recognisable, still one session per distinct key, and at most
    ``MAX_SESSION_KEY_CHARS`` characters (800 bytes of UTF-8)."""
    if len(key) <= MAX_SESSION_KEY_CHARS:
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{key[: MAX_SESSION_KEY_CHARS - len(digest) - 1]}~{digest}"



class SessionKeyRule(Protocol):
    """Maps a parsed line to the session keys it belongs to (zero, one or several)."""

    def keys(self, line: ParsedLine) -> tuple[str, ...]: ...


class IdPatternSessionKey:
    """Every distinct id found in the content (group 1 if the pattern has a group), in order of appearance."""

    def __init__(self, pattern: str) -> None:
        self.regex = re.compile(pattern)
        self._group = 1 if self.regex.groups else 0

    def keys(self, line: ParsedLine) -> tuple[str, ...]:
        found = [m.group(self._group) for m in self.regex.finditer(line.content)]
        return tuple(dict.fromkeys(found))


class FieldSessionKey:
    """The line's own session id (``ParsedLine.session``): a request or trace id the log writes per line."""

    def keys(self, line: ParsedLine) -> tuple[str, ...]:
        return (line.session,) if line.session else ()


class BlockIdSessionKey(IdPatternSessionKey):
    """HDFS: one session per block id; a line naming two blocks belongs to both sessions."""

    def __init__(self) -> None:
        super().__init__(r"(blk_-?\d+)")


def _epoch_seconds(ts: datetime) -> float:
    if ts.tzinfo is not None:
        return ts.timestamp()
    return (ts - EPOCH).total_seconds()


class NodeWindowSessionKey:
    """Node-based systems: a session is one node's burst of activity.

    A gap of more than ``gap_seconds`` since the node's previous line starts a new session, keyed
    ``<node>#<epoch seconds of the window start>``. Input must be time-ordered per node; a line earlier than
    the node's latest one joins the current window (it never opens a new one), so the keys stay
    deterministic for a given input order. ``gap_seconds >= 1`` keeps the whole-second keys unique.
    The state is a plain dict so a day's run can hand open windows to the next (sessions cross midnight).
    """

    def __init__(self, gap_seconds: float = 60.0, state: dict[str, tuple[float, float]] | None = None) -> None:
        if gap_seconds < 1:
            raise ValueError("gap_seconds must be at least 1")
        self.gap_seconds = gap_seconds
        self.state: dict[str, tuple[float, float]] = dict(state or {})  # node -> (window start, latest), epoch s

    def assign(self, node: str, ts: datetime) -> str:
        """Session key of a line from ``node`` at ``ts``; updates the node's window."""
        t = _epoch_seconds(ts)
        current = self.state.get(node)
        if current is None or t - current[1] > self.gap_seconds:
            start, latest = t, t
        else:
            start, latest = current[0], max(current[1], t)
        self.state[node] = (start, latest)
        return f"{node}#{int(start // 1)}"

    def keys(self, line: ParsedLine) -> tuple[str, ...]:
        if line.node is None or line.timestamp is None:
            return ()
        return (self.assign(line.node, line.timestamp),)


def default_session_rule(format_name: str) -> SessionKeyRule:
    """A fresh session rule for a format by name (fresh because the node-window rule is stateful)."""
    return get_format(format_name).session.make()
