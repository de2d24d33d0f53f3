"""Synthetic nested-execution logs with injected, labelled anomalies (demo, tests and scale runs).

Public data sets are flat, small or unlabelled at the level KRONE cares about, so the project simulates a
small batch-job service whose logs hide nested executions. A session is one job::

    scheduler  submit -> (wait)* -> schedule
    auth       verify token (-> refresh) -> check acl
    cache      lookup of all inputs: hit | partial | miss
    per miss   rpc connect -> blobstore open -> read+ (slow retries) -> close
    worker     task start -> progress+ (gc pauses, spills) -> finish
    blobstore  write replica 1/3, 2/3, 3/3 -> commit
    scheduler  complete
    (15 % of jobs only list a directory instead of reading, computing and committing)

Every template key is ``<entity>.<action>.<status>``, so the generator also writes the ground-truth
hierarchy. Anomalies are injected by editing a normal job's event list before timestamps are drawn, only
at *fixed* events (required exactly once at their place), so that every structural anomaly changes at least
one KRONE Seq instead of looking like ordinary variation. Everything is drawn from seeded RNGs (one per
day) and gzip is written with ``mtime=0``: same arguments, same bytes.
"""

from __future__ import annotations

import argparse
import csv
import gzip as gzip_lib
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Literal, NamedTuple

from krone_jobs.logformats import KRONE, KRONE_SESSION_PATTERN

Layout = Literal["text", "json"]
LAYOUT_FORMATS: dict[str, str] = {"text": "krone", "json": "krone-json"}
"""The line format that reads each layout the generator writes."""

LINE_RE = KRONE.regex  # the generator writes exactly what the parser's ``krone`` format reads
SESSION_RE = re.compile(KRONE_SESSION_PATTERN)
ANOMALY_KINDS: tuple[str, ...] = ("missing_step", "extra_step", "wrong_order", "unexpected_status", "new_template")
NO_ANOMALY = "none"

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
FIRST_JOB = 100_000
LIST_SHARE = 0.15  # jobs that only list a directory: a second, shorter execution shape
NIGHTLY_SHARE = 0.05  # heavier jobs submitted in the last minutes of a day: they cross midnight
NIGHTLY_WINDOW_MS = 240_000


class Template(NamedTuple):
    """One log statement of the simulated system and its place in the ground-truth hierarchy."""

    key: str  # "<entity>.<action>.<status>"
    entity: str
    action: str
    status: str
    level: str
    kind: str  # "normal": produced by normal jobs; "failure": unexpected_status; "novel": new_template
    fmt: str  # str.format pattern over named parameters

    @property
    def text(self) -> str:
        """The template as a parser should recover it: every parameter replaced by ``<*>``."""
        return re.sub(r"\{\w+\}", "<*>", self.fmt)


def _t(key: str, level: str, kind: str, fmt: str) -> Template:
    entity, action, status = key.split(".")
    return Template(key, entity, action, status, level, kind, fmt)


