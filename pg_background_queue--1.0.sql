/* pg_background_queue--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION pg_background_queue" to load this file. \quit

/*
 * Fail early, with a hint, when the library is not preloaded.
 */
CREATE FUNCTION @extschema@._pg_background_queue_assert_preloaded()
RETURNS void
AS 'MODULE_PATHNAME', '_pg_background_queue_assert_preloaded'
LANGUAGE C STRICT;

SELECT @extschema@._pg_background_queue_assert_preloaded();

/*
 * Every object lives in the schema the extension is created in
 * (@extschema@); every reference inside the extension's functions is
 * schema-qualified, and functions that run with elevated rights pin their
 * search_path.
 */

CREATE TYPE @extschema@.pg_background_queue_task_state AS ENUM (
	'pending',
	'running',
	'retrying',
	'failed',
	'finished',
	'cancelled'
);

CREATE TABLE @extschema@.pg_background_tasks (
	id					bigserial PRIMARY KEY,
	sql_statement		text NOT NULL,
	topic				text,
	owner				regrole NOT NULL,
	priority			integer NOT NULL,
	state				@extschema@.pg_background_queue_task_state NOT NULL DEFAULT 'pending',
	joined_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	run_at				timestamptz,
	next_run_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	started_at			timestamptz,
	closed_at			timestamptz,
	attempts			integer NOT NULL DEFAULT 0,
	retry_count			integer NOT NULL DEFAULT 0,
	retry_delay_in_sec	integer NOT NULL DEFAULT 0,
	errors				text,
	error_history		jsonb NOT NULL DEFAULT '[]',
	worker_pid			integer,
	CONSTRAINT pg_background_tasks_sql_nonempty CHECK (sql_statement <> ''),
	CONSTRAINT pg_background_tasks_priority_range CHECK (priority >= 0),
	CONSTRAINT pg_background_tasks_attempts_range CHECK (attempts >= 0 AND retry_count >= 0)
);

COMMENT ON TABLE @extschema@.pg_background_tasks IS
	'Durable queue of SQL tasks run by pg_background_queue workers';
COMMENT ON COLUMN @extschema@.pg_background_tasks.owner IS
	'Role that enqueued the task; the task runs with exactly its privileges';
COMMENT ON COLUMN @extschema@.pg_background_tasks.next_run_at IS
	'Time the task became (or becomes) eligible to run';
COMMENT ON COLUMN @extschema@.pg_background_tasks.attempts IS
	'Attempts started so far (recorded when each attempt starts)';
COMMENT ON COLUMN @extschema@.pg_background_tasks.retry_count IS
	'Retries performed so far';
COMMENT ON COLUMN @extschema@.pg_background_tasks.errors IS
	'Error message of the latest failed attempt';
COMMENT ON COLUMN @extschema@.pg_background_tasks.error_history IS
	'One object per failed attempt: attempt, sqlstate, message, detail, at';

/*
 * The claim index matches the claim order exactly: per owner (workers are
 * bound to a role), lowest priority number first, then the time the task
 * became eligible, then id.  Only claimable rows are in it.
 */
CREATE INDEX pg_background_tasks_claim_idx
	ON @extschema@.pg_background_tasks (owner, priority, next_run_at, id)
	WHERE state IN ('pending', 'retrying');

CREATE INDEX pg_background_tasks_running_idx
	ON @extschema@.pg_background_tasks (topic)
	WHERE state = 'running';

CREATE INDEX pg_background_tasks_closed_idx
	ON @extschema@.pg_background_tasks (closed_at)
	WHERE state IN ('finished', 'failed', 'cancelled');

/*
 * Pre-aggregated statistics that survive retention: one row per (database
 * day, topic, owner, state), updated in batches when terminal tasks are
 * pruned.
 */
