-- Dependencies: `after` puts a task in `waiting` until its prerequisites are
-- finished; a failed or cancelled prerequisite cancels its dependents
-- (transitively) in the same transaction.  No worker runs in this suite, so
-- the tests end prerequisites by hand (as the workers' bookkeeping does,
-- with UPDATEs of the state as the table owner) and by pg_background_cancel.
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql
CREATE ROLE pgbq_dep_a LOGIN;
CREATE ROLE pgbq_dep_b LOGIN;
SELECT pg_background_queue_grant_usage('pgbq_dep_a');
SELECT pg_background_queue_grant_usage('pgbq_dep_b');

-- what a worker does when a task ends
CREATE FUNCTION pg_temp.finish(id bigint, how text) RETURNS void LANGUAGE sql AS $$
	UPDATE pg_background_tasks SET state = 'running' WHERE pg_background_tasks.id = finish.id;
	UPDATE pg_background_tasks
	   SET state = how::pg_background_queue_task_state, closed_at = now(),
		   errors = CASE WHEN how = 'failed' THEN 'division by zero' END
	 WHERE pg_background_tasks.id = finish.id;
$$;
CREATE FUNCTION pg_temp.states(ids bigint[]) RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(t.state::text, ' ' ORDER BY u.o)
	  FROM unnest(ids) WITH ORDINALITY u(id, o) JOIN pg_background_tasks t ON t.id = u.id;
$$;

-- a diamond: a -> (b, c) -> d
SET ROLE pgbq_dep_a;
SELECT pg_background_enqueue('SELECT 1', 'dag') AS a \gset
SELECT pg_background_enqueue('SELECT 2', 'dag', after => ARRAY[:a]) AS b \gset
SELECT pg_background_enqueue('SELECT 3', 'dag', after => ARRAY[:a]) AS c \gset
SELECT pg_background_enqueue('SELECT 4', 'dag', after => ARRAY[:b, :c, :b]) AS d \gset
RESET ROLE;
SELECT pg_temp.states(ARRAY[:a, :b, :c, :d]) AS "a b c d";
SELECT id = :a AS is_a, has_dependents FROM pg_background_tasks WHERE id IN (:a, :b, :c, :d) ORDER BY id;
SELECT pg_temp.finish(:a, 'finished');
SELECT pg_temp.states(ARRAY[:a, :b, :c, :d]) AS "a b c d";
SELECT pg_temp.finish(:b, 'finished');
SELECT pg_temp.states(ARRAY[:a, :b, :c, :d]) AS "a b c d";
SELECT pg_temp.finish(:c, 'finished');
SELECT pg_temp.states(ARRAY[:a, :b, :c, :d]) AS "a b c d";

-- a prerequisite already finished counts as met
SET ROLE pgbq_dep_a;
SELECT pg_temp.states(ARRAY[pg_background_enqueue('SELECT 5', 'dag', after => ARRAY[:a, :b])]) AS after_finished;
SELECT pg_temp.states(ARRAY[pg_background_enqueue('SELECT 5', 'dag', after => ARRAY[:a, :d])]) AS after_finished_and_pending;
-- an empty list is no prerequisite
SELECT pg_temp.states(ARRAY[pg_background_enqueue('SELECT 5', 'dag', after => '{}')]) AS empty_after;
RESET ROLE;