# Failure templates differ from their success twin in token count, so a Drain-style miner keeps them apart.
TEMPLATES: dict[str, Template] = {
    t.key: t
    for t in (
        _t("scheduler.submit.accepted", "INFO", "normal",
           "{job} submitted by user {user} to queue {queue} with priority {prio}"),
        _t("scheduler.schedule.waiting", "INFO", "normal",
           "{job} waiting for a free slot, {ahead} jobs ahead in queue {queue}"),
        _t("scheduler.schedule.assigned", "INFO", "normal",
           "{job} scheduled on {node} after {ms} ms in queue {queue}"),
        _t("scheduler.complete.succeeded", "INFO", "normal",
           "{job} completed successfully in {sec} s"),
        _t("auth.token.verified", "INFO", "normal",
           "token {token} verified for {job} (user {user}, ttl {ttl} s)"),
        _t("auth.token.refreshed", "INFO", "normal",
           "token {token} for {job} near expiry, refreshed with ttl {ttl} s"),
        _t("auth.acl.granted", "INFO", "normal",
           "{job} access to {dir} granted for user {user} (role {role})"),
        _t("rpc.connect.established", "INFO", "normal",
           "{job} rpc connect to {ip}:{port} established in {ms} ms"),
        _t("blobstore.open.ok", "INFO", "normal",
           "{job} open blob {path} on {store} for reading"),
        _t("blobstore.read.ok", "INFO", "normal",
           "{job} read blob {path} ({size} bytes) ok"),
        _t("blobstore.read.slow", "WARN", "normal",
           "{job} slow read of {path} took {ms} ms, retrying from another replica"),
        _t("blobstore.close.ok", "INFO", "normal",
           "{job} close blob {path} after reading {size} bytes"),
        _t("cache.lookup.hit", "INFO", "normal",
           "{job} all {inputs} inputs found in local cache"),
        _t("cache.lookup.partial", "INFO", "normal",
           "{job} local cache holds {hits} of {inputs} inputs, fetching the rest"),
        _t("cache.lookup.miss", "INFO", "normal",
           "{job} local cache miss for all {inputs} inputs"),
        _t("blobstore.list.ok", "INFO", "normal",
           "{job} listed {count} objects under {dir} in {ms} ms"),
        _t("worker.task.started", "INFO", "normal",
           "{job} task {task} started on {node} with {cores} cores and {mem} MB memory"),
        _t("worker.task.progress", "INFO", "normal",
           "{job} task {task} progress {pct}% ({records} records)"),
        _t("worker.task.finished", "INFO", "normal",
           "{job} task {task} finished in {ms} ms, output {size} bytes"),
        _t("worker.task.gc_paused", "WARN", "normal",
           "{job} gc pause of {ms} ms in task {task}"),
        _t("worker.task.spilled", "INFO", "normal",
           "{job} task {task} spilled {mb} MB to local disk"),
        _t("blobstore.write.ok", "INFO", "normal",
           "{job} write replica {r}/3 of {path} to {ip} ok"),
        _t("blobstore.commit.ok", "INFO", "normal",
           "{job} commit {path} ({size} bytes, 3 replicas)"),
        _t("scheduler.schedule.rejected", "ERROR", "failure",
           "{job} rejected by scheduler after {ms} ms: queue {queue} over quota"),
        _t("auth.token.rejected", "ERROR", "failure",
           "token {token} rejected for {job}: signature invalid"),
        _t("auth.acl.denied", "ERROR", "failure",
           "{job} permission denied: user {user} lacks role {role} to read {dir}"),
        _t("rpc.connect.timeout", "ERROR", "failure",
           "{job} rpc connect to {ip}:{port} timed out after {ms} ms, giving up"),
        _t("blobstore.read.failed", "ERROR", "failure",
           "{job} read blob {path} failed: checksum mismatch after {size} bytes"),
        _t("worker.task.failed", "ERROR", "failure",
           "{job} task {task} failed with exit code 137 after {ms} ms"),
        _t("blobstore.write.failed", "ERROR", "failure",
           "{job} write replica {r}/3 of {path} to {ip} failed: no space left on device"),
        _t("blobstore.commit.aborted", "ERROR", "failure",
           "{job} commit of {path} aborted: replica quorum not reached"),
        _t("scheduler.complete.failed", "ERROR", "failure",
           "{job} finished with status FAILED after {sec} s"),
        _t("blobstore.scrub.quarantined", "WARN", "novel",
           "{job} blob {path} quarantined by scrubber: bit rot in {sectors} sectors"),
        _t("worker.oom.killed", "ERROR", "novel",
           "{job} task {task} killed by kernel oom-killer (rss {mb} MB)"),
        _t("rpc.frame.malformed", "ERROR", "novel",
           "{job} rpc peer {ip}:{port} sent malformed frame with magic {magic}"),
        _t("auth.token.replayed", "WARN", "novel",
           "token {token} of {job} replayed from unexpected address {ip}"),
    )
}
FAILURE_OF: dict[str, str] = {
    "scheduler.schedule.assigned": "scheduler.schedule.rejected",
    "auth.token.verified": "auth.token.rejected",
    "auth.acl.granted": "auth.acl.denied",
    "rpc.connect.established": "rpc.connect.timeout",
    "blobstore.read.ok": "blobstore.read.failed",
    "worker.task.finished": "worker.task.failed",
    "blobstore.write.ok": "blobstore.write.failed",
    "blobstore.commit.ok": "blobstore.commit.aborted",
    "scheduler.complete.succeeded": "scheduler.complete.failed",
}
NOVEL_KEYS: tuple[str, ...] = tuple(k for k, t in TEMPLATES.items() if t.kind == "novel")

