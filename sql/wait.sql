-- pg_background_wait: argument errors, tasks that already ended, other
-- roles' tasks, the timeout (nothing runs: max_parallel_running_tasks_count = 0)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql
-- names the tasks a1 and a2 in messages (their ids depend on earlier files)
CREATE FUNCTION pg_temp.named(msg text, a1 bigint, a2 bigint) RETURNS text
LANGUAGE sql AS $$
	SELECT regexp_replace(regexp_replace(msg, '\m' || a1 || '\M', 'a1', 'g'),
						  '\m' || a2 || '\M', 'a2', 'g')
$$;
GRANT EXECUTE ON FUNCTION pg_temp.named(text, bigint, bigint) TO PUBLIC;
CREATE ROLE pgbq_wait_a LOGIN;
CREATE ROLE pgbq_wait_b LOGIN;
CREATE ROLE pgbq_wait_c LOGIN;		-- never granted
SELECT pg_background_queue_grant_usage('pgbq_wait_a');
SELECT pg_background_queue_grant_usage('pgbq_wait_b');

-- the signature and privileges
SELECT p.oid::regprocedure, p.prosecdef, p.provolatile, p.proretset
  FROM pg_proc p WHERE p.proname = 'pg_background_wait';
SELECT has_function_privilege('pgbq_wait_a', 'pg_background_wait(bigint[], interval)', 'EXECUTE') AS a,
	   has_function_privilege('pgbq_wait_c', 'pg_background_wait(bigint[], interval)', 'EXECUTE') AS c;

SET ROLE pgbq_wait_a;
SELECT pg_background_enqueue('SELECT 1') AS a1 \gset
SELECT pg_background_enqueue('SELECT 2') AS a2 \gset
SELECT pg_background_cancel(:a2);

-- argument errors
SELECT pg_temp.try('SELECT * FROM pg_background_wait(NULL)');
SELECT pg_temp.try('SELECT * FROM pg_background_wait(ARRAY[1, NULL]::bigint[])');
SELECT pg_temp.try('SELECT * FROM pg_background_wait(''{{1},{2}}''::bigint[])');
SELECT pg_temp.try('SELECT * FROM pg_background_wait(ARRAY[1]::bigint[], ''-1 second'')');
-- nothing to wait for
SELECT count(*) FROM pg_background_wait('{}');

-- a task that already ended returns at once, listed once however often named
SELECT id = :a2 AS is_a2, state, errors FROM pg_background_wait(ARRAY[:a2, :a2]);

-- the timeout names the unfinished tasks (0: look once)
SELECT pg_temp.named(pg_temp.try(format('SELECT * FROM pg_background_wait(ARRAY[%s, %s], ''0'')', :a1, :a2)), :a1, :a2) AS look_once;
SELECT pg_temp.named(pg_temp.try(format('SELECT * FROM pg_background_wait(ARRAY[%s, %s], ''10 ms'')', :a1, :a2)), :a1, :a2) AS timeout;

-- unknown ids
SELECT pg_temp.try('SELECT * FROM pg_background_wait(ARRAY[-1, -2]::bigint[])');

-- other roles' tasks are unknown to you
SET ROLE pgbq_wait_b;
SELECT pg_temp.named(pg_temp.try(format('SELECT * FROM pg_background_wait(ARRAY[%s])', :a2)), :a1, :a2) AS foreign_id;
SET ROLE pgbq_wait_c;
SELECT pg_temp.try(format('SELECT * FROM pg_background_wait(ARRAY[%s])', :a2)) AS not_granted;

-- REPEATABLE READ cannot see a task end: an error instead of a hang, but
-- tasks that already ended are fine
SET ROLE pgbq_wait_a;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT id = :a2 AS is_a2, state FROM pg_background_wait(ARRAY[:a2]);
SELECT pg_temp.named(pg_temp.try(format('SELECT * FROM pg_background_wait(ARRAY[%s])', :a1)), :a1, :a2) AS repeatable_read;
ROLLBACK;
SELECT pg_background_cancel(:a1);
RESET ROLE;
DELETE FROM pg_background_tasks WHERE owner = 'pgbq_wait_a'::regrole;
DROP OWNED BY pgbq_wait_a, pgbq_wait_b, pgbq_wait_c;
DROP ROLE pgbq_wait_a, pgbq_wait_b, pgbq_wait_c;
