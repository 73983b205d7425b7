/* pg_background_queue--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_background_queue UPDATE TO '1.2'" to load this file. \quit

/* ---------------------------------------------------------------------
 * 1.2, part 1: views and functions leak nothing.
 *
 * The views are owned by the extension owner, so they bypass row level
 * security and filter on pg_has_role themselves.  Without security_barrier
 * the planner may evaluate a caller's cheap function in WHERE before that
 * filter, on every row: a leaky function would see other roles' rows.
 * security_barrier keeps every non-leakproof qual of the caller above the
 * view's own.  (security_invoker, 15 and later, would not do for the
 * workers view, whose function reads shared memory, nor keep the view
 * readable without SELECT on the table's columns; the barrier is enough.)
 * ------------------------------------------------------------------- */

ALTER VIEW @extschema@.pg_background_queue_workers SET (security_barrier = true);
ALTER VIEW @extschema@.pg_background_queue_task_stats SET (security_barrier = true);

/*
 * Internal functions behind the views.  PostgreSQL checks EXECUTE on a
 * function called in a view as the caller (unlike SELECT on the view's
 * tables), so the roles that read the views keep EXECUTE: those granted
 * usage (pg_background_queue_grant_usage below).  Roles never granted lose
 * it, as the security matrix says.  What a granted role gets from them
 * directly is what it reads through the views: workers of roles it has
 * the privileges of (the function filters on has_privs_of_role), the
 * effective configuration of topics (the administrator's settings, no
 * task data) and the paused topics.
 */
REVOKE ALL ON FUNCTION
	@extschema@._pg_background_queue_workers(),
	@extschema@._pg_background_queue_configured_topics(),
	@extschema@.pg_background_queue_topic_config(text)
FROM PUBLIC;

/* ---------------------------------------------------------------------
 * 1.2, part 2: pause and resume a topic (cluster-wide, durable: shared
 * memory plus a file in the data directory; see src/workflow.c).
 * Administration functions: superuser unless granted explicitly.
 * ------------------------------------------------------------------- */