# Delay before an event, in ms (inclusive range); anything not listed is a fast local step.
GAP_MS: dict[str, tuple[int, int]] = {
    "scheduler.schedule.waiting": (1_000, 30_000),
    "worker.task.progress": (2_000, 30_000),
    "worker.task.finished": (500, 5_000),
    "blobstore.read.ok": (2, 300),
    "blobstore.read.slow": (300, 2_000),
    "worker.task.gc_paused": (50, 800),
    "worker.task.spilled": (200, 3_000),
}
DEFAULT_GAP_MS = (1, 100)

USERS = ("alice", "bob", "carol", "dmitri", "erin", "farah", "gustav", "hana", "ivan", "jules")
QUEUES = ("default", "batch", "etl", "adhoc")
ROLES = ("reader", "analyst", "pipeline")
DATASETS = ("clicks", "orders", "sensors", "payments", "sessions", "inventory")
STORES = tuple(f"store-{i:02d}" for i in range(1, 13))
STORE_IPS = {s: f"10.1.0.{i}" for i, s in enumerate(STORES, start=1)}


class _Event(NamedTuple):
    key: str
    host: str
    params: dict[str, object]
    fixed: bool  # required exactly once at its place: dropping, repeating or moving it breaks the grammar


@dataclass(frozen=True, slots=True)
class SyntheticSession:
    """One job: its ground-truth template keys, rendered lines and label (``anomaly_kind`` "none" if normal)."""

    session_id: str
    template_keys: list[str]
    lines: list[str]
    label: int
    anomaly_kind: str

    @property
    def contents(self) -> list[str]:
        """Each line's content as the ``krone`` format cuts it (component tag and message): what the parse
        stage mines and what a served model takes as ``messages``."""
        return [LINE_RE.match(line)["content"] for line in self.lines]  # type: ignore[index]


@dataclass(frozen=True, slots=True)
class GenerateSummary:
    """What :func:`generate` wrote, for logs, benchmarks and tests."""

    lines_per_day: dict[str, int]
    sessions: int
    anomalies: dict[str, int]
    lines: int
    bytes: int
    seconds: float

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0


class _Clock:
    """Renders ms offsets from ``start`` midnight; caches date strings since datetime formatting is slow."""

    def __init__(self, start: date) -> None:
        self._start = start
        self._dates: dict[int, str] = {}

    def date(self, day: int) -> str:
        if day not in self._dates:
            self._dates[day] = (self._start + timedelta(days=day)).isoformat()
        return self._dates[day]

    def stamp(self, ms: int) -> str:
        day, ms = divmod(ms, DAY_MS)
        s, ms = divmod(ms, 1000)
        m, s = divmod(s, 60)
        h, m = divmod(m, 60)
        return f"{self.date(day)} {h:02d}:{m:02d}:{s:02d}.{ms:03d}"