-- a failure in the middle cancels exactly its descendants: f -> g -> h, and
-- i0 -> i beside them
SET ROLE pgbq_dep_a;
SELECT pg_background_enqueue('SELECT 1', 'dag2') AS f \gset
SELECT pg_background_enqueue('SELECT 2', 'dag2', after => ARRAY[:f]) AS g \gset
SELECT pg_background_enqueue('SELECT 3', 'dag2', after => ARRAY[:g]) AS h \gset
SELECT pg_background_enqueue('SELECT 4', 'dag2') AS i0 \gset
SELECT pg_background_enqueue('SELECT 4', 'dag2', after => ARRAY[:i0]) AS i \gset
RESET ROLE;
SELECT pg_temp.finish(:f, 'finished');
SELECT pg_temp.finish(:g, 'failed');
SELECT pg_temp.states(ARRAY[:f, :g, :h, :i0, :i]) AS "f g h i0 i";
SELECT replace(errors, :g::text, 'G') AS errors, error_history -> -1 ->> 'sqlstate' AS sqlstate,
	   replace(error_history -> -1 ->> 'detail', :g::text, 'G') AS detail
  FROM pg_background_tasks WHERE id = :h;
-- enqueue after a failed task: cancelled at once, saying why
SET ROLE pgbq_dep_a;
SELECT pg_background_enqueue('SELECT 9', 'dag2', after => ARRAY[:g]) AS k \gset
SELECT state, replace(errors, :g::text, 'G') AS errors FROM pg_background_tasks WHERE id = :k;
-- re-running a branch: retry the failed task, then its cancelled descendants;
-- they wait again until it finishes
SELECT pg_background_retry(:g), pg_background_retry(:h);
SELECT pg_temp.states(ARRAY[:g, :h]) AS "g h";
RESET ROLE;
SELECT pg_temp.finish(:g, 'finished');
SELECT pg_temp.states(ARRAY[:g, :h]) AS "g h";

-- cancelling a waiting task cascades too; pg_background_cancel knows waiting
SET ROLE pgbq_dep_a;
SELECT pg_background_enqueue('SELECT 1', 'dag3', run_at => '2999-01-01+00') AS m \gset
SELECT pg_background_enqueue('SELECT 2', 'dag3', after => ARRAY[:m]) AS n \gset
SELECT pg_background_enqueue('SELECT 3', 'dag3', after => ARRAY[:n]) AS o \gset
SELECT pg_background_cancel(:n) AS cancelled_waiting;
SELECT pg_temp.states(ARRAY[:m, :n, :o]) AS "m n o";
SELECT replace(errors, :n::text, 'N') AS errors FROM pg_background_tasks WHERE id = :o;
RESET ROLE;

-- bad prerequisites: nothing enqueued
SET ROLE pgbq_dep_a;
SELECT pg_background_enqueue('SELECT 1', 'dag3', run_at => '2999-01-01+00') AS lone \gset
RESET ROLE;
SELECT count(*) AS before FROM pg_background_tasks \gset
SET ROLE pgbq_dep_b;
-- another role's task is not visible: same error as a missing one
SELECT replace(pg_temp.try(format('SELECT pg_background_enqueue(%L, after => ARRAY[%s])', 'SELECT 1', :lone)),
			   :lone::text, 'LONE') AS other_roles_task;
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', after => ARRAY[0, -5])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', after => ARRAY[NULL]::bigint[])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', after => ARRAY[[1]]::bigint[])$q$);
RESET ROLE;
SELECT count(*) - :before AS written FROM pg_background_tasks;
-- B's failed attempt did not mark A's task
SELECT has_dependents FROM pg_background_tasks WHERE id = :lone;

-- dedupe key and prerequisites together
SET ROLE pgbq_dep_a;
SELECT pg_background_enqueue('SELECT 1', 'dag4', run_at => '2999-01-01+00') AS p \gset
SELECT pg_background_enqueue('SELECT 2', 'dag4', dedupe_key => 'step2', after => ARRAY[:p]) AS q \gset
SELECT pg_background_enqueue('SELECT 2', 'dag4', dedupe_key => 'step2', after => ARRAY[:p]) = :q AS deduped_while_waiting;
RESET ROLE;

DELETE FROM pg_background_tasks WHERE owner IN ('pgbq_dep_a'::regrole, 'pgbq_dep_b'::regrole);
DROP OWNED BY pgbq_dep_a, pgbq_dep_b;
DROP ROLE pgbq_dep_a, pgbq_dep_b;