CREATE TABLE @extschema@.pg_background_queue_stats (
	day					date NOT NULL,
	topic				text NOT NULL DEFAULT '',
	owner				regrole NOT NULL,
	state				@extschema@.pg_background_queue_task_state NOT NULL,
	tasks				bigint NOT NULL DEFAULT 0,
	attempts			bigint NOT NULL DEFAULT 0,
	total_run_seconds	double precision NOT NULL DEFAULT 0,
	max_run_seconds		double precision NOT NULL DEFAULT 0,
	total_wait_seconds	double precision NOT NULL DEFAULT 0,
	PRIMARY KEY (day, topic, owner, state)
);

COMMENT ON TABLE @extschema@.pg_background_queue_stats IS
	'Per-day, per-topic counters of pruned tasks (pre-aggregated)';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.pg_background_tasks', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.pg_background_tasks_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.pg_background_queue_stats', '');

/*
 * Nobody but the extension's functions writes these tables.  Users read
 * their own rows through row level security; superusers see everything.
 */
REVOKE ALL ON @extschema@.pg_background_tasks FROM PUBLIC;
REVOKE ALL ON @extschema@.pg_background_queue_stats FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.pg_background_tasks_id_seq FROM PUBLIC;

ALTER TABLE @extschema@.pg_background_tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.pg_background_queue_stats ENABLE ROW LEVEL SECURITY;

CREATE POLICY pg_background_tasks_owner_read
	ON @extschema@.pg_background_tasks
	FOR SELECT
	USING (pg_catalog.pg_has_role(owner, 'USAGE'));

CREATE POLICY pg_background_queue_stats_owner_read
	ON @extschema@.pg_background_queue_stats
	FOR SELECT
	USING (pg_catalog.pg_has_role(owner, 'USAGE'));

/* ---------------------------------------------------------------------
 * User API (C)
 * ------------------------------------------------------------------- */