class _Job:
    """One job: the grammar (one method per nested sub-operation), anomaly injection and rendering."""

    def __init__(self, rng: random.Random, number: int, nightly: bool) -> None:
        self.rng = rng
        self.nightly = nightly
        self.job = f"job_{number}"
        self.user = rng.choice(USERS)
        self.queue = "nightly" if nightly else rng.choice(QUEUES)
        self.master = f"master-0{rng.randint(1, 2)}"
        self.auth = f"auth-0{rng.randint(1, 3)}"
        self.node = f"node-{rng.randint(1, 32):02d}"
        self.token = f"tok-{rng.getrandbits(32):08x}"
        self.task = f"task-{number % 1000:03d}-{rng.randint(0, 9)}"
        self.dataset = rng.choice(DATASETS)
        self.events: list[_Event] = []

    def emit(self, key: str, host: str, fixed: bool = True, **params: object) -> None:
        params["job"] = self.job
        self.events.append(_Event(key, host, params, fixed))

    # -- grammar -----------------------------------------------------------------------------------
    def build(self) -> None:
        self.submit()
        self.authenticate()
        if not self.nightly and self.rng.random() < LIST_SHARE:
            self.emit("blobstore.list.ok", self.rng.choice(STORES), count=self.rng.randint(1, 5000),
                      dir=f"/data/in/{self.dataset}", ms=self.rng.randint(1, 900))
        else:
            self.read_inputs()
            self.run_task()
            self.commit_output()
        self.emit("scheduler.complete.succeeded", self.master, sec=self.rng.randint(1, 900))

    def submit(self) -> None:
        rng = self.rng
        self.emit("scheduler.submit.accepted", self.master, user=self.user, queue=self.queue,
                  prio=rng.randint(0, 9))
        if rng.random() < 0.3:
            for ahead in sorted(rng.sample(range(1, 40), rng.randint(1, 3)), reverse=True):
                self.emit("scheduler.schedule.waiting", self.master, False, ahead=ahead, queue=self.queue)
        self.emit("scheduler.schedule.assigned", self.master, node=self.node, ms=rng.randint(1, 800),
                  queue=self.queue)

    def authenticate(self) -> None:
        rng = self.rng
        self.emit("auth.token.verified", self.auth, token=self.token, user=self.user, ttl=rng.randint(60, 3600))
        if rng.random() < 0.15:
            self.emit("auth.token.refreshed", self.auth, False, token=self.token, ttl=3600)
        self.emit("auth.acl.granted", self.auth, dir=f"/data/in/{self.dataset}", user=self.user,
                  role=rng.choice(ROLES))

    def read_inputs(self) -> None:
        """One cache lookup for all inputs (a single fixed step), then a fetch for every miss."""
        rng = self.rng
        inputs = rng.randint(2, 6) if self.nightly else rng.randint(1, 4)
        fetch = [part for part in rng.sample(range(64), inputs) if rng.random() >= 0.2]
        hits = inputs - len(fetch)
        status = "hit" if not fetch else "miss" if not hits else "partial"
        self.emit(f"cache.lookup.{status}", self.node, inputs=inputs, hits=hits)
        for part in fetch:
            self.fetch_input(f"/data/in/{self.dataset}/part-{part:04d}")

    def fetch_input(self, path: str) -> None:
        rng = self.rng
        store = rng.choice(STORES)
        self.emit("rpc.connect.established", self.node, ip=STORE_IPS[store], port=7070, ms=rng.randint(1, 40))
        self.emit("blobstore.open.ok", store, path=path, store=store)
        chunks = rng.randint(1, 6)
        slow_at = rng.randrange(chunks) if rng.random() < 0.1 else -1
        for i in range(chunks):
            if i == slow_at:
                self.emit("blobstore.read.slow", store, False, path=path, ms=rng.randint(300, 2000))
            self.emit("blobstore.read.ok", store, False, path=path, size=rng.randint(1, 65_536))
        self.emit("blobstore.close.ok", store, path=path, size=65_536 * rng.randint(1, 64))

    def run_task(self) -> None:
        rng = self.rng
        self.emit("worker.task.started", self.node, task=self.task, node=self.node,
                  cores=rng.choice((2, 4, 8, 16)), mem=rng.choice((2048, 4096, 8192)))
        steps = rng.randint(4, 10) if self.nightly else rng.randint(1, 6)
        gc_at = rng.randrange(steps) if rng.random() < 0.2 else -1
        spill_at = rng.randrange(steps) if rng.random() < 0.15 else -1
        records = 0
        for i in range(steps):
            records += rng.randint(1_000, 90_000)
            self.emit("worker.task.progress", self.node, False, task=self.task, pct=(i + 1) * 100 // (steps + 1),
                      records=records)
            if i == gc_at:
                self.emit("worker.task.gc_paused", self.node, False, task=self.task, ms=rng.randint(50, 800))
            if i == spill_at:
                self.emit("worker.task.spilled", self.node, False, task=self.task, mb=rng.randint(64, 4096))
        self.emit("worker.task.finished", self.node, task=self.task, ms=rng.randint(1_000, 600_000),
                  size=records * 64)

    def commit_output(self) -> None:
        path = f"/data/out/{self.dataset}/{self.job.replace('job_', 'run-')}"
        replicas = self.rng.sample(STORES, 3)
        for r, store in enumerate(replicas, start=1):
            self.emit("blobstore.write.ok", self.node, r=r, path=path, ip=STORE_IPS[store])
        primary = replicas[0]
        self.emit("blobstore.commit.ok", primary, path=path, size=self.rng.randint(1, 1 << 30))

    # -- anomalies ---------------------------------------------------------------------------------
    def inject(self, kind: str) -> None:
        """Turn the normal event list into an anomaly of ``kind``, touching only fixed events."""
        rng, events = self.rng, self.events
        fixed = [i for i, e in enumerate(events) if e.fixed]
        if kind == "missing_step":
            del events[rng.choice(fixed)]
        elif kind == "extra_step":
            i = rng.choice(fixed)
            events.insert(i + 1 if rng.random() < 0.5 else rng.randint(i + 1, len(events)), events[i])
        elif kind == "wrong_order":
            a, b = rng.choice([(a, b) for a, b in zip(fixed, fixed[1:]) if events[a].key != events[b].key])
            events[a], events[b] = events[b], events[a]
        elif kind == "unexpected_status":
            i = rng.choice([i for i, e in enumerate(events) if e.key in FAILURE_OF])
            events[i] = events[i]._replace(key=FAILURE_OF[events[i].key])
        elif kind == "new_template":
            hosts = {TEMPLATES[e.key].entity: e.host for e in reversed(events)}
            key = rng.choice([k for k in NOVEL_KEYS if TEMPLATES[k].entity in hosts])
            store = rng.choice(STORES)
            params: dict[str, object] = {
                "job": self.job, "token": self.token, "task": self.task, "ip": STORE_IPS[store], "port": 7070,
                "path": f"/data/in/{self.dataset}/part-{rng.randrange(64):04d}", "sectors": rng.randint(1, 64),
                "mb": rng.randint(4096, 65_536), "magic": f"0x{rng.getrandbits(16):04x}",
            }
            novel = _Event(key, hosts[TEMPLATES[key].entity], params, False)
            events.insert(rng.randint(1, len(events) - 1), novel)
        else:
            raise ValueError(f"unknown anomaly kind {kind!r}; expected one of {ANOMALY_KINDS}")

    def render(self, start_ms: int, clock: _Clock) -> list[str]:
        """Lines with strictly increasing timestamps, so a global sort keeps each session's order."""
        rng, t, lines = self.rng, start_ms, []
        for i, ev in enumerate(self.events):
            if i:
                lo, hi = GAP_MS.get(ev.key, DEFAULT_GAP_MS)
                t += rng.randint(lo, hi)
            tpl = TEMPLATES[ev.key]
            lines.append(f"{clock.stamp(t)} {tpl.level} [{ev.host}] {tpl.entity}: {tpl.fmt.format_map(ev.params)}")
        return lines


