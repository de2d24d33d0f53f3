"""The synthetic generator is ground truth for parser, hierarchy and detector tests, so its promises are checked here."""

from __future__ import annotations

import csv
import gzip
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from krone_jobs.hierarchy.kseqs import decompose
from krone_jobs.hierarchy.model import Hierarchy, TemplateNode
from krone_jobs.logformats import KRONE, KRONE_JSON, ParsedLine, parse_line
from krone_jobs.synthetic import (
    ANOMALY_KINDS,
    LINE_RE,
    NO_ANOMALY,
    SESSION_RE,
    TEMPLATES,
    GenerateSummary,
    SyntheticSession,
    generate,
    generate_sessions,
    json_line,
)

DAYS = 3
RATE = 0.05


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate(out, days=DAYS, sessions_per_day=400, anomaly_rate=RATE, seed=5)


@pytest.fixture(scope="module")
def sessions() -> list[SyntheticSession]:
    return generate_sessions(4000, seed=7, anomaly_rate=RATE)


def _day_files(out: Path) -> dict[str, list[str]]:
    files = sorted((out / "raw" / "synthetic").glob("dt=*/synthetic.log*"))
    read = {".gz": lambda p: gzip.decompress(p.read_bytes())}
    return {p.parent.name[3:]: read.get(p.suffix, Path.read_bytes)(p).decode().splitlines() for p in files}


