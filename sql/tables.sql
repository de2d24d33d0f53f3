-- krone warehouse tables (see /work/shared/design.md, "Warehouse tables").
--
-- One file for DuckDB and PostgreSQL: only types and syntax both accept (TEXT, DATE, BIGINT, INTEGER,
-- DOUBLE PRECISION, BOOLEAN, TIMESTAMP WITH TIME ZONE, CHECK, composite PRIMARY KEY, IF NOT EXISTS).
-- Idempotent: krone_jobs.warehouse.Warehouse.ensure_schema() runs it before every write session.
-- Timestamps are instants (WITH TIME ZONE), written as UTC. Partition keys are (source, dt).
-- ensure_schema() drops "--" comments and splits on semicolons: keep both out of string literals.

-- Drain3 templates per source. count is the miner's running total (replaced, not added, on upsert, so a
-- rerun of a day cannot double it); first/last_seen_dt only ever widen.
CREATE TABLE IF NOT EXISTS templates (
    source        TEXT   NOT NULL,
    template_id   TEXT   NOT NULL,
    template      TEXT   NOT NULL,
    first_seen_dt DATE   NOT NULL,
    last_seen_dt  DATE   NOT NULL,
    count         BIGINT NOT NULL,
    PRIMARY KEY (source, template_id)
);

-- The Log Abstraction Model: one row per template (origin offline | llm | override | file). The hierarchy
-- stage applies human overrides before writing, so the latest write wins here.
CREATE TABLE IF NOT EXISTS hierarchy (
    source      TEXT    NOT NULL,
    template_id TEXT    NOT NULL,
    template    TEXT    NOT NULL,
    entity      TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    entity_node TEXT    NOT NULL,
    action_node TEXT    NOT NULL,
    status_node TEXT    NOT NULL,
    origin      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    updated_at  TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source, template_id)
);

-- Verdict cache of the scoring job, per model version (a new model must not reuse old verdicts).
-- cache_key: BLAKE2b of the chunk's overall identifier and, below the entity level, its session's content
-- (krone_jobs/jobs/score.py, "Cache key"); kseq_key: the level key "<level>|<parent>|<nodes>".
CREATE TABLE IF NOT EXISTS kseq_cache (
    source        TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    cache_key     TEXT    NOT NULL,
    level         TEXT    NOT NULL CHECK (level IN ('status', 'action', 'entity')),
    kseq_key      TEXT    NOT NULL,
    verdict       BOOLEAN NOT NULL, -- true: anomalous
    score         DOUBLE PRECISION,
    detector      TEXT    NOT NULL,
    reason        TEXT,
    hits          BIGINT  NOT NULL,
    first_seen    TIMESTAMP WITH TIME ZONE NOT NULL,
    last_seen     TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source, model_version, cache_key)
);

-- One row per anomalous session and day: the first anomalous chunk (early exit) and why.
-- segment_template_ids and line_refs are JSON arrays in TEXT (no JSON type is common to both engines).
CREATE TABLE IF NOT EXISTS anomaly_reports (
    source               TEXT    NOT NULL,
    dt                   DATE    NOT NULL,
    run_id               TEXT    NOT NULL,
    session_id           TEXT    NOT NULL,
    level                TEXT    NOT NULL CHECK (level IN ('status', 'action', 'entity')),
    chunk_index          INTEGER NOT NULL,
    kseq_key             TEXT    NOT NULL,
    cache_key            TEXT,             -- the chunk's kseq_cache key (NULL: a template the model lacks)
    segment_template_ids TEXT    NOT NULL, -- JSON array of template ids
    line_refs            TEXT    NOT NULL, -- JSON array of "file:line"
    detector             TEXT    NOT NULL,
    score                DOUBLE PRECISION NOT NULL,
    reason               TEXT    NOT NULL,
    model_version        TEXT    NOT NULL,
    created_at           TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source, dt, session_id)
);

-- Per stage and partition: counts, quarantined lines, llm_calls, llm_tokens, cache hits, seconds.
CREATE TABLE IF NOT EXISTS run_metrics (
    source      TEXT NOT NULL,
    dt          DATE NOT NULL,
    stage       TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    value       DOUBLE PRECISION NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source, dt, stage, metric)
);

-- Per partition: the last score failure that no retry mends (a damaged file, the reports gate), with an id of
-- what the day was scored from; the catch-up sets the day aside while that is unchanged. A successful score
-- of the day removes the row (krone_jobs/score_failures.py).
CREATE TABLE IF NOT EXISTS score_failures (
    source          TEXT    NOT NULL,
    dt              DATE    NOT NULL,
    run_id          TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    message         TEXT    NOT NULL,
    inputs          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at TIMESTAMP WITH TIME ZONE NOT NULL,
    failed_at       TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source, dt)
);

-- Operators' verdicts on cached KRONE Seqs (append-only log: the latest verdict per cache_key counts).
-- Keyed by cache_key, not model version, so feedback outlives a retrain.
CREATE TABLE IF NOT EXISTS feedback (
    source     TEXT NOT NULL,
    cache_key  TEXT NOT NULL,
    kseq_key   TEXT,
    verdict    TEXT NOT NULL CHECK (verdict IN ('normal', 'anomalous')),
    note       TEXT,
    author     TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL
);