def _session(
    rng: random.Random, number: int, nightly: bool, kind: str, start_ms: int, clock: _Clock
) -> SyntheticSession:
    job = _Job(rng, number, nightly)
    job.build()
    if kind != NO_ANOMALY:
        job.inject(kind)
    lines = job.render(start_ms, clock)
    return SyntheticSession(job.job, [e.key for e in job.events], lines, int(kind != NO_ANOMALY), kind)


def _batch(rng: random.Random, clock: _Clock, day: int, n: int, first_job: int, kind_offset: int,
           anomaly_rate: float, quiet_end: bool) -> list[SyntheticSession]:
    """The ``n`` jobs submitted on ``day``, in submission order (job ids grow with time, as in a scheduler).

    Exactly ``round(n * anomaly_rate)`` of them are anomalous, kinds taken in turn from ``kind_offset`` so
    that every kind occurs. ``quiet_end`` (the last day) starts nothing late, so no line spills past it.
    """
    n_nightly = 0 if quiet_end else round(n * NIGHTLY_SHARE)
    last_start = DAY_MS - HOUR_MS if quiet_end else DAY_MS
    starts = sorted(
        [(rng.randrange(last_start), False) for _ in range(n - n_nightly)]
        + [(rng.randrange(DAY_MS - NIGHTLY_WINDOW_MS, DAY_MS), True) for _ in range(n_nightly)]
    )
    kinds = [NO_ANOMALY] * n
    for j, i in enumerate(sorted(rng.sample(range(n), round(n * anomaly_rate)))):
        kinds[i] = ANOMALY_KINDS[(kind_offset + j) % len(ANOMALY_KINDS)]
    base = day * DAY_MS
    return [
        _session(rng, first_job + i, nightly, kind, base + start, clock)
        for i, ((start, nightly), kind) in enumerate(zip(starts, kinds))
    ]


