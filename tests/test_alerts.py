"""Alerts through the real Apprise to a webhook on 127.0.0.1: what is sent, when, and what never leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from krone_jobs.alerts import DAYS_SHOWN, Alert, AlertNotSent, digest, failure, safe_text, send, targets
from tests.alert_inbox import AlertInbox


def report(dt: str, anomalies: int, *, source: str = "web", **figures: Any) -> dict[str, Any]:
    """A ``pipeline.night_report`` result, as the score DAG's XCom and ``krone night`` hold it."""
    per_level = {"status": anomalies, "action": 0, "entity": 0}
    top = [{"level": "status", "kseq_key": "S:job/start", "detector": "nested", "reason": "never seen"}]
    return {"source": source, "dt": dt, "path": f"/data/reports/{source}/dt={dt}/night_report.html",
            "figures": {"sessions": 1000, "anomalies": anomalies, "per_level": per_level, "new_templates": 2,
                        "quarantined": 0, "top_chunks": top if anomalies else [], "earlier_days_failed": [],
                        **figures}}


def test_log_text_leaves_redacted_on_one_line_and_unable_to_address_anyone() -> None:
    text = safe_text("login by bob@example.com from 10.1.2.3 via https://bob:hunter2@db.internal/x\n"
                     "<!channel> @everyone `rm -rf` \x1b[31m\u202e")
    for gone in ("bob@example.com", "10.1.2.3", "hunter2", "<!channel>", "@everyone", "`", "\x1b", "\u202e", "\n"):
        assert gone not in text, (gone, text)
    assert "\u2039!channel> \uff20everyone 'rm -rf'" in text
    assert safe_text("x" * 500, 50) == "x" * 47 + "..."
    assert safe_text("S:read/success \u00d75 \u2192 \u00e9t\u00e9") == "S:read/success x5 -> ?t?"


def test_targets_come_from_a_connection_or_the_environment_and_a_bad_one_is_named_without_its_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KRONE_ALERT_URLS", raising=False)
    assert targets() is None
    monkeypatch.setenv("KRONE_ALERT_URLS", "json://127.0.0.1:9/a, mailto://u:pw@mail.example.com?to=a@b.c,d@e.f")
    assert len(targets()) == 2  # type: ignore[arg-type]
    assert len(targets({"path": "json://127.0.0.1:9/a", "tag": "ops"})) == 1  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"alert target 2 of 2 \(nosuch://\.\.\.\)") as caught:
        targets([{"path": "json://127.0.0.1:9/a"}, {"path": "nosuch://user:s3cret@host/"}])
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match=r"alert target 1 of 1 \(no scheme://"):
        targets([{"url": "json://127.0.0.1:9/a"}])


def test_the_digest_is_sent_when_a_day_has_anomalies_or_always_or_never() -> None:
    clean, flagged = report("2026-12-01", 0), report("2026-12-02", 3)
    assert digest([clean], policy="anomalies") is None
    assert digest([clean, flagged], policy="never") is None
    calm = digest([clean], policy="always")
    assert calm is not None and (calm.title, calm.level) == ("krone: no anomalous sessions, web 2026-12-01", "info")
    loud = digest([flagged, clean], expected=3, policy="anomalies")
    assert loud is not None and (loud.title, loud.level) == ("krone: 3 anomalous sessions, 2 days", "warning")
    lines = loud.body.splitlines()
    assert lines[0].startswith("web 2026-12-01: 1,000 sessions, 0 anomalous (status 0, action 0, entity 0)")
    assert lines[2] == "  top: status S:job/start (nested): never seen"
    assert safe_text("status|A:job/run|S:job/run/ok") == "status|A:job/run|S:job/run/ok"
    assert lines[-1].startswith("1 of 3 day(s) have no report from this run")
    failed = report("2026-12-03", 0, earlier_days_failed=[{"dt": "2026-11-30", "error": "DamagedPartition"}])
    assert digest([failed], policy="anomalies").level == "warning"  # type: ignore[union-attr]
    late = digest([report("2026-12-04", 0, stale_earlier_days=2, duplicate_files=1, duplicate_lines=10)],
                  policy="anomalies")
    assert late is not None and late.level == "warning"  # the default policy: its reports stand on missing lines
    assert late.body.splitlines()[1] == (
        "  read: duplicate files skipped 1 (10 lines), earlier days stale 2 (a log file delivered late? 'krone "
        "status' says what to run)")
    assert digest([report("2026-12-04", 0, duplicate_files=1, duplicate_lines=10)], policy="anomalies") is None
    many = digest([report(f"2026-11-{d:02d}", 1) for d in range(1, 31)], policy="anomalies")
    assert many is not None and many.body.splitlines()[-1] == f"... and {30 - DAYS_SHOWN} more day(s)"


def test_the_digest_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KRONE_ALERT_DIGEST", "sometimes")
    with pytest.raises(ValueError, match="KRONE_ALERT_DIGEST must be one of anomalies, always, never"):
        digest([report("2026-12-01", 1)])
    monkeypatch.setenv("KRONE_ALERT_DIGEST", "Never")
    assert digest([report("2026-12-01", 1)]) is None


