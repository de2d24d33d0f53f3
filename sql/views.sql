-- Report views for operations (DuckDB and PostgreSQL, run after tables.sql by ensure_schema()).
--
-- CREATE OR REPLACE keeps grants on PostgreSQL, but PostgreSQL refuses to rename or retype an existing
-- view column: a change like that needs a DROP VIEW first (a migration, not this file).
-- ensure_schema() drops "--" comments and splits on semicolons: keep both out of string literals.

-- How many sessions were flagged, per day and level of the first anomalous chunk.
CREATE OR REPLACE VIEW v_anomalies_per_day AS
SELECT source,
       dt,
       level,
       COUNT(*)   AS anomalies,
       AVG(score) AS avg_score,
       MAX(score) AS max_score
FROM anomaly_reports
GROUP BY source, dt, level;

-- Which actions and entities keep going wrong. The node is read from the report's level key
-- "<level>|<parent>|<nodes>": a status chunk's parent is its action node, an action chunk's parent is its
-- entity node. Entity-level reports are left out: they judge the order of all entities of a session, not
-- one entity. Names come from the hierarchy table when it holds the node (else NULL, the id still reads
-- "A:<entity>/<action>" or "E:<entity>"). anomaly_rank = 1 is the worst node per source and node_kind.
CREATE OR REPLACE VIEW v_top_anomalous_nodes AS
WITH flagged AS (
    SELECT source,
           dt,
           CASE WHEN level = 'status' THEN 'action' ELSE 'entity' END AS node_kind,
           split_part(kseq_key, '|', 2) AS node
    FROM anomaly_reports
    WHERE level IN ('status', 'action')
),
names AS (
    SELECT source, 'action' AS node_kind, action_node AS node, MIN(entity) AS entity, MIN(action) AS action
    FROM hierarchy
    GROUP BY source, action_node
    UNION ALL
    SELECT source, 'entity' AS node_kind, entity_node AS node, MIN(entity) AS entity, NULL AS action
    FROM hierarchy
    GROUP BY source, entity_node
)
SELECT f.source,
       f.node_kind,
       f.node,
       n.entity,
       n.action,
       COUNT(*)             AS anomalies,
       COUNT(DISTINCT f.dt) AS days,
       MIN(f.dt)            AS first_dt,
       MAX(f.dt)            AS last_dt,
       RANK() OVER (PARTITION BY f.source, f.node_kind ORDER BY COUNT(*) DESC) AS anomaly_rank
FROM flagged f
LEFT JOIN names n ON n.source = f.source AND n.node_kind = f.node_kind AND n.node = f.node
GROUP BY f.source, f.node_kind, f.node, n.entity, n.action;

-- Templates first seen per day: a burst usually means a deployment or a new failure mode.
CREATE OR REPLACE VIEW v_new_templates_per_day AS
SELECT source,
       first_seen_dt AS dt,
       COUNT(*)      AS new_templates
FROM templates
GROUP BY source, first_seen_dt;

-- Sessions and KRONE Seq keys flagged on more than one day (kind = 'session' | 'kseq').
CREATE OR REPLACE VIEW v_repeat_offenders AS
SELECT source,
       'session'          AS kind,
       session_id         AS subject,
       COUNT(DISTINCT dt) AS days,
       COUNT(*)           AS reports,
       MIN(dt)            AS first_dt,
       MAX(dt)            AS last_dt
FROM anomaly_reports
GROUP BY source, session_id
HAVING COUNT(DISTINCT dt) > 1
UNION ALL
SELECT source,
       'kseq'             AS kind,
       kseq_key           AS subject,
       COUNT(DISTINCT dt) AS days,
       COUNT(*)           AS reports,
       MIN(dt)            AS first_dt,
       MAX(dt)            AS last_dt
FROM anomaly_reports
GROUP BY source, kseq_key
HAVING COUNT(DISTINCT dt) > 1;