def generate_sessions(n: int, seed: int = 0, anomaly_rate: float = 0.03,
                      start_date: str = "2026-11-01") -> list[SyntheticSession]:
    """``n`` jobs of one day, in memory: for detector tests that need no files."""
    clock = _Clock(date.fromisoformat(start_date))
    return _batch(random.Random(f"krone-synthetic:{seed}:0"), clock, 0, n, FIRST_JOB, 0, anomaly_rate, False)


@cache
def _mean_job_lines(nightly: bool) -> float:
    """Average lines of a normal job, from a pilot of built (not rendered) jobs."""
    rng = random.Random("krone-synthetic:pilot")
    total = 0
    for number in range(2000):
        job = _Job(rng, number, nightly)
        job.build()
        total += len(job.events)
    return total / 2000


def _mean_day_lines(quiet_end: bool) -> float:
    """Expected lines per job on a day: what turns a line target into job counts."""
    share = 0.0 if quiet_end else NIGHTLY_SHARE
    return (1 - share) * _mean_job_lines(False) + share * _mean_job_lines(True)


def json_line(line: str) -> str:
    """A ``krone`` text line as a structured logger would write it: the JSON line the ``krone-json`` format
    reads (ECS-style keys, nested and flattened, the job id in ``labels.job``)."""
    m = LINE_RE.match(line)
    if m is None:
        raise ValueError(f"not a krone line: {line[:80]!r}")
    component, _, message = m["content"].partition(": ")
    job = SESSION_RE.search(message)
    return json.dumps({"@timestamp": m["timestamp"].replace(" ", "T") + "Z", "log": {"level": m["level"]},
                       "host.name": m["node"], "log.logger": component, "message": message,
                       "labels": {"job": job[1] if job else None}})


def _write_day(path: Path, lines: list[str], compress: bool) -> int:
    """Replace the day's file (and a stale twin with the other extension); return bytes written."""
    for stale in (path.with_name(path.name.removesuffix(".gz")), path.with_name(path.name + ".gz")):
        if stale != path:
            stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode("utf-8")
    with open(path, "wb") as fh:
        if compress:
            with gzip_lib.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=6) as gz:
                gz.write(data)
        else:
            fh.write(data)
    return path.stat().st_size


