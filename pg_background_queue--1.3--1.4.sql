/* pg_background_queue--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_background_queue UPDATE TO '1.4'" to load this file. \quit

--
-- Version 1.4: less work per task for the workers (issue 15).
--

/*
 * Two row triggers of 1.2 and 1.3 fired for no statement of the workers,
 * yet every statement paid for them: PostgreSQL reads and plans a
 * trigger's WHEN clause again for each statement, and a BEFORE UPDATE
 * trigger locks the row (one more WAL record) before the UPDATE writes it.
 * They become one AFTER UPDATE trigger without a WHEN clause, whose C
 * function does what both did:
 *
 *	- a row claimable (pending or retrying) after the UPDATE: its key is
 *	  noted so that the claim floor is lowered to it at commit (1.3's
 *	  BEFORE INSERT OR UPDATE claimable trigger);
 *	- a task with dependents that ended: _pg_background_queue_after_end
 *	  releases or cancels them (1.2's after_end trigger, which called it
 *	  WHEN OLD.has_dependents AND the state became finished, failed or
 *	  cancelled), called by the C function with the same trigger data.
 *
 * The claimable trigger stays, for INSERT alone and without a WHEN clause:
 * its function checks the state.
 */
CREATE FUNCTION @extschema@._pg_background_queue_task_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'pg_background_queue_task_changed'
LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@._pg_background_queue_task_changed() FROM PUBLIC;

DROP TRIGGER pg_background_tasks_after_end ON @extschema@.pg_background_tasks;
DROP TRIGGER pg_background_tasks_claimable ON @extschema@.pg_background_tasks;

CREATE TRIGGER pg_background_tasks_claimable
	BEFORE INSERT ON @extschema@.pg_background_tasks
	FOR EACH ROW
	EXECUTE FUNCTION @extschema@._pg_background_queue_claimable();

CREATE TRIGGER pg_background_tasks_changed
	AFTER UPDATE ON @extschema@.pg_background_tasks
	FOR EACH ROW
	EXECUTE FUNCTION @extschema@._pg_background_queue_task_changed();

/*
 * The task table's four CHECK constraints become domains.  PostgreSQL
 * reads and plans every CHECK constraint of a table again for each
 * statement that writes a row, whichever columns it sets (a fifth of the
 * workers' CPU per task in 1.3); a domain's check is planned once per
 * session and runs only where a value of the column is written.  Same
 * names, same SQLSTATE (23514) for a violation, the same values allowed.
 */
CREATE DOMAIN @extschema@.pg_background_queue_sql AS text
	CONSTRAINT pg_background_tasks_sql_nonempty CHECK (VALUE <> '');
CREATE DOMAIN @extschema@.pg_background_queue_priority AS integer
	CONSTRAINT pg_background_tasks_priority_range CHECK (VALUE >= 0);
CREATE DOMAIN @extschema@.pg_background_queue_count AS integer
	CONSTRAINT pg_background_tasks_count_range CHECK (VALUE >= 0);
CREATE DOMAIN @extschema@.pg_background_queue_dedupe_key AS text
	CONSTRAINT pg_background_tasks_dedupe_key_nonempty CHECK (VALUE <> '');

COMMENT ON DOMAIN @extschema@.pg_background_queue_sql IS
	'SQL of a task: not empty';
COMMENT ON DOMAIN @extschema@.pg_background_queue_priority IS
	'Priority of a task: 0 or more (lower runs first)';
COMMENT ON DOMAIN @extschema@.pg_background_queue_count IS
	'A count of attempts or retries: 0 or more';
COMMENT ON DOMAIN @extschema@.pg_background_queue_dedupe_key IS
	'Dedupe key of a task: not empty';

/*
 * The statistics view reads attempts, and a column a view reads cannot
 * change its type: for the length of the change the view reads no column
 * of the table, then its own definition again.  CREATE OR REPLACE keeps
 * the view itself (its privileges and comment; the options are given
 * again).
 */
DO $$
DECLARE
	stats_query text := pg_catalog.pg_get_viewdef(
		'@extschema@.pg_background_queue_task_stats'::pg_catalog.regclass);
BEGIN
	CREATE OR REPLACE VIEW @extschema@.pg_background_queue_task_stats
	WITH (security_barrier = true) AS
		SELECT NULL::text AS topic,
			   NULL::@extschema@.pg_background_queue_task_state AS state,
			   NULL::bigint AS tasks,
			   NULL::bigint AS attempts,
			   NULL::interval AS oldest_age,
			   NULL::float8 AS p50_run_seconds,
			   NULL::float8 AS p95_run_seconds,
			   NULL::float8 AS max_run_seconds
		 WHERE false;

	/* the table is rewritten once (a domain with a check is not binary coercible) */
	ALTER TABLE @extschema@.pg_background_tasks
		DROP CONSTRAINT pg_background_tasks_sql_nonempty,
		DROP CONSTRAINT pg_background_tasks_priority_range,
		DROP CONSTRAINT pg_background_tasks_attempts_range,
		DROP CONSTRAINT pg_background_tasks_dedupe_key_nonempty,
		ALTER COLUMN sql_statement TYPE @extschema@.pg_background_queue_sql,
		ALTER COLUMN priority TYPE @extschema@.pg_background_queue_priority,
		ALTER COLUMN attempts TYPE @extschema@.pg_background_queue_count,
		ALTER COLUMN retry_count TYPE @extschema@.pg_background_queue_count,
		ALTER COLUMN dedupe_key TYPE @extschema@.pg_background_queue_dedupe_key;

	EXECUTE 'CREATE OR REPLACE VIEW @extschema@.pg_background_queue_task_stats '
		'WITH (security_barrier = true) AS ' || stats_query;
END;
$$;
