-- Bad input: each case is a clear error with a proper SQLSTATE, and nothing is enqueued.
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql

SELECT count(*) AS before FROM pg_background_tasks \gset

SELECT pg_temp.try($q$SELECT pg_background_enqueue(NULL)$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('   ')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('-- only a comment')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue(';;')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELEC 1')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT (1')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT ''unterminated')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('BEGIN')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('COMMIT')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1; ROLLBACK')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SAVEPOINT a')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('PREPARE TRANSACTION ''x''')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('COPY pg_class TO STDOUT')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('COPY t FROM STDIN')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('VACUUM; SELECT 1')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1; CREATE INDEX CONCURRENTLY i ON t (x)')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', '')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', repeat('x', 64))$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', NULL, -1)$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', NULL, NULL, 'infinity')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', NULL, NULL, '-infinity')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(NULL)$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1', NULL])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1', 'SELEC 2'])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY[['SELECT 1'], ['SELECT 2']])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1', 'COMMIT'])$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_purge('-1 day')$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_grant_usage(NULL)$q$);
SELECT pg_temp.try($q$SELECT pg_background_queue_grant_usage('no_such_role')$q$);

-- strict topics: unknown topics are refused
SET pg_background_queue.strict_topics = on;
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', 'unconfigured')$q$);
RESET pg_background_queue.strict_topics;

-- the table's own checks (domains from 1.4) hold for writes that bypass the
-- functions: an administrator's INSERT or UPDATE
SELECT pg_temp.try($q$INSERT INTO pg_background_tasks (sql_statement, owner, priority) VALUES ('', current_user::regrole, 0)$q$);
SELECT pg_temp.try($q$INSERT INTO pg_background_tasks (sql_statement, owner, priority) VALUES ('SELECT 1', current_user::regrole, -1)$q$);
SELECT pg_temp.try($q$INSERT INTO pg_background_tasks (sql_statement, owner, priority, attempts) VALUES ('SELECT 1', current_user::regrole, 0, -1)$q$);
SELECT pg_temp.try($q$INSERT INTO pg_background_tasks (sql_statement, owner, priority, retry_count) VALUES ('SELECT 1', current_user::regrole, 0, -1)$q$);
SELECT pg_temp.try($q$INSERT INTO pg_background_tasks (sql_statement, owner, priority, dedupe_key) VALUES ('SELECT 1', current_user::regrole, 0, '')$q$);
SELECT pg_temp.try($q$UPDATE pg_background_tasks SET priority = -1$q$);
SELECT pg_temp.try($q$UPDATE pg_background_tasks SET attempts = attempts - 100$q$);
-- and the checks are no longer per-statement table constraints or trigger WHEN
-- clauses, which PostgreSQL reads and plans again for every statement the
-- workers run (1.4)
SELECT count(*) AS table_checks FROM pg_constraint
 WHERE conrelid = 'pg_background_tasks'::regclass AND contype = 'c';
SELECT count(*) AS triggers_with_when FROM pg_trigger
 WHERE tgrelid = 'pg_background_tasks'::regclass AND tgqual IS NOT NULL;
SELECT pg_get_triggerdef(oid) AS trigger FROM pg_trigger
 WHERE tgrelid = 'pg_background_tasks'::regclass AND NOT tgisinternal ORDER BY tgname;

-- nothing was written by any of the above
SELECT count(*) - :before AS written FROM pg_background_tasks;

-- a syntax error points into the task's text
\set VERBOSITY default
SELECT pg_background_enqueue('SELECT 1 FROM WHERE');
SELECT pg_background_enqueue_many(ARRAY['SELECT 1', 'SELECT * FORM x']);
