/* pg_background_queue--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_background_queue UPDATE TO '1.1'" to load this file. \quit

/*
 * 1.1: per-topic, per-state statistics of the live queue (counts, age of
 * the oldest task, run-time percentiles), read by the Python client's
 * stats() and the Prometheus exporter.  A view owned by the extension
 * owner bypasses row level security, so it filters on pg_has_role exactly
 * as the policy does.
 */
CREATE VIEW @extschema@.pg_background_queue_task_stats AS
	SELECT t.topic,
		   t.state,
		   pg_catalog.count(*) AS tasks,
		   pg_catalog.sum(t.attempts) AS attempts,
		   pg_catalog.now() - pg_catalog.min(t.joined_at) AS oldest_age,
		   pg_catalog.percentile_cont(0.5) WITHIN GROUP (
				ORDER BY EXTRACT(epoch FROM t.closed_at - t.started_at))
				AS p50_run_seconds,
		   pg_catalog.percentile_cont(0.95) WITHIN GROUP (
				ORDER BY EXTRACT(epoch FROM t.closed_at - t.started_at))
				AS p95_run_seconds,
		   pg_catalog.max(EXTRACT(epoch FROM t.closed_at - t.started_at))::float8
				AS max_run_seconds
	  FROM @extschema@.pg_background_tasks t
	 WHERE pg_catalog.pg_has_role(t.owner, 'USAGE')	-- views bypass RLS
	 GROUP BY t.topic, t.state;

COMMENT ON VIEW @extschema@.pg_background_queue_task_stats IS
	'Tasks per topic and state visible to the caller: count, attempts, age of the oldest, run-time percentiles (seconds)';

REVOKE ALL ON @extschema@.pg_background_queue_task_stats FROM PUBLIC;

/*
 * Roles granted usage under 1.0 read the new view too: they are exactly
 * the grantees of SELECT on the task table.
 */
DO $$
DECLARE
	grantee regrole;
BEGIN
	FOR grantee IN
		SELECT DISTINCT a.grantee::regrole
		  FROM pg_catalog.pg_class c,
			   LATERAL pg_catalog.aclexplode(c.relacl) a
		 WHERE c.oid = '@extschema@.pg_background_tasks'::pg_catalog.regclass
		   AND a.privilege_type = 'SELECT'
		   AND a.grantee <> 0
		   AND a.grantee <> c.relowner
	LOOP
		EXECUTE pg_catalog.format(
			'GRANT SELECT ON @extschema@.pg_background_queue_task_stats TO %s',
			grantee);
	END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION @extschema@.pg_background_queue_grant_usage(role regrole)
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
				   '@extschema@.pg_background_queue_task_stats, '
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
