-- Results: the rows of a finished task's last row-returning statement, as a
-- JSON array of objects, capped by pg_background_queue.max_result_size.
-- Workers run for this file only (the other files keep them off), and
-- pg_background_wait makes the output deterministic.
-- Earlier files leave queued tasks behind: their topics stay paused, and
-- the tasks here run in topic 'results'.
SET timezone = 'UTC';
CREATE TEMP TABLE paused_here AS
SELECT DISTINCT topic FROM pg_background_tasks
 WHERE state IN ('pending', 'retrying') AND topic IS DISTINCT FROM 'results';
SELECT count(pg_background_queue_pause(topic)) >= 0 AS paused FROM paused_here;
ALTER SYSTEM SET pg_background_queue.max_parallel_running_tasks_count = 2;
SELECT pg_reload_conf();

-- the columns
SELECT attname, format_type(atttypid, atttypmod), attnotnull
  FROM pg_attribute
 WHERE attrelid = 'pg_background_tasks'::regclass
   AND attname IN ('result', 'result_truncated')
 ORDER BY attnum;

CREATE TABLE results_target (n int);
GRANT ALL ON results_target TO PUBLIC;

SELECT
	pg_background_enqueue(topic => 'results', sql => $$SELECT 1 AS a, 'x'::text AS b, NULL::int AS c, 2.5::numeric AS d, true AS e, '{"k": [1, 2]}'::jsonb AS f, ARRAY[1, 2] AS g, '2020-01-02 03:04:05+00'::timestamptz AS h$$) AS types,
	pg_background_enqueue('SELECT g AS n FROM generate_series(1, 3) g', 'results') AS rows3,
	pg_background_enqueue('SELECT 1 AS first; SELECT 2 AS second; INSERT INTO results_target VALUES (1)', 'results') AS last_with_rows,
	pg_background_enqueue('INSERT INTO results_target VALUES (2)', 'results') AS no_rows,
	pg_background_enqueue('SELECT 1 AS n WHERE false', 'results') AS zero_rows,
	pg_background_enqueue('INSERT INTO results_target VALUES (3) RETURNING n', 'results') AS returning,
	pg_background_enqueue('SELECT 1 AS x, 2 AS x', 'results') AS duplicate_names,
	pg_background_enqueue('SHOW pg_background_queue.max_result_size', 'results') AS utility,
	pg_background_enqueue($$SET pg_background_queue.max_result_size = 40; SELECT g AS n, 'abc' AS s FROM generate_series(1, 100) g$$, 'results') AS truncated,
	pg_background_enqueue('SELECT 1/0 AS boom', 'results') AS failed
\gset

SELECT id = :types AS types, id = :rows3 AS rows3, state, result, result_truncated
  FROM pg_background_wait(ARRAY[:types, :rows3, :last_with_rows, :no_rows,
								 :zero_rows, :returning, :duplicate_names,
								 :utility, :failed])
 ORDER BY id;

-- SET of a superuser-only parameter in a task needs a superuser: the
-- regression role is one, so the cap applies to the statement after it
SELECT state, result, result_truncated, pg_column_size(result) < 100 AS small
  FROM pg_background_wait(ARRAY[:truncated]);

-- 0 keeps nothing (from the statement that starts with it on)
SELECT pg_background_enqueue('SELECT 1 AS n; SET pg_background_queue.max_result_size = 0; SELECT 2 AS n', 'results') AS off \gset
SELECT state, result, result_truncated FROM pg_background_wait(ARRAY[:off]);

-- GUC validation
-- (SQLSTATEs only: the range message differs between major versions)
CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END
$$;
SELECT pg_temp.sqlstate_of('SET pg_background_queue.max_result_size = -1') AS negative,
	   pg_temp.sqlstate_of($$SET pg_background_queue.max_result_size = '65MB'$$) AS too_big,
	   pg_temp.sqlstate_of($$SET pg_background_queue.max_result_size = 'lots'$$) AS not_a_size;
SET pg_background_queue.max_result_size = '1kB';
SHOW pg_background_queue.max_result_size;
RESET pg_background_queue.max_result_size;
CREATE ROLE pgbq_res_user;
SET ROLE pgbq_res_user;
SET pg_background_queue.max_result_size = '1kB';
RESET ROLE;
DROP ROLE pgbq_res_user;

-- a task retried after a failure shows the rows of the attempt that finished
SELECT pg_background_enqueue('SELECT 1 / count(*)::int AS n FROM results_target WHERE n = 99', 'results') AS flaky \gset
SELECT state, result, errors FROM pg_background_wait(ARRAY[:flaky]);
INSERT INTO results_target VALUES (99);
SELECT pg_background_retry(:flaky);
SELECT state, attempts, result FROM pg_background_wait(ARRAY[:flaky]);

-- back to no workers for the files after this one
ALTER SYSTEM RESET pg_background_queue.max_parallel_running_tasks_count;
SELECT pg_reload_conf();
DO $$
DECLARE
	deadline timestamptz := clock_timestamp() + interval '120 s';
BEGIN
	WHILE EXISTS (SELECT FROM pg_background_queue_workers) LOOP
		IF clock_timestamp() > deadline THEN
			RAISE EXCEPTION 'task workers did not exit';
		END IF;
		PERFORM pg_sleep(0.05);
	END LOOP;
END
$$;
SELECT count(pg_background_queue_resume(topic)) >= 0 AS resumed FROM paused_here;
DELETE FROM pg_background_tasks WHERE topic = 'results';
DROP TABLE results_target;
