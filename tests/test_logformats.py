"""Line formats, bad-input quarantine, session keys and the bounded file reader."""

from __future__ import annotations

import csv
import pickle
import random
import re
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from krone_jobs.logfiles import DEFAULT_MAX_LINE_BYTES, QUARANTINE_SAMPLE_BYTES, OversizedLine, iter_lines
from krone_jobs.logformats import (
    BGL,
    HDFS,
    KRONE,
    KRONE_JSON,
    MAX_SESSION_KEY_CHARS,
    THUNDERBIRD,
    BlockIdSessionKey,
    FieldSessionKey,
    IdPatternSessionKey,
    LineFormat,
    NodeWindowSessionKey,
    ParsedLine,
    Quarantined,
    QuarantineReason,
    SessionSpec,
    bounded_session_key,
    default_session_rule,
    get_format,
    load_formats_file,
    parse_line,
)
from krone_jobs.synthetic import generate_sessions, json_line
from krone_jobs.templates import MinerSettings

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub_2k"

HDFS_LINE = (
    b"081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1 for block "
    b"blk_38865049064139660 terminating"
)
KRONE_LINE = b"2024-03-01 23:59:58.123 INFO [node-7] scheduler.Worker: job_42 started step 3 of job_43"


def parsed(raw: bytes, fmt: LineFormat = HDFS, **kwargs: int) -> ParsedLine:
    result = parse_line(raw, fmt, **kwargs)
    assert isinstance(result, ParsedLine), result
    return result


def quarantined(raw: bytes | OversizedLine, fmt: LineFormat = HDFS, **kwargs: int) -> Quarantined:
    result = parse_line(raw, fmt, **kwargs)
    assert isinstance(result, Quarantined), result
    return result


# --- built-in formats ---------------------------------------------------------------------------------


def test_hdfs_line() -> None:
    line = parsed(HDFS_LINE)
    assert line.timestamp == datetime(2008, 11, 9, 20, 36, 15)
    assert (line.level, line.component, line.node, line.label) == ("INFO", "dfs.DataNode$PacketResponder", None, None)
    assert line.content == "PacketResponder 1 for block blk_38865049064139660 terminating"
    assert line.is_alert is None
    warn = parsed(
        b"081109 214043 2561 WARN dfs.DataNode$DataXceiver: 10.251.30.85:50010:Got exception while serving "
        b"blk_-2918118818249673980 to /10.251.90.64:"
    )
    assert warn.level == "WARN" and warn.content.startswith("10.251.30.85:50010:Got exception")


def test_bgl_lines_keep_the_alert_label() -> None:
    normal = parsed(
        b"- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 "
        b"RAS KERNEL INFO instruction cache parity error corrected",
        BGL,
    )
    assert normal.timestamp == datetime(2005, 6, 3, 15, 42, 50, 675872)
    assert (normal.node, normal.component, normal.level) == ("R02-M1-N0-C:J12-U11", "KERNEL", "INFO")
    assert normal.content == "instruction cache parity error corrected"
    assert (normal.label, normal.is_alert) == ("-", False)
    alert = parsed(
        b"APPREAD 1117869872 2005.06.04 R04-M1-N4-I:J18-U11 2005-06-04-00.24.32.432192 R04-M1-N4-I:J18-U11 "
        b"RAS APP FATAL ciod: failed to read message prefix on control stream (CioStream socket to "
        b"172.16.96.116:33569",
        BGL,
    )
    assert (alert.label, alert.is_alert, alert.level, alert.component) == ("APPREAD", True, "FATAL", "APP")
    assert alert.content.startswith("ciod: failed to read")


def test_thunderbird_lines() -> None:
    cron = parsed(
        b"- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 crond(pam_unix)[2915]: "
        b"session closed for user root",
        THUNDERBIRD,
    )
    assert cron.timestamp == datetime(2005, 11, 9, 20, 1, 1)  # epoch column, naive UTC
    assert (cron.node, cron.component, cron.level, cron.label) == ("dn228", "crond(pam_unix)", None, "-")
    # the content keeps the syslog tag, as the KRONE authors' Thunderbird templates do
    assert cron.content == "crond(pam_unix)[2915]: session closed for user root"
    no_pid = parsed(
        b"- 1131566501 2005.11.09 aadmin1 Nov 9 12:01:41 src@aadmin1 dhcpd: DHCPDISCOVER from "
        b"00:11:43:e3:ba:c3 via eth1",
        THUNDERBIRD,
    )
    assert (no_pid.component, no_pid.content) == ("dhcpd", "dhcpd: DHCPDISCOVER from 00:11:43:e3:ba:c3 via eth1")
    no_component = parsed(
        b"- 1131567043 2005.11.09 tbird-admin1 Nov 9 12:10:43 local@tbird-admin1 scsi0 : LSI Logic MegaRAID driver",
        THUNDERBIRD,
    )
    assert (no_component.component, no_component.content) == (None, "scsi0 : LSI Logic MegaRAID driver")


