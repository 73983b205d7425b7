-- Privileges, row level security and the admin/user split.
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql

CREATE ROLE pgbq_alice LOGIN;
CREATE ROLE pgbq_bob LOGIN;
CREATE ROLE pgbq_carol LOGIN;		-- never granted
CREATE ROLE pgbq_nologin NOLOGIN;
SELECT pg_background_queue_grant_usage('pgbq_alice');
SELECT pg_background_queue_grant_usage('pgbq_bob');
SELECT pg_background_queue_grant_usage('pgbq_nologin');

SELECT pg_background_enqueue('SELECT ''superuser task''', 'priv', run_at => '2999-01-01+00') AS su_task \gset

-- alice enqueues and sees only her own tasks
SET ROLE pgbq_alice;
SELECT pg_background_enqueue('SELECT ''alice 1''', 'priv', run_at => '2999-01-01+00') AS alice_task \gset
SELECT pg_background_enqueue('SELECT ''alice 2''', 'priv', run_at => '2999-01-01+00') > 0 AS ok;
SELECT sql_statement, owner FROM pg_background_tasks ORDER BY id;
SELECT topic, pending FROM pg_background_queue_topics WHERE topic = 'priv';

-- nobody writes the table directly
SELECT pg_temp.try($q$INSERT INTO pg_background_tasks (sql_statement, owner, priority) VALUES ('SELECT 1', 'pgbq_alice', 1)$q$);
SELECT pg_temp.try($q$UPDATE pg_background_tasks SET sql_statement = 'SELECT 666'$q$);
SELECT pg_temp.try($q$DELETE FROM pg_background_tasks$q$);
SELECT pg_temp.try($q$TRUNCATE pg_background_tasks$q$);
SELECT pg_temp.try($q$INSERT INTO pg_background_queue_stats (day, owner, state) VALUES (now(), 'pgbq_alice', 'finished')$q$);
SELECT pg_temp.try($q$SELECT nextval('pg_background_tasks_id_seq')$q$);

-- admin functions are not for users
SELECT pg_temp.try($q$SELECT pg_background_queue_ensure_workers()$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_active_workers_count()$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_calibrate_workers_count()$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_grant_usage('pgbq_carol')$q$);
SELECT pg_temp.try($q$SELECT _pg_background_queue_prune(now(), NULL, 1000)$q$);
-- nor are the extension's parameters
SELECT pg_temp.try($q$SET pg_background_queue.strict_topics = off$q$);
ALTER SYSTEM SET pg_background_queue.retry_count = 5;
RESET ROLE;

-- bob cannot see, cancel or retry alice's tasks
SET ROLE pgbq_bob;
SELECT count(*) AS visible FROM pg_background_tasks;
SELECT pg_background_cancel(:alice_task) AS bob_cancels_alice;
SELECT pg_background_cancel(:su_task) AS bob_cancels_superuser;
RESET ROLE;
SELECT state FROM pg_background_tasks WHERE id = :alice_task;

-- alice cancels and retries her own; purge only touches her own
SET ROLE pgbq_alice;
SELECT pg_background_cancel(:alice_task) AS alice_cancels_own;
SELECT pg_background_retry(:alice_task) AS alice_retries_own;
SELECT pg_background_cancel(:alice_task);
RESET ROLE;
SELECT pg_background_cancel(:su_task);
SET ROLE pgbq_alice;
SELECT pg_background_queue_purge('0') AS alice_purged;
RESET ROLE;
SELECT id = :su_task AS superuser_task_kept, state FROM pg_background_tasks WHERE state = 'cancelled';
SELECT pg_background_retry(:su_task);

-- carol (never granted) can do nothing
SET ROLE pgbq_carol;
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1'])$q$);
SELECT pg_temp.try($q$SELECT pg_background_cancel(1)$q$);
SELECT pg_temp.try($q$SELECT pg_background_retry(1)$q$);
SELECT pg_temp.try($q$SELECT count(*) FROM pg_background_tasks$q$);
RESET ROLE;

-- a role that cannot log in: before PostgreSQL 17 no background worker can
-- connect as it, so enqueue refuses it up front (28000); from 17 on workers
-- connect without the LOGIN check and its tasks run like any other role's
BEGIN;
SET LOCAL ROLE pgbq_nologin;
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1')$q$) AS nologin_outcome \gset
ROLLBACK;
SELECT CASE WHEN current_setting('server_version_num')::int >= 170000
			THEN :'nologin_outcome' = 'no error'
			ELSE :'nologin_outcome' = '28000: role "pgbq_nologin" cannot run background tasks because it cannot log in'
	   END AS nologin_as_documented;

-- the superuser sees everyone's tasks
SELECT owner, count(*) FROM pg_background_tasks GROUP BY owner ORDER BY owner::text;

-- tasks record the role that enqueued them, even through SET ROLE / SECURITY DEFINER
CREATE FUNCTION pgbq_enqueue_as_definer() RETURNS bigint
	LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public
	AS $$ SELECT public.pg_background_enqueue('SELECT 42', run_at => '2999-01-01+00') $$;
ALTER FUNCTION pgbq_enqueue_as_definer() OWNER TO pgbq_bob;
GRANT EXECUTE ON FUNCTION pgbq_enqueue_as_definer() TO pgbq_alice;
SET ROLE pgbq_alice;
SELECT pgbq_enqueue_as_definer() AS definer_task \gset
RESET ROLE;
SELECT owner FROM pg_background_tasks WHERE id = :definer_task;

DROP FUNCTION pgbq_enqueue_as_definer();
DELETE FROM pg_background_tasks WHERE owner::oid IN (SELECT oid FROM pg_roles WHERE rolname LIKE 'pgbq\_%');
DROP OWNED BY pgbq_alice, pgbq_bob, pgbq_carol, pgbq_nologin;
DROP ROLE pgbq_alice, pgbq_bob, pgbq_carol, pgbq_nologin;