def _labels(out: Path) -> list[dict[str, str]]:
    with open(out / "labels" / "synthetic" / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _all_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    kwargs = dict(days=2, sessions_per_day=150, seed=11, gzip=True)
    generate(tmp_path / "a", **kwargs)
    generate(tmp_path / "b", **kwargs)
    generate(tmp_path / "c", **{**kwargs, "seed": 12})
    assert _all_bytes(tmp_path / "a") == _all_bytes(tmp_path / "b")
    assert _all_bytes(tmp_path / "a") != _all_bytes(tmp_path / "c")
    assert generate_sessions(50, seed=3) == generate_sessions(50, seed=3)


def test_every_line_has_the_format_a_job_id_and_its_day(run: tuple[Path, GenerateSummary]) -> None:
    out, summary = run
    days = _day_files(out)
    assert list(days) == list(summary.lines_per_day) == ["2026-11-01", "2026-11-02", "2026-11-03"]
    for day, lines in days.items():
        assert len(lines) == summary.lines_per_day[day]
        assert lines == sorted(lines)
        for line in lines:
            m = LINE_RE.match(line)
            assert m is not None, line
            assert m["timestamp"].startswith(day)
            assert SESSION_RE.search(m["content"]), line


def test_sessions_are_interleaved_and_some_cross_midnight(run: tuple[Path, GenerateSummary]) -> None:
    out, _ = run
    seen: dict[str, list[str]] = defaultdict(list)
    switches = 0
    for day, lines in _day_files(out).items():
        ids = [SESSION_RE.search(line)[1] for line in lines]  # type: ignore[index]
        switches += sum(a != b for a, b in zip(ids, ids[1:]))
        for sid in dict.fromkeys(ids):
            seen[sid].append(day)
    crossing = {sid: d for sid, d in seen.items() if len(d) > 1}
    assert len(crossing) >= 3
    assert all(len(d) == 2 for d in crossing.values())
    first = {row["session_id"]: row["first_date"] for row in _labels(out)}
    assert all(first[sid] == d[0] for sid, d in crossing.items())
    assert switches > len(seen) * 1.5  # lines of concurrent jobs alternate


def test_labels_agree_with_the_files_and_the_rate(run: tuple[Path, GenerateSummary]) -> None:
    out, summary = run
    rows = _labels(out)
    per_session = Counter(SESSION_RE.search(line)[1] for lines in _day_files(out).values() for line in lines)  # type: ignore[index]
    assert {r["session_id"]: int(r["n_lines"]) for r in rows} == dict(per_session)
    assert len(rows) == summary.sessions == DAYS * 400
    assert sum(per_session.values()) == summary.lines
    assert all((r["label"] == "1") == (r["anomaly_kind"] != NO_ANOMALY) for r in rows)
    kinds = Counter(r["anomaly_kind"] for r in rows if r["label"] == "1")
    assert dict(kinds) == {k: n for k, n in summary.anomalies.items() if n}
    assert set(kinds) == set(ANOMALY_KINDS)
    assert sum(kinds.values()) / len(rows) == pytest.approx(RATE, abs=0.005)


def test_in_memory_sessions_carry_their_labels(sessions: list[SyntheticSession]) -> None:
    kinds = Counter(s.anomaly_kind for s in sessions)
    assert set(kinds) == {NO_ANOMALY, *ANOMALY_KINDS}
    assert sum(s.label for s in sessions) / len(sessions) == pytest.approx(RATE, abs=0.005)
    assert all(len(s.lines) == len(s.template_keys) for s in sessions)
    assert all(SESSION_RE.search(line)[1] == s.session_id for s in sessions for line in s.lines)  # type: ignore[index]
    assert not any(s.label for s in generate_sessions(300, seed=1, anomaly_rate=0.0))


def test_each_line_matches_exactly_its_ground_truth_template(sessions: list[SyntheticSession]) -> None:
    patterns = {
        key: re.compile(r"\S+".join(map(re.escape, re.split(r"\{\w+\}", t.fmt))) + r"\Z")
        for key, t in TEMPLATES.items()
    }
    for s in sessions[:1500]:
        for key, line in zip(s.template_keys, s.lines):
            m = LINE_RE.match(line)
            assert m is not None and m["component"] == TEMPLATES[key].entity
            assert m["content"].startswith(f"{m['component']}: ")  # the tag stays in the content
            message = m["content"].removeprefix(f"{m['component']}: ")
            assert [k for k, p in patterns.items() if p.match(message)] == [key]
        assert all(c.startswith(f"{TEMPLATES[k].entity}: ") for k, c in zip(s.template_keys, s.contents))


def test_templates_by_kind(sessions: list[SyntheticSession]) -> None:
    normal = {k for k, t in TEMPLATES.items() if t.kind == "normal"}
    used_by_normal = {k for s in sessions if not s.label for k in s.template_keys}
    assert used_by_normal == normal
    assert 20 <= len(TEMPLATES) <= 40
    for s in sessions:
        kinds = {TEMPLATES[k].kind for k in s.template_keys}
        expected = {"new_template": {"normal", "novel"}, "unexpected_status": {"normal", "failure"}}
        assert kinds == expected.get(s.anomaly_kind, {"normal"}), s.anomaly_kind


def test_templates_csv_is_a_nesting_hierarchy(run: tuple[Path, GenerateSummary]) -> None:
    hierarchy = _hierarchy(run[0])
    assert set(hierarchy) == set(TEMPLATES)
    assert all(hierarchy[k].template == t.text and "<*>" in t.text for k, t in TEMPLATES.items())


def test_structural_anomalies_change_a_krone_seq(
    run: tuple[Path, GenerateSummary], sessions: list[SyntheticSession]
) -> None:
    """Anomalies touch only fixed steps, so each one shows up as a chunk no normal job produces."""
    hierarchy = _hierarchy(run[0])

    def keys(s: SyntheticSession) -> set[str]:
        d = decompose(s.template_keys, hierarchy)
        return {c.key for c in (*d.status, *d.action, d.entity)}

    normal = set().union(*(keys(s) for s in sessions if not s.label))
    anomalous = [s for s in sessions if s.label]
    assert all(keys(s) - normal for s in anomalous), [s.anomaly_kind for s in anomalous if not keys(s) - normal]


def test_json_layout_writes_the_same_lines_for_the_krone_json_format(run: tuple[Path, GenerateSummary],
                                                                      tmp_path: Path) -> None:
    out, summary = run
    json_summary = generate(tmp_path, days=DAYS, sessions_per_day=400, anomaly_rate=RATE, seed=5, layout="json")
    assert json_summary.lines_per_day == summary.lines_per_day
    assert (tmp_path / "labels" / "synthetic" / "labels.csv").read_bytes() == (
        out / "labels" / "synthetic" / "labels.csv").read_bytes()
    text_rule, json_rule = KRONE.session.make(), KRONE_JSON.session.make()
    for day, lines in _day_files(out).items():
        json_lines = _day_files(tmp_path)[day]
        assert json_lines == [json_line(line) for line in lines]
        for text, as_json in zip(lines[::50], json_lines[::50]):
            t, j = parse_line(text.encode(), KRONE), parse_line(as_json.encode(), KRONE_JSON)
            assert isinstance(t, ParsedLine) and isinstance(j, ParsedLine)
            assert j._replace(session=None, offset=False) == t and json_rule.keys(j) == text_rule.keys(t)


def test_line_target_is_met_closely(tmp_path: Path) -> None:
    summary = generate(tmp_path, days=2, lines=20_000, gzip=True, source="demo")
    assert summary.lines == pytest.approx(20_000, rel=0.03)
    assert (tmp_path / "raw" / "demo" / "dt=2026-11-02" / "demo.log.gz").exists()
    assert summary.bytes == sum(p.stat().st_size for p in (tmp_path / "raw").rglob("*.gz"))


def _hierarchy(out: Path) -> Hierarchy:
    with open(out / "labels" / "synthetic" / "templates.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return Hierarchy(
        TemplateNode(
            template_id=r["template_key"], template=r["template"], entity=r["entity"], action=r["action"],
            status=r["status"], entity_node=r["entity"], action_node=f"{r['entity']}.{r['action']}",
            status_node=r["template_key"],
        )
        for r in rows
    )