def test_krone_lines_keep_the_component_tag_in_the_content() -> None:
    line = parsed(KRONE_LINE, KRONE)
    assert line.timestamp == datetime.strptime("2024-03-01 23:59:58.123", "%Y-%m-%d %H:%M:%S.%f")
    assert (line.level, line.component, line.node) == ("INFO", "scheduler.Worker", "node-7")
    # as a syslog tag: the component is part of what happened (Drain and the offline hierarchy see it)
    assert line.content == "scheduler.Worker: job_42 started step 3 of job_43"
    untagged = parsed(b"2024-03-01 23:59:58.123 WARN [node-7] job_42 lost its lease", KRONE)
    assert (untagged.component, untagged.content) == (None, "job_42 lost its lease")
    assert KRONE.miner.depth == 6  # the tag takes one level of Drain's prefix tree


def test_registry() -> None:
    assert get_format("HDFS") is HDFS and get_format("thunderbird") is THUNDERBIRD
    with pytest.raises(KeyError, match="known"):
        get_format("syslog")


def test_user_defined_format() -> None:
    fmt = LineFormat.from_regex(
        r"^(?P<timestamp>\S+ \S+) (?P<level>\w+) (?P<content>.*)$", timestamp_format="%d/%m/%Y %H:%M", name="app"
    )
    line = parsed(b"31/12/2024 23:59 ERROR disk full", fmt)
    assert (line.timestamp, line.level, line.content) == (datetime(2024, 12, 31, 23, 59), "ERROR", "disk full")
    no_time = LineFormat.from_regex(r"^(?P<content>.+)$")
    assert parsed(b"anything", no_time).timestamp is None
    assert fmt.miner == no_time.miner == MinerSettings()
    coarse = LineFormat.from_regex(r"^(?P<content>.+)$", miner=MinerSettings(sim_th=0.3, depth=3))
    assert (coarse.miner.sim_th, coarse.miner.depth) == (0.3, 3)