def test_an_alert_reaches_the_webhook_and_one_not_taken_is_an_error(alert_inbox: AlertInbox) -> None:
    log = "http://10.0.0.2:8080/dags/krone_score/runs/asset_triggered__2026-12-07T22%3A57%3A22_B9xtrBMu/tasks/x"
    note = failure("krone_parse_web.parse", ValueError("line from 10.0.0.7 broke it"), run="scheduled__x",
                   day="web 2026-12-02", attempt="try 3", log_url=log)
    assert send(note, targets(urls=alert_inbox.url)) == 1  # type: ignore[arg-type]
    [got] = alert_inbox.received
    assert (got["title"], got["type"]) == ("krone: krone_parse_web.parse failed, web 2026-12-02", "failure")
    assert got["message"].splitlines() == [
        "krone_parse_web.parse failed for web 2026-12-02 (try 3)",
        "error: ValueError: line from ‹ip> broke it",
        "run: scheduled__x",
        f"log: {log}"]  # Airflow's own link, not log text: not taken for an address and a key
    alert_inbox.status = 503
    with pytest.raises(AlertNotSent, match=r"reached 0 of 1 target\(s\): 1 failed"):
        send(Alert("t", "b", "digest"), targets(urls=alert_inbox.url))  # type: ignore[arg-type]


def test_alerts_are_routed_by_the_targets_tags() -> None:
    """The pager tagged ``failure`` hears of failures only, the chat tagged ``digest`` of the nights; a target
    with no routing tag (none, or the provider example's ``alerts``) of everything; no target for a kind: no
    alert, and no error."""
    inboxes = {name: AlertInbox().start() for name in ("all", "pager", "chat", "ops")}
    try:
        to = targets([{"path": inboxes["all"].url}, {"path": inboxes["pager"].url, "tag": "failure, deadline"},
                      {"path": inboxes["chat"].url, "tag": ["digest"]}, {"path": inboxes["ops"].url, "tag": "alerts"}])
        assert send(failure("krone_score.notify", "boom"), to) == 3  # type: ignore[arg-type]
        assert send(digest([report("2026-12-02", 1)], policy="always"), to) == 3  # type: ignore[arg-type]
        got = {name: [m["title"].split(",")[0] for m in inbox.received] for name, inbox in inboxes.items()}
        assert got == {"all": ["krone: krone_score.notify failed", "krone: 1 anomalous session"],
                       "pager": ["krone: krone_score.notify failed"], "chat": ["krone: 1 anomalous session"],
                       "ops": ["krone: krone_score.notify failed", "krone: 1 anomalous session"]}
        only_pager = targets([{"path": inboxes["pager"].url, "tag": "failure"}])
        assert send(digest([report("2026-12-02", 1)], policy="always"), only_pager) == 0  # type: ignore[arg-type]
    finally:
        for inbox in inboxes.values():
            inbox.stop()


@pytest.mark.parametrize("form", ["text", "yaml"])
def test_an_apprise_configuration_file_gives_tagged_targets_outside_airflow(
        form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``KRONE_ALERT_CONFIG`` (Apprise's own TEXT or YAML format) routes by tag where no connection can be read
    (``krone night``, deadline callbacks); its targets join ``KRONE_ALERT_URLS``'s, which get every alert."""
    inboxes = {name: AlertInbox().start() for name in ("pager", "chat", "ops", "env")}
    try:
        pager, chat, ops = inboxes["pager"].url, inboxes["chat"].url, inboxes["ops"].url
        config = tmp_path / f"alerts.{'txt' if form == 'text' else 'yml'}"
        config.write_text(f"# the on-call pager\nfailure, deadline={pager}\ndigest={chat}\nalerts={ops}\n"
                          if form == "text" else
                          f"urls:\n  - {pager}:\n      tag: failure, deadline\n  - {chat}:\n      tag: digest\n"
                          f"  - {ops}\n")
        monkeypatch.setenv("KRONE_ALERT_CONFIG", str(config))
        monkeypatch.setenv("KRONE_ALERT_URLS", inboxes["env"].url)
        to = targets()
        assert send(failure("krone night --source web", "boom"), to) == 3  # type: ignore[arg-type]
        assert send(digest([report("2026-12-02", 1)], policy="always"), to) == 3  # type: ignore[arg-type]
        got = {name: [m["type"] for m in inbox.received] for name, inbox in inboxes.items()}
        assert got == {"pager": ["failure"], "chat": ["warning"], "ops": ["failure", "warning"],
                       "env": ["failure", "warning"]}
        monkeypatch.delenv("KRONE_ALERT_URLS")
        assert len(targets()) == 3  # type: ignore[arg-type]
    finally:
        for inbox in inboxes.values():
            inbox.stop()


def test_a_configuration_file_apprise_cannot_read_whole_is_named_without_its_secrets(tmp_path: Path) -> None:
    """Apprise only logs the entries it skips; an alert target silently lost is worse than an error."""
    config = tmp_path / "alerts.txt"
    config.write_text("failure=json://127.0.0.1:9/a\nmailto://u:s3cret@mail.example.com x\nnot an entry\n")
    unread = r"alerts.txt \(KRONE_ALERT_CONFIG\) has entries Apprise could not read \(line 2, 3\)"
    with pytest.raises(ValueError, match=unread) as caught:
        targets(urls="", config=str(config))
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="nowhere.yml .* cannot be read or holds no target"):
        targets(urls="", config=str(tmp_path / "nowhere.yml"))
    config.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="cannot be read or holds no target"):
        targets(urls="", config=str(config))
    with pytest.raises(ValueError, match=r"configuration https://\.\.\. ") as caught:
        targets(urls="", config="https://user:s3cret@127.0.0.1:9/alerts.yml")
    assert "s3cret" not in str(caught.value)