CREATE FUNCTION @extschema@.pg_background_enqueue(
	sql text,
	topic text DEFAULT NULL,
	priority integer DEFAULT NULL,
	run_at timestamptz DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_background_enqueue'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_enqueue(text, text, integer, timestamptz) IS
	'Queue one SQL statement (or script) to run in the background as the current role';

CREATE FUNCTION @extschema@.pg_background_enqueue_many(
	sqls text[],
	topic text DEFAULT NULL,
	priority integer DEFAULT NULL,
	run_at timestamptz DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'pg_background_enqueue_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;

COMMENT ON FUNCTION @extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz) IS
	'Queue many SQL statements in one call; returns their ids in input order';

CREATE FUNCTION @extschema@.pg_background_cancel(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'pg_background_cancel'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_cancel(bigint) IS
	'Cancel a pending or retrying task, or interrupt a running one; cancelled tasks are not retried';

CREATE FUNCTION @extschema@.pg_background_retry(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'pg_background_retry'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_retry(bigint) IS
	'Put a failed or cancelled task back in the queue';

CREATE FUNCTION @extschema@.pg_background_queue_purge(older_than interval DEFAULT '0')
RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_background_queue_purge'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_queue_purge(interval) IS
	'Delete your finished, failed and cancelled tasks closed before now() - older_than, keeping their statistics';

/* ---------------------------------------------------------------------
 * Administration (C); superuser unless granted explicitly
 * ------------------------------------------------------------------- */

CREATE FUNCTION @extschema@.pg_background_queue_ensure_workers()
RETURNS void
AS 'MODULE_PATHNAME', 'pg_background_queue_ensure_workers'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.pg_background_queue_active_workers_count()
RETURNS integer
AS 'MODULE_PATHNAME', 'pg_background_queue_active_workers_count'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.pg_background_queue_calibrate_workers_count()
RETURNS integer
AS 'MODULE_PATHNAME', 'pg_background_queue_calibrate_workers_count'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_queue_ensure_workers() IS
	'Recover orphaned tasks of this database and make sure workers run for every role with eligible tasks';
COMMENT ON FUNCTION @extschema@.pg_background_queue_active_workers_count() IS
	'Number of live task workers in the cluster (from shared memory)';
COMMENT ON FUNCTION @extschema@.pg_background_queue_calibrate_workers_count() IS
	'Free worker slots whose process is gone and return the number of live task workers';

CREATE FUNCTION @extschema@._pg_background_queue_workers(
	OUT pid integer,
	OUT datid oid,
	OUT roleid oid,
	OUT state text,
	OUT task_id bigint,
	OUT topic text,
	OUT task_started_at timestamptz,
	OUT backend_start timestamptz,
	OUT tasks_done bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'pg_background_queue_workers'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@._pg_background_queue_configured_topics()
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'pg_background_queue_configured_topics'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@._pg_background_queue_configured_topics() IS
	'Topics named in pg_background_queue.topic_config, plus NULL for the default topic';

CREATE FUNCTION @extschema@.pg_background_queue_topic_config(
	topic text,
	OUT configured boolean,
	OUT max_parallel_running_tasks_count integer,
	OUT retry_count integer,
	OUT delay_in_sec double precision,
	OUT priority integer,
	OUT timeout_in_sec integer)
RETURNS record
AS 'MODULE_PATHNAME', 'pg_background_queue_topic_config'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@.pg_background_queue_topic_config(text) IS
	'Effective configuration of a topic (NULL: the default topic) after merging topic_config over the GUCs';

CREATE VIEW @extschema@.pg_background_queue_workers AS
	SELECT w.pid,
		   d.datname AS database,
		   pg_catalog.pg_get_userbyid(w.roleid) AS role,
		   w.state,
		   w.task_id,
		   w.topic,
		   w.task_started_at AS running_since,
		   w.backend_start,
		   w.tasks_done
	  FROM @extschema@._pg_background_queue_workers() w
	  LEFT JOIN pg_catalog.pg_database d ON d.oid = w.datid;

COMMENT ON VIEW @extschema@.pg_background_queue_workers IS
	'Live pg_background_queue workers, read from shared memory';

/*
 * Effective configuration of every configured topic, of the default (NULL)
 * topic, and of every topic that currently has queued or running tasks
 * visible to the caller.
 */
CREATE VIEW @extschema@.pg_background_queue_topics AS
	WITH counts AS (
		SELECT t.topic,
			   pg_catalog.count(*) FILTER (WHERE t.state IN ('pending', 'retrying')) AS pending,
			   pg_catalog.count(*) FILTER (WHERE t.state = 'running') AS running
		  FROM @extschema@.pg_background_tasks t
		 WHERE t.state IN ('pending', 'retrying', 'running')
		   AND pg_catalog.pg_has_role(t.owner, 'USAGE')	-- views bypass RLS
		 GROUP BY t.topic
	), names AS (
		SELECT c.topic FROM @extschema@._pg_background_queue_configured_topics() AS c(topic)
		UNION
		SELECT counts.topic FROM counts
	)
	SELECT n.topic,
		   c.configured,
		   c.max_parallel_running_tasks_count,
		   c.retry_count,
		   c.delay_in_sec,
		   c.priority,
		   c.timeout_in_sec,
		   COALESCE(k.pending, 0) AS pending,
		   COALESCE(k.running, 0) AS running
	  FROM names n
	  CROSS JOIN LATERAL @extschema@.pg_background_queue_topic_config(n.topic) c
	  LEFT JOIN counts k ON k.topic IS NOT DISTINCT FROM n.topic;

COMMENT ON VIEW @extschema@.pg_background_queue_topics IS
	'Effective per-topic configuration (topic_config merged over the GUC defaults) with queue counts';

/* ---------------------------------------------------------------------
 * Retention: delete terminal tasks and fold them into the statistics
 * table in one statement (pre-aggregated, one row per day/topic/owner/
 * state).  Called by the maintenance worker and by
 * pg_background_queue_purge(), always as the extension owner.
 * ------------------------------------------------------------------- */

CREATE FUNCTION @extschema@._pg_background_queue_prune(
	cutoff timestamptz,
	for_role oid,
	batch integer)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
	WITH victims AS (
		SELECT t.id
		  FROM @extschema@.pg_background_tasks t
		 WHERE t.state IN ('finished', 'failed', 'cancelled')
		   AND t.closed_at < cutoff
		   AND (for_role IS NULL OR pg_catalog.pg_has_role(for_role, t.owner, 'USAGE'))
		 ORDER BY t.closed_at
		 LIMIT batch
		   FOR UPDATE SKIP LOCKED
	), deleted AS (
		DELETE FROM @extschema@.pg_background_tasks t
		 USING victims v
		 WHERE t.id = v.id
		RETURNING t.*
	), agg AS (
		SELECT (d.closed_at AT TIME ZONE 'UTC')::date AS day,
			   COALESCE(d.topic, '') AS topic,
			   d.owner,
			   d.state,
			   pg_catalog.count(*) AS tasks,
			   pg_catalog.sum(d.attempts) AS attempts,
			   COALESCE(pg_catalog.sum(EXTRACT(epoch FROM d.closed_at - d.started_at)), 0)::float8 AS run_s,
			   COALESCE(pg_catalog.max(EXTRACT(epoch FROM d.closed_at - d.started_at)), 0)::float8 AS max_s,
			   COALESCE(pg_catalog.sum(EXTRACT(epoch FROM d.started_at - d.joined_at)), 0)::float8 AS wait_s
		  FROM deleted d
		 GROUP BY 1, 2, 3, 4
	), upsert AS (
		INSERT INTO @extschema@.pg_background_queue_stats AS s
			(day, topic, owner, state, tasks, attempts,
			 total_run_seconds, max_run_seconds, total_wait_seconds)
		SELECT day, topic, owner, state, tasks, attempts, run_s, max_s, wait_s
		  FROM agg
		ON CONFLICT (day, topic, owner, state) DO UPDATE
		   SET tasks = s.tasks + EXCLUDED.tasks,
			   attempts = s.attempts + EXCLUDED.attempts,
			   total_run_seconds = s.total_run_seconds + EXCLUDED.total_run_seconds,
			   max_run_seconds = GREATEST(s.max_run_seconds, EXCLUDED.max_run_seconds),
			   total_wait_seconds = s.total_wait_seconds + EXCLUDED.total_wait_seconds
		RETURNING 1
	)
	SELECT pg_catalog.count(*) FROM deleted;
$$;

/* ---------------------------------------------------------------------
 * Privileges
 * ------------------------------------------------------------------- */

CREATE FUNCTION @extschema@.pg_background_queue_grant_usage(role regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be NULL'
			USING ERRCODE = 'null_value_not_allowed';
	END IF;
	EXECUTE format('GRANT USAGE ON SCHEMA @extschema@ TO %s', role);
	EXECUTE format('GRANT SELECT ON @extschema@.pg_background_tasks, '
				   '@extschema@.pg_background_queue_stats, '
				   '@extschema@.pg_background_queue_topics, '
				   '@extschema@.pg_background_queue_workers TO %s', role);
	EXECUTE format('GRANT EXECUTE ON FUNCTION '
				   '@extschema@.pg_background_enqueue(text, text, integer, timestamptz), '
				   '@extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz), '
				   '@extschema@.pg_background_cancel(bigint), '
				   '@extschema@.pg_background_retry(bigint), '
				   '@extschema@.pg_background_queue_purge(interval) TO %s', role);
END;
$$;

COMMENT ON FUNCTION @extschema@.pg_background_queue_grant_usage(regrole) IS
	'Let a role enqueue, watch, cancel, retry and purge its own tasks';

REVOKE ALL ON FUNCTION
	@extschema@.pg_background_enqueue(text, text, integer, timestamptz),
	@extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz),
	@extschema@.pg_background_cancel(bigint),
	@extschema@.pg_background_retry(bigint),
	@extschema@.pg_background_queue_purge(interval),
	@extschema@.pg_background_queue_ensure_workers(),
	@extschema@.pg_background_queue_active_workers_count(),
	@extschema@.pg_background_queue_calibrate_workers_count(),
	@extschema@.pg_background_queue_grant_usage(regrole),
	@extschema@._pg_background_queue_prune(timestamptz, oid, integer)
FROM PUBLIC;

REVOKE ALL ON @extschema@.pg_background_queue_workers FROM PUBLIC;
REVOKE ALL ON @extschema@.pg_background_queue_topics FROM PUBLIC;