@pytest.mark.parametrize(
    ("pattern", "timestamp_format", "error"),
    [
        (r"^(?P<msg>.*)$", None, "unknown named groups"),
        (r"^(?P<level>\w+)$", None, "content"),
        (r"^(?P<timestamp>\S+) (?P<content>.*)$", None, "timestamp"),
        (r"^(?P<content>.*)$", "%Y", "timestamp"),
    ],
)
def test_invalid_formats_are_rejected(pattern: str, timestamp_format: str | None, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        LineFormat.from_regex(pattern, timestamp_format=timestamp_format)


def test_timestamp_keywords_and_utc_offsets() -> None:
    def stamp(text: str, timestamp_format: str) -> datetime | None:
        fmt = LineFormat.from_regex(r"^(?P<timestamp>\S+) (?P<content>.*)$", timestamp_format=timestamp_format)
        return parsed(f"{text} x".encode(), fmt).timestamp

    assert stamp("1131566461", "epoch") == datetime(2005, 11, 9, 20, 1, 1)
    assert stamp("1131566461.25", "epoch") == datetime(2005, 11, 9, 20, 1, 1, 250000)
    assert stamp("1131566461250", "epoch_ms") == datetime(2005, 11, 9, 20, 1, 1, 250000)
    assert stamp("2026-11-20T13:04:05.123Z", "iso8601") == datetime(2026, 11, 20, 13, 4, 5, 123000)
    # a stamp with a UTC offset becomes naive UTC, whatever parsed it: rows of one source share one clock
    assert stamp("2026-11-20T13:04:05+02:00", "iso8601") == datetime(2026, 11, 20, 11, 4, 5)
    assert stamp("20261120T130405-0130", "%Y%m%dT%H%M%S%z") == datetime(2026, 11, 20, 14, 34, 5)


def test_a_pattern_without_a_year_parses_in_a_leap_year_and_moves_to_its_day() -> None:
    fmt = LineFormat.from_regex(r"^(?P<timestamp>\S+ +\S+ \S+) (?P<content>.*)$", timestamp_format="%b %d %H:%M:%S")
    assert fmt.yearless and not HDFS.yearless and not THUNDERBIRD.yearless
    assert parsed(b"Feb 29 10:00:00 x", fmt).timestamp == datetime(2000, 2, 29, 10)  # 1900 has no Feb 29


def test_an_absent_optional_timestamp_is_quarantined_not_raised() -> None:
    fmt = LineFormat.from_regex(r"^(?:(?P<timestamp>\d+) )?(?P<content>\D.*)$", timestamp_format="epoch")
    assert parsed(b"1131566461 up", fmt).timestamp == datetime(2005, 11, 9, 20, 1, 1)
    q = quarantined(b"up", fmt)
    assert q.reason is QuarantineReason.BAD_TIMESTAMP and q.message == "no timestamp"


def test_a_session_group_gives_field_sessions() -> None:
    fmt = LineFormat.from_regex(r"^\[(?P<session>[^\]]*)\] (?P<content>.*)$", session=SessionSpec("field"))
    rule = fmt.session.make()
    assert isinstance(rule, FieldSessionKey)
    assert rule.keys(parsed(b"[req-9] GET /orders 200", fmt)) == ("req-9",)
    assert rule.keys(parsed(b"[] GET /health 200", fmt)) == ()  # no id: quarantined as no_session_key
    with pytest.raises(ValueError, match="needs a 'session' group"):
        LineFormat.from_regex(r"^(?P<content>.*)$", session=SessionSpec("field"))


def test_continuation_lines_of_multi_line_records_are_set_aside_not_counted_as_bad() -> None:
    fmt = LineFormat.from_regex(r"^(?P<timestamp>\S+ \S+) (?P<level>[A-Z]+) (?P<component>\S+): (?P<content>.*)$",
                                timestamp_format="%Y-%m-%d %H:%M:%S,%f", continuation=r"^(?:\s|Caused by: )")
    assert parsed(b"2026-11-20 13:04:05,123 ERROR api.Orders: payment failed", fmt).content == "payment failed"
    for line in (b"\tat com.shop.Orders.pay(Orders.java:42)", b"    ... 12 more", b"Caused by: java.io.IOException"):
        q = quarantined(line, fmt)
        assert q.reason is QuarantineReason.CONTINUATION and q.raw == line
    assert quarantined(b"garbage", fmt).reason is QuarantineReason.NO_FORMAT_MATCH
    assert fmt.regex is not None
    no_rule = LineFormat.from_regex(fmt.regex.pattern, timestamp_format="%Y-%m-%d %H:%M:%S,%f")
    assert quarantined(b"\tat x", no_rule).reason is QuarantineReason.NO_FORMAT_MATCH
    assert quarantined(b"2026-11-20 99:04:05,123 ERROR a: b", fmt).reason is QuarantineReason.BAD_TIMESTAMP


# --- JSON lines ---------------------------------------------------------------------------------------
ECS = LineFormat.from_json(
    {"timestamp": "@timestamp", "level": "log.level", "component": "log.logger", "node": "host.name",
     "content": "message", "session": "trace.id", "label": "labels.anomaly"},
    timestamp_format="iso8601", name="ecs", session=SessionSpec("field"))


def test_json_lines_take_flattened_keys_then_dotted_paths() -> None:
    raw = (b'{"@timestamp": "2026-11-20T13:04:05.5+01:00", "log.level": "WARN", "log": {"logger": "api.Orders"},'
           b' "host": {"name": "node-7"}, "message": "order 42 retried", "trace": {"id": "t-1"},'
           b' "labels": {"anomaly": false}, "extra": [1, {"deep": null}]}')
    line = parsed(raw, ECS)
    assert line == ParsedLine(datetime(2026, 11, 20, 12, 4, 5, 500000), "WARN", "api.Orders", "node-7",
                              "order 42 retried", "false", "utf-8", "t-1", offset=True)
    assert ECS.session.make().keys(line) == ("t-1",)
    sparse = parsed(b'{"@timestamp": "2026-11-20T13:04:05Z", "message": 17, "host": null}', ECS)
    assert (sparse.content, sparse.node, sparse.level, sparse.session) == ("17", None, None, None)
    docker = LineFormat.from_json({"timestamp": "time", "content": "log"}, timestamp_format="iso8601")
    line = parsed(b'{"log":"GET /health 200\\n","stream":"stdout","time":"2026-11-20T13:04:05.123456789Z"}', docker)
    assert (line.content, line.timestamp) == ("GET /health 200", datetime(2026, 11, 20, 13, 4, 5, 123456))
    tagged = LineFormat.from_json({"component": "logger", "content": "msg"}, tag_content=True)
    assert parsed(b'{"logger": "blobstore", "msg": "read blob 7"}', tagged).content == "blobstore: read blob 7"
    assert parsed(b'{"msg": "read blob 7"}', tagged).content == "read blob 7"  # no component, no tag
    epoch = LineFormat.from_json({"timestamp": "ts", "content": "msg"}, timestamp_format="epoch_ms")
    assert parsed(b'{"ts": 1131566461250, "msg": "up"}', epoch).timestamp == datetime(2005, 11, 9, 20, 1, 1, 250000)
    assert parsed(b'{"ts": 1.13156646125e12, "msg": "up"}', epoch).timestamp == datetime(2005, 11, 9, 20, 1, 1, 250000)


@pytest.mark.parametrize(
    ("raw", "reason", "message"),
    [
        (b"order 42 retried", QuarantineReason.NO_FORMAT_MATCH, "not JSON"),
        (b'{"message": "cut off', QuarantineReason.NO_FORMAT_MATCH, "not JSON"),
        (b"[1, 2]", QuarantineReason.NO_FORMAT_MATCH, "a JSON array, not an object"),
        (b'"just text"', QuarantineReason.NO_FORMAT_MATCH, "a JSON value, not an object"),
        (b"[" * 60_000, QuarantineReason.NO_FORMAT_MATCH, "recursion"),  # nesting bomb under the size limit
        (b'{"message": 1' + b"1" * 5000 + b"}", QuarantineReason.NO_FORMAT_MATCH, "not JSON"),  # over-long int
        (b'{"@timestamp": "2026-11-20T13:04:05Z"}', QuarantineReason.NO_FORMAT_MATCH, "no content: key 'message'"),
        (b'{"@timestamp": "2026-11-20T13:04:05Z", "message": null}', QuarantineReason.NO_FORMAT_MATCH,
         "no content"),
        (b'{"@timestamp": "2026-11-20T13:04:05Z", "message": {"text": "x"}}', QuarantineReason.NO_FORMAT_MATCH,
         "key 'message' holds a JSON object"),
        (b'{"@timestamp": "now", "message": "x"}', QuarantineReason.BAD_TIMESTAMP, "timestamp 'now'"),
        (b'{"message": "x"}', QuarantineReason.BAD_TIMESTAMP, "no timestamp"),
        (b'{"message": "x\\u0000", "@timestamp": "2026-11-20T13:04:05Z", "host": {"name": ["a"]}}',
         QuarantineReason.NO_FORMAT_MATCH, "key 'host.name' holds a JSON array"),
        (b'{"message": "\x01"}\x01', QuarantineReason.BINARY, "control byte"),
    ],
)
def test_bad_json_lines_are_quarantined_with_a_reason(raw: bytes, reason: QuarantineReason, message: str) -> None:
    q = quarantined(raw, ECS)
    assert q.reason is reason and message in q.message and q.raw == raw
    assert len(q.message) < 300  # a reason, not a copy of the line


@pytest.mark.parametrize(
    ("escaped", "reason", "message"),
    [
        (r"order \ud83d shipped", QuarantineReason.BAD_ENCODING, "escaped lone surrogate U+D83D in the content field"),
        (r"x\u0000y", QuarantineReason.BINARY, "escaped control character U+0000 in the content field"),
    ],
)
def test_json_escapes_that_no_raw_line_could_hold_are_quarantined(
    escaped: str, reason: QuarantineReason, message: str
) -> None:
    """A lone surrogate (a logger that cut an emoji in half) cannot be written as UTF-8, so the parse stage's
    Parquet write would fail the whole day; a NUL is refused by PostgreSQL text. Both come from JSON escapes
    alone: the raw line itself is clean UTF-8 with no control byte."""
    raw = b'{"@timestamp": "2026-11-20T13:04:05Z", "message": "%s"}' % escaped.encode()
    q = quarantined(raw, ECS)
    assert (q.reason, q.message, q.raw) == (reason, message, raw)
    in_node = quarantined(b'{"@timestamp": "2026-11-20T13:04:05Z", "message": "x", "host": {"name": "a\\u0007"}}',
                          ECS)
    assert in_node.message == "escaped control character U+0007 in the node field"


def test_a_json_message_of_several_lines_is_its_first_line() -> None:
    """An exception logged with its stack trace in the message: the event is its first line, as a
    multi-line record of a text log is (the raw line, referenced by file and line number, keeps the rest)."""
    raw = b'{"@timestamp": "2026-11-20T13:04:05Z", "message": "\\norder 42 failed\\n\\tat a.B.c(B.java:7)\\n"}'
    assert parsed(raw, ECS).content == "order 42 failed"
    assert parsed(b'{"message": "colour \\u001b[31mred\\tok", "@timestamp": "2026-11-20T13:04:05Z"}',
                  ECS).content == "colour \x1b[31mred\tok"  # tab and ANSI escape are text, as in raw lines


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"level": "lvl"}, "a 'content' field is required"),
        ({"content": "msg", "msg": "x"}, r"unknown fields \['msg'\]"),
        ({"content": ""}, "need a non-empty key"),
        ({"content": "msg", "timestamp": "ts"}, "timestamp field and a timestamp parser"),
    ],
)
def test_invalid_json_formats_are_rejected(fields: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        LineFormat.from_json(fields)


def test_tag_content_needs_json_fields_with_a_component() -> None:
    with pytest.raises(ValueError, match="tag_content needs JSON fields with a 'component'"):
        LineFormat.from_json({"content": "msg"}, tag_content=True)
    with pytest.raises(ValueError, match="tag_content needs JSON fields"):
        LineFormat("app", re.compile(r"^(?P<component>\S+) (?P<content>.*)$"), tag_content=True)


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r", b"\r\r\n", b""])
def test_line_endings_are_stripped(ending: bytes) -> None:
    assert parsed(HDFS_LINE + ending).content.endswith("terminating")


def test_unparseable_line() -> None:
    q = quarantined(b"this is not an HDFS line")
    assert q.reason is QuarantineReason.NO_FORMAT_MATCH and q.raw == b"this is not an HDFS line"
    assert q.reason == "no_format_match"  # stored as a plain string


def test_bad_timestamp() -> None:
    q = quarantined(b"081309 203615 148 INFO dfs.DataNode: month thirteen")
    assert q.reason is QuarantineReason.BAD_TIMESTAMP and "081309 203615" in q.message
    year_33658 = b"x 999999999999 2005.11.09 dn1 Nov 9 12:01:01 loc prog: c"
    assert quarantined(year_33658, THUNDERBIRD).reason == "bad_timestamp"


@pytest.mark.parametrize("raw", [b"", b"\n", b"\r\n", b"   \t \r\n"])
def test_empty_lines(raw: bytes) -> None:
    assert quarantined(raw).reason is QuarantineReason.EMPTY


def test_utf8_is_decoded_strictly() -> None:
    line = parsed(HDFS_LINE + " caf\u00e9 \u2713".encode())
    assert line.encoding == "utf-8" and line.content.endswith("caf\u00e9 \u2713")


def test_latin1_fallback_for_text_that_is_not_utf8() -> None:
    line = parsed(HDFS_LINE + b" user Jos\xe9 M\xfcller")
    assert line.encoding == "latin-1" and line.content.endswith("user Jos\u00e9 M\u00fcller")


@pytest.mark.parametrize(
    "tail",
    [
        b" \x93quoted\x94",  # C1 range: cp1252 smart quotes or garbage, never plain latin-1 text
        b" " + bytes(range(0xA0, 0x100)) * 4,  # mostly non-ASCII: not text
    ],
)
def test_non_text_bytes_are_bad_encoding(tail: bytes) -> None:
    q = quarantined(b"081109 203615 148 INFO x:" + tail)
    assert q.reason is QuarantineReason.BAD_ENCODING and q.raw.endswith(tail)


@pytest.mark.parametrize("garbage", [b"\x00\x01\x02ELF\x7f", b"abc\x00def", b"bell\x07", b"back\x08space"])
def test_binary_garbage(garbage: bytes) -> None:
    q = quarantined(HDFS_LINE + garbage)
    assert q.reason is QuarantineReason.BINARY and "control byte" in q.message


_JUNK = [b"\x00", b"\x1b[2J", b"\\ud83d", b"\\udfff", b"\\u0000", b"\\n", b"\xff\xfe", b"\xc3", b'"', b"{", b"}",
         b"[" * 300, b"9" * 400, b"1e999", b"-", b":", b" " * 9, b"\r", b"\n", "\u00e9".encode(), "\U0001f600".encode(),
         b"\\", b'\\"', b"\t", b"\x7f", b"NaN", b"null", b"true", b"\x85", b"\xe2\x80\xa8"]
# what no stored field may hold: control characters other than tab and ESC, and lone surrogates
_UNSTORABLE = re.compile("[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f\ud800-\udfff]")


def _mutated(rng: random.Random, line: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(line) + 1)
        kind = rng.choice((0, 0, 0, 1, 1, 2, 3, 4))
        if kind == 0:
            line = line[:i] + rng.choice(_JUNK) + line[i:]
        elif kind == 1 and line:
            line = line[:i] + bytes([rng.randrange(256)]) + line[i + 1:]
        elif kind == 2:
            line = line[:i] + line[i + rng.randint(1, 12):]
        elif kind == 3:
            line = line[:i]
        else:
            line = line[:i] + line[i:i + rng.randint(1, 40)] + line[i:]
    return line


def _samples(fmt: LineFormat) -> list[bytes]:
    if fmt in (KRONE, KRONE_JSON):
        lines = [line for session in generate_sessions(3, seed=1) for line in session.lines][:40]
        return [(json_line(line) if fmt is KRONE_JSON else line).encode() for line in lines]
    sample = {HDFS: HDFS_LINE, BGL: b"- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 "
              b"R02-M1-N0-C:J12-U11 RAS KERNEL INFO instruction cache parity error corrected",
              THUNDERBIRD: b"- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 crond(pam_unix)[2915]: "
              b"session closed for user root",
              ECS: b'{"@timestamp": "2026-11-20T13:04:05.5+01:00", "log.level": "WARN", "log": {"logger": "api"}, '
              b'"host": {"name": "node-7"}, "message": "order 42 retried", "trace": {"id": "t-1"}}'}
    return [sample[fmt]]


@pytest.mark.parametrize("fmt", [HDFS, BGL, THUNDERBIRD, KRONE, KRONE_JSON, ECS], ids=lambda f: f.name)
def test_mutated_lines_never_raise_and_every_parsed_field_can_be_stored(fmt: LineFormat) -> None:
    """Seeded fuzzing: valid lines with junk inserted, bytes flipped, cut or repeated. Every outcome is a
    parsed line whose fields UTF-8 and PostgreSQL can store, with session keys, or a quarantined record that
    keeps the raw bytes: nothing raises, so no line can stop a night."""
    rng = random.Random(f"fuzz-{fmt.name}")
    samples = _samples(fmt)
    rule = fmt.session.make()
    outcomes: Counter[str] = Counter()
    for _ in range(3000):
        raw = _mutated(rng, rng.choice(samples))
        result = parse_line(raw, fmt)
        if isinstance(result, Quarantined):
            assert result.raw == raw
            result.message.encode("utf-8")
            outcomes[result.reason] += 1
            continue
        assert isinstance(result, ParsedLine)
        texts = [v for v in result if isinstance(v, str)] + list(rule.keys(result))
        for text in texts:
            text.encode("utf-8")  # raises on a lone surrogate
            assert _UNSTORABLE.search(text) is None, (raw, result)
        outcomes["parsed"] += 1
    assert min(outcomes["parsed"], sum(outcomes.values()) - outcomes["parsed"]) > 200, outcomes  # both sides tried


def test_tab_and_ansi_escape_are_text() -> None:
    assert parsed(HDFS_LINE + b"\t\x1b[31mred\x1b[0m").content.endswith("\x1b[0m")


def test_ten_megabyte_line_is_quarantined_without_regex() -> None:
    huge = b"081109 203615 148 INFO dfs.X: " + b"a(" * (5 * 1024 * 1024) + b"\n"
    start = time.perf_counter()
    q = quarantined(huge)
    assert time.perf_counter() - start < 0.05
    assert q.reason is QuarantineReason.OVERSIZED and q.truncated
    assert len(q.raw) == QUARANTINE_SAMPLE_BYTES and huge.startswith(q.raw)
    assert str(len(huge) - 1) in q.message


def test_max_bytes_bounds_the_content_not_the_line_ending() -> None:
    body = HDFS_LINE + b"x" * (200 - len(HDFS_LINE))
    assert parsed(body + b"\r\n", max_bytes=200).content.endswith("x")
    assert quarantined(body + b"y\r\n", max_bytes=200).reason is QuarantineReason.OVERSIZED
    assert quarantined(OversizedLine(b"head", 10**9)).message.startswith("line of 1000000000 bytes")


@pytest.mark.parametrize("fmt", [HDFS, BGL, THUNDERBIRD, KRONE], ids=lambda f: f.name)
@pytest.mark.parametrize(
    "body", [b"a" * 65400, b"a:" * 32700, b"a[1]" * 16350, b"1 " * 32700, b"[x] " * 16350], ids=range(5)
)
def test_adversarial_lines_at_the_size_limit_stay_fast(fmt: LineFormat, body: bytes) -> None:
    prefixes = [b"", b"081109 203615 148 INFO ", b"- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 "]
    for prefix in prefixes:
        start = time.perf_counter()
        parse_line(prefix + body, fmt)
        assert time.perf_counter() - start < 0.05


def test_formats_and_rules_pickle_for_spark() -> None:
    custom = LineFormat.from_regex(r"^(?P<timestamp>\S+) (?P<content>.*)$", timestamp_format="%Y%m%d")
    for fmt in (HDFS, BGL, THUNDERBIRD, KRONE, KRONE_JSON, ECS):
        assert pickle.loads(pickle.dumps(fmt)) == fmt
    assert parse_line(b"20240101 x", pickle.loads(pickle.dumps(custom))) == ParsedLine(
        datetime(2024, 1, 1), None, None, None, "x"
    )
    line = b'{"@timestamp": "2026-11-20T13:04:05Z", "message": "x", "trace": {"id": "t"}}'
    assert parse_line(line, pickle.loads(pickle.dumps(ECS))) == parse_line(line, ECS)
    rule = NodeWindowSessionKey()
    rule.assign("n1", datetime(2024, 1, 1))
    assert pickle.loads(pickle.dumps(rule)).state == rule.state


# --- session keys -------------------------------------------------------------------------------------


def test_block_ids_give_one_session_per_block() -> None:
    rule = BlockIdSessionKey()
    two = parsed(
        b"081109 204608 31 INFO dfs.FSNamesystem: BLOCK* ask 10.250.14.224:50010 to delete "
        b"blk_-1608999687919862906 blk_7503483334202473044"
    )
    assert rule.keys(two) == ("blk_-1608999687919862906", "blk_7503483334202473044")
    same_twice = parsed(
        b"081109 213837 19 INFO dfs.FSDataset: Deleting block blk_1781953582842324563 file "
        b"/mnt/hadoop/dfs/data/current/subdir5/blk_1781953582842324563"
    )
    assert rule.keys(same_twice) == ("blk_1781953582842324563",)
    assert rule.keys(parsed(b"081109 203615 148 INFO x: no block here")) == ()


def test_long_session_keys_are_shortened_but_stay_distinct() -> None:
    short = "x" * MAX_SESSION_KEY_CHARS
    assert bounded_session_key(short) == short
    a, b = bounded_session_key(short + "a"), bounded_session_key(short + "b")
    assert a != b and len(a) == len(b) == MAX_SESSION_KEY_CHARS
    assert a.startswith("x" * 100) and a == bounded_session_key(short + "a")


def test_id_pattern_session_key() -> None:
    assert IdPatternSessionKey(r"\b(job_\d+)\b").keys(parsed(KRONE_LINE, KRONE)) == ("job_42", "job_43")
    assert IdPatternSessionKey(r"job_\d+").keys(parsed(KRONE_LINE, KRONE)) == ("job_42", "job_43")


def test_node_windows_split_on_gaps() -> None:
    rule = NodeWindowSessionKey(gap_seconds=60)
    t0, epoch = datetime(2005, 11, 9, 12, 0, 0), 1131537600  # t0 as naive UTC epoch seconds

    def at(seconds: float, node: str = "dn1") -> str:
        return rule.assign(node, t0 + timedelta(seconds=seconds))

    assert at(0) == f"dn1#{epoch}"
    assert at(30) == at(90) == f"dn1#{epoch}"  # every gap is 60 s or less
    assert at(151) == f"dn1#{epoch + 151}"  # 61 s after the previous line: a new session
    assert at(100) == f"dn1#{epoch + 151}"  # out of order: joins the current window
    assert at(5, node="dn2") == f"dn2#{epoch + 5}"  # nodes are independent
    assert at(211) == f"dn1#{epoch + 151}"  # the gap counts from the latest line (151), not from 100


def test_node_windows_are_deterministic_and_carry_over() -> None:
    stamps = [datetime(2005, 11, 9, 23, 59, 0), datetime(2005, 11, 9, 23, 59, 50), datetime(2005, 11, 10, 0, 0, 30)]
    first = NodeWindowSessionKey()
    keys = [first.assign("cn1", ts) for ts in stamps]
    assert keys == [NodeWindowSessionKey().assign("cn1", ts) for ts in stamps[:1]] + keys[1:]
    assert len(set(keys)) == 1  # the window crosses midnight
    # a day's run hands its open windows to the next day's run
    yesterday = NodeWindowSessionKey()
    yesterday.assign("cn1", stamps[0])
    yesterday.assign("cn1", stamps[1])
    assert NodeWindowSessionKey(state=yesterday.state).assign("cn1", stamps[2]) == keys[0]


def test_node_window_rule_on_parsed_lines() -> None:
    rule = default_session_rule("thunderbird")
    line = parsed(b"- 1131566461 2005.11.09 dn228 Nov 9 12:01:01 dn228/dn228 crond[2916]: (root) CMD x", THUNDERBIRD)
    assert rule.keys(line) == ("dn228#1131566461",)
    assert rule.keys(parsed(HDFS_LINE)) == ()  # no node: no node session
    with pytest.raises(ValueError):
        NodeWindowSessionKey(gap_seconds=0.5)


def test_default_session_rules() -> None:
    assert isinstance(default_session_rule("HDFS"), BlockIdSessionKey)
    assert default_session_rule("krone").keys(parsed(KRONE_LINE, KRONE)) == ("job_42", "job_43")
    assert isinstance(default_session_rule("bgl"), NodeWindowSessionKey)
    assert default_session_rule("bgl") is not default_session_rule("bgl")  # stateful: always fresh


# --- reading files ------------------------------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.parametrize(("system", "fmt"), [("HDFS", HDFS), ("BGL", BGL), ("Thunderbird", THUNDERBIRD)])
def test_loghub_samples_parse_like_the_ground_truth(system: str, fmt: LineFormat) -> None:
    if not LOGHUB.is_dir():
        pytest.skip("../shared/data not present")
    with open(LOGHUB / system / f"{system}_2k.log_structured.csv", encoding="utf-8", newline="") as f:
        truth = list(csv.DictReader(f))
    lines = [parse_line(raw, fmt) for _, raw in iter_lines(LOGHUB / system / f"{system}_2k.log")]
    assert len(lines) == len(truth) == 2000
    assert all(isinstance(line, ParsedLine) for line in lines)
    # loghub lets a Thunderbird component contain spaces ("Kernel command line"); ours is one token or none.
    # Our Thunderbird content keeps the syslog tag that loghub splits off into Component[PID].
    def expected(t: dict[str, str]) -> str:
        if system != "Thunderbird" or not t["Component"]:
            return t["Content"]
        pid = f"[{t['PID']}]" if t.get("PID") else ""
        return f"{t['Component']}{pid}: {t['Content']}"

    differ = [t for line, t in zip(lines, truth) if line.content != expected(t) and " " not in t["Component"]]
    assert differ == []
    if "Label" in truth[0]:
        assert [line.label for line in lines] == [t["Label"] for t in truth]
    assert DEFAULT_MAX_LINE_BYTES > max(len(t["Content"]) for t in truth)


MYAPP_TOML = r"""
[myapp]
regex = '^(?P<timestamp>\S+ \S+) (?P<level>[A-Z]+) (?P<component>\S+): (?P<content>.*)$'
timestamp_format = "%Y-%m-%d %H:%M:%S,%f"
session = "id_pattern"
session_pattern = '\b(req-\d+)\b'
sim_th = 0.5
depth = 5

[edge]
regex = '^(?P<timestamp>\d+) (?P<node>\S+) (?P<content>.*)$'
timestamp_format = "epoch"
session_gap_seconds = 300

[orders]
fields = { timestamp = "@timestamp", node = "host.name", content = "message", session = "trace.id" }
timestamp_format = "iso8601"
session = "field"
continuation = '^\s'
"""


def test_formats_file_defines_formats_found_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "formats.toml"
    path.write_text(MYAPP_TOML)
    monkeypatch.setenv("KRONE_FORMATS_FILE", str(path))
    fmt = get_format("MyApp")
    assert fmt.name == "myapp" and get_format("myapp") is fmt  # read once while the file is unchanged
    assert fmt.regex == load_formats_file(path)["myapp"].regex
    line = parsed(b"2026-11-20 13:04:05,123 INFO api.Gateway: req-7 forwarded to req-8", fmt)
    assert (line.timestamp, line.component) == (datetime(2026, 11, 20, 13, 4, 5, 123000), "api.Gateway")
    assert default_session_rule("myapp").keys(line) == ("req-7", "req-8")
    assert (fmt.miner.sim_th, fmt.miner.depth) == (0.5, 5)
    assert parsed(b"1131566461 dn228 link up", get_format("edge")).timestamp == datetime(2005, 11, 9, 20, 1, 1)
    edge = default_session_rule("edge")
    assert isinstance(edge, NodeWindowSessionKey) and edge.gap_seconds == 300
    orders = get_format("orders")
    assert orders.regex is None and dict(orders.json_fields)["session"] == "trace.id"
    line = parsed(b'{"@timestamp": "2026-11-20T13:04:05Z", "message": "paid", "trace": {"id": "t-9"}}', orders)
    assert (line.timestamp, line.content) == (datetime(2026, 11, 20, 13, 4, 5), "paid")
    assert default_session_rule("orders").keys(line) == ("t-9",)
    assert quarantined(b"  pretty-printed rest", orders).reason is QuarantineReason.CONTINUATION
    assert get_format("hdfs") is HDFS  # built-ins first
    known = r"known: \['bgl', 'hdfs', 'krone', 'krone-json', 'thunderbird', 'edge', 'myapp', 'orders'\]"
    with pytest.raises(KeyError, match=known):
        get_format("nginx")
    monkeypatch.setenv("KRONE_FORMATS_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="KRONE_FORMATS_FILE"):
        get_format("myapp")


def test_a_broken_format_fails_its_own_sources_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One file serves every source of a deployment: a typo in a new source's table used to stop the nights of
    all the others."""
    path = tmp_path / "formats.toml"
    path.write_text(MYAPP_TOML + "\n[zk]\nregex = '^(?P<timestamp>\\S+) (?P<content>.*)$'\ntimestamp_format = 'iso8601'\n")
    monkeypatch.setenv("KRONE_FORMATS_FILE", str(path))
    assert get_format("myapp").name == "myapp" and get_format("edge").name == "edge"
    with pytest.raises(ValueError, match=r"formats.toml: format \[zk\]: session 'node_window' \(the default\) needs"):
        get_format("zk")
    with pytest.raises(KeyError, match=r"; broken: \['zk'\]"):
        get_format("nginx")
    with pytest.raises(ValueError, match=r"format \[zk\]"):  # the strict loader still refuses the file
        load_formats_file(path)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("[hdfs]\nregex = '^(?P<content>.*)$'", "not be a built-in"),
        ("[app]\nregex = '^(?P<content>.*)$'\ncolour = 'red'", r"unknown keys \['colour'\]"),
        ("[app]\ntimestamp_format = '%Y'", "needs 'regex' or 'fields'"),
        ("[app]\nregex = '^(?P<content>.*)$'\nfields = { content = 'msg' }", "needs 'regex' or 'fields'"),
        ("[app]\nfields = 'message'", "'fields' must be a table"),
        ("[app]\nfields = { content = 'msg', when = 'ts' }", r"unknown fields \['when'\]"),
        ("[app]\nfields = { content = 'msg' }\nsession = 'field'", "needs a 'session' field"),
        ("[app]\nregex = '^(?P<content>.*)$'\ntag_content = true", "tag_content is for JSON"),
        ("[app]\nfields = { content = 'msg', component = 'c' }\ntag_content = 'yes'", "true or false"),
        ("[app]\nregex = '^(?P<msg>.*)$'", "unknown named groups"),
        ("[app]\nregex = '^(?P<content>.*'", "missing \\)"),
        ("[app]\nregex = '^(?P<content>.*)$'\ncontinuation = '(unclosed'", "missing \\)"),
        ("[app]\nregex = '^(?P<content>.*)$'\nsession = 'id_pattern'", "session pattern"),
        ("[app]\nregex = '^(?P<timestamp>\\S+) (?P<content>.*)$'\ntimestamp_format = 'iso8601'",
         "session 'node_window' \\(the default\\) needs a 'node' and a 'timestamp'"),
        ("[app]\nfields = { node = 'host', content = 'msg' }\nsession = 'node_window'", "needs a 'node' and a 'timestamp'"),
        ("[app]\nregex = '^(?P<content>.*)$'\nsession = 'per_line'", "session kind"),
        ("[app]\nregex = '^(?P<content>.*)$'\ndepth = 2", "depth"),
        ("[app]\nregex = '^(?P<timestamp>\\d+) (?P<content>.*)$'\ntimestamp_format = 5", "give a strptime pattern"),
        ("[app]\nregex = '^(?P<timestamp>\\S+) (?P<content>.*)$'\ntimestamp_format = 'iso8601'\ntimezone = 'Mars/Olympus'",
         "unknown timezone 'Mars/Olympus'"),
        ("[app]\nregex = '^(?P<content>.*)$'\ntimezone = 'UTC'", "a timezone needs a timestamp group"),
    ],
)
def test_formats_file_errors_name_file_and_format(tmp_path: Path, table: str, error: str) -> None:
    path = tmp_path / "formats.toml"
    path.write_text(table)
    with pytest.raises(ValueError, match=error) as caught:
        load_formats_file(path)
    assert str(path) in str(caught.value) and "format [" in str(caught.value)


def test_a_stamp_that_carried_its_offset_says_so() -> None:
    """It is UTC already, whatever the format's ``timezone`` (the parse stage leaves it alone)."""
    fmt = LineFormat.from_regex(r"^(?P<timestamp>\S+) (?P<content>.*)$", timestamp_format="iso8601", timezone="Europe/Berlin")
    assert parse_line(b"2026-10-25T02:30:00+01:00 x", fmt).offset is True
    assert parse_line(b"2026-10-25T02:30:00 x", fmt).offset is False