-- LLM calls and tokens per day, summed over the stages that use the LLM (hierarchy, score).
CREATE OR REPLACE VIEW v_llm_spend_per_day AS
SELECT source,
       dt,
       SUM(CASE WHEN metric = 'llm_calls' THEN value ELSE 0 END)  AS llm_calls,
       SUM(CASE WHEN metric = 'llm_tokens' THEN value ELSE 0 END) AS llm_tokens
FROM run_metrics
WHERE metric IN ('llm_calls', 'llm_tokens')
GROUP BY source, dt;

-- One row per source and day: how its night went, stage by stage (NULL: that stage has not recorded the
-- day). scored is false for a day with KRONE Seqs but no score run (parsed before the source's first model,
-- or a score that failed): krone_score takes such days up on its next run of the source. earlier_days_stale:
-- how many of the week before this day's parse found stale (a log file delivered late; `krone status`).
-- score_failure: the error of the day's last score run, where it failed for good and the day has not scored
-- since (score_failures holds the message; the catch-up sets such a day aside until what it reads changes).
CREATE OR REPLACE VIEW v_daily_pipeline AS
WITH day AS (
    SELECT source,
           dt,
           MAX(CASE WHEN stage = 'parse' AND metric = 'raw_lines' THEN value END)          AS raw_lines,
           MAX(CASE WHEN stage = 'parse' AND metric = 'quarantined' THEN value END)        AS quarantined,
           MAX(CASE WHEN stage = 'parse' AND metric = 'new_templates' THEN value END)      AS new_templates,
           MAX(CASE WHEN stage = 'sessionize' AND metric = 'sessions' THEN value END)      AS sessions_closed,
           MAX(CASE WHEN stage = 'sessionize' AND metric = 'open_sessions' THEN value END) AS sessions_open,
           MAX(CASE WHEN stage = 'kseqs' AND metric = 'chunks' THEN value END)             AS kseqs,
           MAX(CASE WHEN stage = 'score' AND metric = 'sessions' THEN value END)           AS scored_sessions,
           MAX(CASE WHEN stage = 'score' AND metric = 'anomalies' THEN value END)          AS anomalies,
           MAX(CASE WHEN stage = 'score' AND metric = 'routed_sessions' THEN value END)    AS routed_sessions,
           MAX(CASE WHEN stage = 'score' AND metric = 'llm_calls' THEN value END)          AS llm_calls,
           MAX(CASE WHEN stage = 'score' AND metric = 'model_version' THEN value END)      AS model_version,
           SUM(CASE WHEN stage IN ('parse', 'sessionize', 'kseqs') AND metric = 'seconds' THEN value END)
                                                                                           AS parse_seconds,
           MAX(CASE WHEN stage = 'score' AND metric = 'seconds' THEN value END)            AS score_seconds,
           MAX(CASE WHEN stage = 'parse' AND metric = 'stale_earlier_days' THEN value END) AS earlier_days_stale,
           COUNT(CASE WHEN stage = 'kseqs' THEN 1 END) > 0                                 AS kseqs_written,
           COUNT(CASE WHEN stage = 'score' THEN 1 END) > 0                                 AS scored
    FROM run_metrics
    WHERE stage IN ('parse', 'sessionize', 'hierarchy', 'kseqs', 'score')
    GROUP BY source, dt
)
SELECT source,
       dt,
       raw_lines,
       quarantined,
       quarantined / NULLIF(raw_lines, 0)    AS quarantine_ratio,
       new_templates,
       sessions_closed,
       sessions_open,
       kseqs,
       kseqs_written,
       scored,
       scored_sessions,
       anomalies,
       anomalies / NULLIF(scored_sessions, 0) AS anomaly_rate,
       routed_sessions,
       llm_calls,
       model_version,
       parse_seconds,
       score_seconds,
       earlier_days_stale,
       (SELECT f.error FROM score_failures f WHERE f.source = day.source AND f.dt = day.dt) AS score_failure
FROM day;
