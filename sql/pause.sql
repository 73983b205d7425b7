-- Pause and resume a topic: administration only, idempotent, listed in the
-- topics view, validated like enqueue's topic, bounded.  (Execution is
-- tested on real clusters by tests/test_workflows.py.)
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql
CREATE ROLE pgbq_pause_user LOGIN;
SELECT pg_background_queue_grant_usage('pgbq_pause_user');

SELECT pg_background_queue_pause('maintenance') AS paused;
SELECT pg_background_queue_pause('maintenance') AS paused_again;
SELECT pg_background_queue_pause(NULL) AS default_paused;
SELECT topic, paused FROM pg_background_queue_topics WHERE paused ORDER BY topic NULLS FIRST;

-- enqueue still works on a paused topic; the task waits
SET ROLE pgbq_pause_user;
SELECT pg_background_enqueue('SELECT 1', 'maintenance') > 0 AS queued;
SELECT topic, paused, pending FROM pg_background_queue_topics WHERE topic = 'maintenance';
-- users may not pause or resume
SELECT pg_temp.try($q$SELECT pg_background_queue_pause('maintenance')$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_resume('maintenance')$q$);
RESET ROLE;

-- bad topics: same rules and SQLSTATEs as enqueue
SELECT pg_temp.try($q$SELECT pg_background_queue_pause('')$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_resume('')$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_pause(repeat('x', 64))$q$);
SELECT pg_background_queue_pause(repeat('x', 63)) AS longest_name;
SELECT pg_background_queue_resume(repeat('x', 63)) AS resumed;

-- at most 64 paused topics (two are paused now)
SELECT count(*) FILTER (WHERE pg_background_queue_pause('t' || i)) AS paused
  FROM generate_series(1, 62) i;
SELECT pg_temp.try($q$SELECT pg_background_queue_pause('one too many')$q$);
SELECT count(*) FILTER (WHERE pg_background_queue_resume('t' || i)) AS resumed
  FROM generate_series(1, 62) i;

SELECT pg_background_queue_resume('maintenance') AS resumed;
SELECT pg_background_queue_resume('maintenance') AS resumed_again;
SELECT pg_background_queue_resume(NULL) AS default_resumed;
SELECT pg_background_queue_resume('never paused') AS resumed_unknown;
SELECT count(*) AS still_paused FROM pg_background_queue_topics WHERE paused;

DELETE FROM pg_background_tasks WHERE owner = 'pgbq_pause_user'::regrole;
DROP OWNED BY pgbq_pause_user;
DROP ROLE pgbq_pause_user;
