-- Reschedule: change the priority and/or start time of your own pending,
-- retrying or waiting task; false for anything else; validated as enqueue.
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql
SET timezone = 'UTC';
CREATE ROLE pgbq_rs_a LOGIN;
CREATE ROLE pgbq_rs_b LOGIN;
CREATE ROLE pgbq_rs_c LOGIN;		-- never granted
SELECT pg_background_queue_grant_usage('pgbq_rs_a');
SELECT pg_background_queue_grant_usage('pgbq_rs_b');

SET ROLE pgbq_rs_a;
SELECT pg_background_enqueue('SELECT 1', 'rs', 10, '2999-01-01+00') AS t1 \gset
SELECT pg_background_reschedule(:t1, priority => 3) AS prio_changed;
SELECT priority, run_at = '2999-01-01+00' AS run_at_kept FROM pg_background_tasks WHERE id = :t1;
SELECT pg_background_reschedule(:t1, run_at => '2998-06-01 12:00:00.123456+00') AS time_changed;
SELECT priority, run_at, next_run_at = run_at AS eligible_then FROM pg_background_tasks WHERE id = :t1;
SELECT pg_background_reschedule(:t1, 0, '2997-01-01+00') AS both_changed;
SELECT priority, run_at FROM pg_background_tasks WHERE id = :t1;
-- a waiting task keeps its place in line for its prerequisites; its run_at
-- applies when it is released
SELECT pg_background_enqueue('SELECT 2', 'rs', after => ARRAY[:t1]) AS t2 \gset
SELECT pg_background_reschedule(:t2, 5, '2996-01-01+00') AS waiting_changed;
SELECT state, priority, run_at, next_run_at <> run_at AS not_yet_eligible FROM pg_background_tasks WHERE id = :t2;
-- nothing to reschedule, bad values: errors, nothing changed
SELECT pg_temp.try(format('SELECT pg_background_reschedule(%s)', :t1));
SELECT pg_temp.try(format('SELECT pg_background_reschedule(%s, -1)', :t1));
SELECT pg_temp.try(format('SELECT pg_background_reschedule(%s, run_at => %L)', :t1, 'infinity'));
SELECT pg_temp.try($q$SELECT pg_background_reschedule(NULL, 1)$q$);
SELECT priority, run_at FROM pg_background_tasks WHERE id = :t1;
-- not queued any more, or no such task: false
SELECT pg_background_cancel(:t2);
SELECT pg_background_reschedule(:t2, 1) AS cancelled_task;
SELECT pg_background_reschedule(-1, 1) AS no_such_task;
RESET ROLE;

-- another role's task: false, untouched; a role never granted: 42501
SET ROLE pgbq_rs_b;
SELECT pg_background_reschedule(:t1, 99) AS others_task;
RESET ROLE;
SET ROLE pgbq_rs_c;
SELECT pg_temp.try(format('SELECT pg_background_reschedule(%s, 99)', :t1));
RESET ROLE;
SELECT priority FROM pg_background_tasks WHERE id = :t1;
-- the superuser may reschedule anyone's
SELECT pg_background_reschedule(:t1, 7) AS superuser;

DELETE FROM pg_background_tasks WHERE owner IN ('pgbq_rs_a'::regrole, 'pgbq_rs_b'::regrole);
DROP OWNED BY pgbq_rs_a, pgbq_rs_b, pgbq_rs_c;
DROP ROLE pgbq_rs_a, pgbq_rs_b, pgbq_rs_c;