def _write_templates(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(("template_key", "template", "entity", "action", "status", "level", "kind"))
        for t in TEMPLATES.values():
            out.writerow((t.key, t.text, t.entity, t.action, t.status, t.level, t.kind))


def generate(
    out_dir: str | Path,
    *,
    days: int = 3,
    sessions_per_day: int = 2000,
    lines: int | None = None,
    anomaly_rate: float = 0.03,
    seed: int = 0,
    start_date: str = "2026-11-01",
    gzip: bool = False,
    source: str = "synthetic",
    layout: Layout = "text",
) -> GenerateSummary:
    """Write ``raw/<source>/dt=D/<source>.log[.gz]`` per day plus ``labels/<source>/{labels,templates}.csv``.

    ``layout``: ``text`` lines of the ``krone`` format, or ``json`` lines of the ``krone-json`` format
    (:func:`json_line`; the same jobs, labels and order).

    Days are generated one at a time; lines of jobs that run past midnight are carried into the next day's
    file, so memory holds about one day. ``lines`` (a target total, met to about one percent) overrides
    ``sessions_per_day``.
    """
    if layout not in LAYOUT_FORMATS:
        raise ValueError(f"layout {layout!r}: text or json")
    t0 = time.perf_counter()
    out = Path(out_dir)
    clock = _Clock(date.fromisoformat(start_date))
    labels_path = out / "labels" / source / "labels.csv"
    _write_templates(labels_path.with_name("templates.csv"))
    per_day: dict[str, int] = {}
    kinds: Counter[str] = Counter()
    n_bytes = produced = 0
    next_job = FIRST_JOB
    spill: list[str] = []
    with open(labels_path, "w", newline="", encoding="utf-8") as fh:
        labels = csv.writer(fh, lineterminator="\n")
        labels.writerow(("session_id", "label", "anomaly_kind", "first_date", "n_lines"))
        for day in range(days):
            n = sessions_per_day
            if lines is not None:  # re-planned every day, so the total lands close to the target
                one_job_each_day = sum(_mean_day_lines(d == days - 1) for d in range(day, days))
                n = max(1, round((lines - produced) / one_job_each_day))
            rng = random.Random(f"krone-synthetic:{seed}:{day}")
            sessions = _batch(rng, clock, day, n, next_job, sum(kinds.values()), anomaly_rate, day == days - 1)
            next_job += n
            today = clock.date(day)
            day_lines, spill = spill, []
            for s in sessions:
                labels.writerow((s.session_id, s.label, s.anomaly_kind, today, len(s.lines)))
                produced += len(s.lines)
                if s.label:
                    kinds[s.anomaly_kind] += 1
                if s.lines[-1].startswith(today):
                    day_lines.extend(s.lines)
                else:
                    for line in s.lines:
                        (day_lines if line.startswith(today) else spill).append(line)
            day_lines.sort()  # same-day timestamps sort as text; per-session order holds (strictly increasing)
            name = f"{source}.log.gz" if gzip else f"{source}.log"
            written = [json_line(line) for line in day_lines] if layout == "json" else day_lines
            n_bytes += _write_day(out / "raw" / source / f"dt={today}" / name, written, gzip)
            per_day[today] = len(day_lines)
    return GenerateSummary(
        lines_per_day=per_day,
        sessions=next_job - FIRST_JOB,
        anomalies={k: kinds[k] for k in ANOMALY_KINDS},
        lines=sum(per_day.values()),
        bytes=n_bytes,
        seconds=time.perf_counter() - t0,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m krone_jobs.synthetic OUT [--lines N]``: generate and print the summary (scale runs)."""
    p = argparse.ArgumentParser(description="Generate synthetic nested-execution logs with labelled anomalies.")
    p.add_argument("out_dir")
    p.add_argument("--days", type=int, default=3)
    p.add_argument("--sessions-per-day", type=int, default=2000)
    p.add_argument("--lines", type=int)
    p.add_argument("--anomaly-rate", type=float, default=0.03)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-date", default="2026-11-01")
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--source", default="synthetic")
    p.add_argument("--layout", choices=["text", "json"], default="text")
    a = p.parse_args(argv)
    summary = generate(a.out_dir, days=a.days, sessions_per_day=a.sessions_per_day, lines=a.lines,
                       anomaly_rate=a.anomaly_rate, seed=a.seed, start_date=a.start_date, gzip=a.gzip,
                       source=a.source, layout=a.layout)
    print(summary, f"lines/s={summary.lines_per_second:,.0f}")


if __name__ == "__main__":
    main()
