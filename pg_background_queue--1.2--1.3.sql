/* pg_background_queue--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_background_queue UPDATE TO '1.3'" to load this file. \quit

--
-- Version 1.3: task results and a server-side wait (issue 11), a queue
-- table that long transactions cannot slow down and batched commits
-- (issue 15).  Each part below keeps to its own section.
--

-- ==== section: results and pg_background_wait ====

/*
 * Results: the rows of a finished task's last row-returning statement, as a
 * JSON array of objects (pg_background_queue.max_result_size caps it; a cut
 * array sets result_truncated).  Written with the finished mark; NULL for a
 * task that did not finish or whose statements returned no rows.
 */
ALTER TABLE @extschema@.pg_background_tasks
	ADD COLUMN result jsonb,
	ADD COLUMN result_truncated boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN @extschema@.pg_background_tasks.result IS
	'Rows of the last statement of the finished task that returns rows, as a JSON array of objects (NULL if none returned rows, or the task did not finish)';
COMMENT ON COLUMN @extschema@.pg_background_tasks.result_truncated IS
	'True if result was cut at a row boundary to stay within pg_background_queue.max_result_size';

/* Wait in the server until the tasks end (SECURITY INVOKER: RLS applies). */
CREATE FUNCTION @extschema@.pg_background_wait(
	ids bigint[],
	timeout interval DEFAULT NULL)
RETURNS SETOF @extschema@.pg_background_tasks
AS 'MODULE_PATHNAME', 'pg_background_wait'
LANGUAGE C CALLED ON NULL INPUT VOLATILE PARALLEL UNSAFE ROWS 10;

COMMENT ON FUNCTION @extschema@.pg_background_wait(bigint[], interval) IS
	'Wait until every listed task of yours is finished, failed or cancelled and return their rows; NULL timeout waits without limit';

REVOKE ALL ON FUNCTION @extschema@.pg_background_wait(bigint[], interval) FROM PUBLIC;

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
				   '@extschema@.pg_background_enqueue(text, text, integer, timestamptz, text, bigint[]), '
				   '@extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz, text[]), '
				   '@extschema@.pg_background_cancel(bigint), '
				   '@extschema@.pg_background_retry(bigint), '
				   '@extschema@.pg_background_reschedule(bigint, integer, timestamptz), '
				   '@extschema@.pg_background_wait(bigint[], interval), '
				   '@extschema@.pg_background_queue_purge(interval), '
				   '@extschema@._pg_background_queue_workers(), '
				   '@extschema@._pg_background_queue_configured_topics(), '
				   '@extschema@._pg_background_queue_paused_topics(), '
				   '@extschema@.pg_background_queue_topic_config(text) TO %s', role);
END;
$$;

/* roles granted usage before 1.3 may wait too */
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
		EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION '
			'@extschema@.pg_background_wait(bigint[], interval) TO %s', grantee);
	END LOOP;
END;
$$;

-- ==== end of section: results and pg_background_wait ====


-- ==== section: queue storage and claim ====

/*
 * The claim floor (issue 15): workers claim from where the last claim of
 * their role ended instead of walking the dead index entries of every task
 * claimed since the last vacuum (which a long transaction anywhere in the
 * cluster keeps from being removed).  This trigger notes the key of every
 * row that becomes claimable, by INSERT or by any UPDATE, so that the
 * floor is lowered to it when the transaction commits (C: claim_floor.c).
 */
CREATE FUNCTION @extschema@._pg_background_queue_claimable()
RETURNS trigger
AS 'MODULE_PATHNAME', 'pg_background_queue_claimable'
LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@._pg_background_queue_claimable() FROM PUBLIC;

CREATE TRIGGER pg_background_tasks_claimable
	BEFORE INSERT OR UPDATE ON @extschema@.pg_background_tasks
	FOR EACH ROW
	WHEN (NEW.state IN ('pending', 'retrying'))
	EXECUTE FUNCTION @extschema@._pg_background_queue_claimable();

/*
 * The task table is small and hot: every task is inserted and updated
 * twice.  Vacuum it after a fixed number of dead rows rather than a
 * fraction of the table (the default 20% lets a table of a million
 * finished tasks collect 200,000 dead ones first), without cost-based
 * sleeps, so that autovacuum keeps up with a sustained load.
 */
ALTER TABLE @extschema@.pg_background_tasks SET (
	autovacuum_vacuum_scale_factor = 0.0,
	autovacuum_vacuum_threshold = 10000,
	autovacuum_vacuum_insert_scale_factor = 0.0,
	autovacuum_vacuum_insert_threshold = 10000,
	autovacuum_analyze_scale_factor = 0.02,
	autovacuum_vacuum_cost_delay = 0
);

-- ==== end of section: queue storage and claim ====


-- ==== section: batched commits ====

-- ==== end of section: batched commits ====