CREATE FUNCTION @extschema@.pg_background_queue_pause(topic text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'pg_background_queue_pause'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_queue_pause(text) IS
	'Start no more tasks of a topic (NULL: the default topic) in any database until resumed; running tasks finish, enqueue still works. False if already paused';

CREATE FUNCTION @extschema@.pg_background_queue_resume(topic text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'pg_background_queue_resume'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_queue_resume(text) IS
	'Start tasks of a paused topic (NULL: the default topic) again. False if it was not paused';

CREATE FUNCTION @extschema@._pg_background_queue_paused_topics()
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'pg_background_queue_paused_topics'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION @extschema@._pg_background_queue_paused_topics() IS
	'Paused topics (NULL: the default topic), read from shared memory';

REVOKE ALL ON FUNCTION
	@extschema@.pg_background_queue_pause(text),
	@extschema@.pg_background_queue_resume(text),
	@extschema@._pg_background_queue_paused_topics()
FROM PUBLIC;

/*
 * The topics view gains `paused` (a paused topic is listed even when it
 * has no tasks and no configuration) and the security barrier.
 */
CREATE OR REPLACE VIEW @extschema@.pg_background_queue_topics
WITH (security_barrier = true) AS
	WITH counts AS (
		SELECT t.topic,
			   pg_catalog.count(*) FILTER (WHERE t.state IN ('pending', 'retrying')) AS pending,
			   pg_catalog.count(*) FILTER (WHERE t.state = 'running') AS running
		  FROM @extschema@.pg_background_tasks t
		 WHERE t.state IN ('pending', 'retrying', 'running')
		   AND pg_catalog.pg_has_role(t.owner, 'USAGE')	-- views bypass RLS
		 GROUP BY t.topic
	), paused AS (
		SELECT p.topic FROM @extschema@._pg_background_queue_paused_topics() AS p(topic)
	), names AS (
		SELECT c.topic FROM @extschema@._pg_background_queue_configured_topics() AS c(topic)
		UNION
		SELECT counts.topic FROM counts
		UNION
		SELECT paused.topic FROM paused
	)
	SELECT n.topic,
		   c.configured,
		   c.max_parallel_running_tasks_count,
		   c.retry_count,
		   c.delay_in_sec,
		   c.priority,
		   c.timeout_in_sec,
		   COALESCE(k.pending, 0) AS pending,
		   COALESCE(k.running, 0) AS running,
		   EXISTS (SELECT 1 FROM paused p WHERE p.topic IS NOT DISTINCT FROM n.topic) AS paused
	  FROM names n
	  CROSS JOIN LATERAL @extschema@.pg_background_queue_topic_config(n.topic) c
	  LEFT JOIN counts k ON k.topic IS NOT DISTINCT FROM n.topic;

/* ---------------------------------------------------------------------
 * 1.2, part 3: dedupe keys.
 *
 * While a task of the same owner, topic and key is queued (pending,
 * retrying, or any other state before it runs again), enqueue with that
 * key writes nothing and returns the queued task's id.  The unique partial
 * index makes it race-free: enqueue inserts with ON CONFLICT DO NOTHING,
 * which waits for a concurrent inserter of the same key and then either
 * sees its row (it committed) or inserts its own (it rolled back).  The
 * predicate names the states a task is *not* queued in, so that states
 * added later (they are queued ones) are covered without a new index.
 * ------------------------------------------------------------------- */

ALTER TABLE @extschema@.pg_background_tasks
	ADD COLUMN dedupe_key text,
	ADD CONSTRAINT pg_background_tasks_dedupe_key_nonempty CHECK (dedupe_key <> '');

COMMENT ON COLUMN @extschema@.pg_background_tasks.dedupe_key IS
	'Dedupe key: while a task of the same owner, topic and key is queued, enqueue returns its id instead of adding one';

CREATE UNIQUE INDEX pg_background_tasks_dedupe_idx
	ON @extschema@.pg_background_tasks (owner, (COALESCE(topic, '')), dedupe_key)
	WHERE dedupe_key IS NOT NULL
	  AND state NOT IN ('running', 'finished', 'failed', 'cancelled');

/*
 * A running task no longer holds its key: enqueue with that key queues a
 * new task and takes the key from the running one (an UPDATE of its row),
 * so that the running task, should it come back to the queue (a failed
 * attempt, a give-back at shutdown), never meets its key there.  Retry of
 * a failed or cancelled task gives its key up if another task holds it.
 * No trigger: a BEFORE ROW trigger would lock (and WAL-log) every row
 * every bookkeeping UPDATE touches.
 */

/* ---------------------------------------------------------------------
 * 1.2, part 4: dependencies (a DAG of SQL steps).
 *
 * A task enqueued with `after` (ids of prerequisite tasks) is `waiting`
 * until every prerequisite is finished; the transaction that finishes the
 * last one makes it pending.  A prerequisite that ends failed or cancelled
 * cancels its waiting dependents in the same transaction (their own
 * dependents follow, through the same trigger).
 *
 * Enqueue marks each prerequisite `has_dependents` (an UPDATE: it locks
 * the prerequisite's row until the enqueue commits), so the end of a
 * prerequisite and the enqueue of a dependent are serialized: whichever
 * comes second sees the other.  Only rows marked so fire the trigger; the
 * end of every other task pays for the WHEN test alone.  The trigger locks
 * the dependents (FOR UPDATE, in id order) before it reads the other
 * prerequisites, so two prerequisites ending at once cannot both miss
 * that the other is done.
 *
 * 'waiting' is a new value of the state enum: PostgreSQL does not let the
 * transaction that adds it use it, so nothing below names it as an enum
 * literal (the trigger compares state::text; C code names it at run time).
 * ------------------------------------------------------------------- */

ALTER TYPE @extschema@.pg_background_queue_task_state ADD VALUE 'waiting';

ALTER TABLE @extschema@.pg_background_tasks
	ADD COLUMN after bigint[],
	ADD COLUMN has_dependents boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN @extschema@.pg_background_tasks.after IS
	'Prerequisite tasks: the task waits until every one of them is finished, and is cancelled if one fails or is cancelled';
COMMENT ON COLUMN @extschema@.pg_background_tasks.has_dependents IS
	'Some task was enqueued after this one (its end releases or cancels them)';

CREATE INDEX pg_background_tasks_after_idx
	ON @extschema@.pg_background_tasks USING gin (after)
	WHERE after IS NOT NULL;

/*
 * Announce released dependents to the workers at commit (C: the same
 * commit-time wake-up as enqueue).
 */
CREATE FUNCTION @extschema@._pg_background_queue_note_work(roles oid[])
RETURNS void
AS 'MODULE_PATHNAME', 'pg_background_queue_note_work'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

REVOKE ALL ON FUNCTION @extschema@._pg_background_queue_note_work(oid[]) FROM PUBLIC;

CREATE FUNCTION @extschema@._pg_background_queue_after_end()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	d record;
	released oid[] := '{}';
	why text;
BEGIN
	why := pg_catalog.format('prerequisite task %s %s', NEW.id, NEW.state);
	IF NEW.errors IS NOT NULL THEN
		why := why || ': ' || NEW.errors;
	END IF;
	FOR d IN
		SELECT t.id, t.owner, t.after
		  FROM @extschema@.pg_background_tasks t
		 WHERE t.after @> ARRAY[NEW.id]
		   AND t.state::text = 'waiting'
		 ORDER BY t.id
		   FOR UPDATE
	LOOP
		IF NEW.state::text = 'finished' THEN
			IF NOT EXISTS (SELECT 1
							 FROM @extschema@.pg_background_tasks p
							WHERE p.id = ANY (d.after)
							  AND p.state::text <> 'finished') THEN
				UPDATE @extschema@.pg_background_tasks t
				   SET state = 'pending',
					   next_run_at = GREATEST(COALESCE(t.run_at, now()), now())
				 WHERE t.id = d.id;
				released := released || d.owner::oid;
			END IF;
		ELSE
			UPDATE @extschema@.pg_background_tasks t
			   SET state = 'cancelled',
				   closed_at = now(),
				   errors = why,
				   error_history = t.error_history || jsonb_build_array(jsonb_build_object(
						'attempt', t.attempts, 'sqlstate', '57014',
						'message', 'cancelled: ' || why,
						'detail', pg_catalog.format('prerequisite task %s', NEW.id),
						'at', now()))
			 WHERE t.id = d.id;
			IF pg_catalog.current_setting('pg_background_queue.notify', true) = 'on' THEN
				PERFORM pg_catalog.pg_notify('pg_background_queue', d.id || ' cancelled');
			END IF;
		END IF;
	END LOOP;
	IF pg_catalog.cardinality(released) > 0 THEN
		PERFORM @extschema@._pg_background_queue_note_work(released);
	END IF;
	RETURN NULL;
END;
$$;

REVOKE ALL ON FUNCTION @extschema@._pg_background_queue_after_end() FROM PUBLIC;

CREATE TRIGGER pg_background_tasks_after_end
	AFTER UPDATE ON @extschema@.pg_background_tasks
	FOR EACH ROW
	WHEN (OLD.has_dependents
		  AND NEW.state IN ('finished', 'failed', 'cancelled')
		  AND NEW.state IS DISTINCT FROM OLD.state)
	EXECUTE FUNCTION @extschema@._pg_background_queue_after_end();

/* enqueue takes a key and prerequisites, enqueue_many keys: new signatures */
DROP FUNCTION @extschema@.pg_background_enqueue(text, text, integer, timestamptz);
DROP FUNCTION @extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz);

CREATE FUNCTION @extschema@.pg_background_enqueue(
	sql text,
	topic text DEFAULT NULL,
	priority integer DEFAULT NULL,
	run_at timestamptz DEFAULT NULL,
	dedupe_key text DEFAULT NULL,
	after bigint[] DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'pg_background_enqueue'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_enqueue(text, text, integer, timestamptz, text, bigint[]) IS
	'Queue one SQL statement (or script) to run in the background as the current role; with a dedupe key, return the queued task of that key instead if there is one; with after, wait until those tasks are finished';

CREATE FUNCTION @extschema@.pg_background_enqueue_many(
	sqls text[],
	topic text DEFAULT NULL,
	priority integer DEFAULT NULL,
	run_at timestamptz DEFAULT NULL,
	dedupe_keys text[] DEFAULT NULL)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'pg_background_enqueue_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;

COMMENT ON FUNCTION @extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz, text[]) IS
	'Queue many SQL statements in one call (dedupe_keys: one key or NULL per statement); returns their ids in input order';

REVOKE ALL ON FUNCTION
	@extschema@.pg_background_enqueue(text, text, integer, timestamptz, text, bigint[]),
	@extschema@.pg_background_enqueue_many(text[], text, integer, timestamptz, text[])
FROM PUBLIC;

/* ---------------------------------------------------------------------
 * 1.2, part 5: reschedule your own queued task.
 * ------------------------------------------------------------------- */

CREATE FUNCTION @extschema@.pg_background_reschedule(
	id bigint,
	priority integer DEFAULT NULL,
	run_at timestamptz DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'pg_background_reschedule'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION @extschema@.pg_background_reschedule(bigint, integer, timestamptz) IS
	'Change the priority and/or start time of your pending, retrying or waiting task; false for anything else';

REVOKE ALL ON FUNCTION @extschema@.pg_background_reschedule(bigint, integer, timestamptz) FROM PUBLIC;

/* ---------------------------------------------------------------------
 * Privileges of 1.2: grant_usage covers the functions the views call;
 * roles granted usage before 1.2 get the same.
 * ------------------------------------------------------------------- */

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
				   '@extschema@.pg_background_queue_purge(interval), '
				   '@extschema@._pg_background_queue_workers(), '
				   '@extschema@._pg_background_queue_configured_topics(), '
				   '@extschema@._pg_background_queue_paused_topics(), '
				   '@extschema@.pg_background_queue_topic_config(text) TO %s', role);
END;
$$;

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
		PERFORM @extschema@.pg_background_queue_grant_usage(grantee);
	END LOOP;
END;
$$;
