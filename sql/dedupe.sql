-- Dedupe keys: scoped to (owner, topic, key) while the task is queued; bad
-- keys rejected with 22023/2202E; other roles' keys never collide.
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql
CREATE ROLE pgbq_dd_a LOGIN;
CREATE ROLE pgbq_dd_b LOGIN;
SELECT pg_background_queue_grant_usage('pgbq_dd_a');
SELECT pg_background_queue_grant_usage('pgbq_dd_b');

SET ROLE pgbq_dd_a;
SELECT pg_background_enqueue('SELECT 1', 'dd', dedupe_key => 'refresh') AS first \gset
-- same owner, topic, key: the queued task's id, nothing written
SELECT pg_background_enqueue('SELECT 2', 'dd', dedupe_key => 'refresh') = :first AS same_id;
SELECT count(*), min(sql_statement) FROM pg_background_tasks WHERE dedupe_key = 'refresh';
-- another topic (the default one too) or key: a new task
SELECT pg_background_enqueue('SELECT 3', 'dd2', dedupe_key => 'refresh') <> :first AS new_for_topic;
SELECT pg_background_enqueue('SELECT 4', NULL, dedupe_key => 'refresh') <> :first AS new_for_default_topic;
SELECT pg_background_enqueue('SELECT 4', NULL, dedupe_key => 'refresh') AS dflt \gset
SELECT pg_background_enqueue('SELECT 5', 'dd', dedupe_key => 'other') <> :first AS new_for_key;
-- without a key: never deduplicated
SELECT pg_background_enqueue('SELECT 1', 'dd') <> pg_background_enqueue('SELECT 1', 'dd') AS no_key_no_dedupe;
RESET ROLE;

-- another role's same key is its own (and it never sees A's)
SET ROLE pgbq_dd_b;
SELECT pg_background_enqueue('SELECT 1', 'dd', dedupe_key => 'refresh') <> :first AS own_task;
SELECT count(*) AS b_sees FROM pg_background_tasks WHERE dedupe_key = 'refresh';
RESET ROLE;

-- once the task is no longer queued (cancelled here), the key is free again
SET ROLE pgbq_dd_a;
SELECT pg_background_cancel(:first);
SELECT pg_background_enqueue('SELECT 6', 'dd', dedupe_key => 'refresh') AS second \gset
SELECT :second <> :first AS new_task;
-- retry of the cancelled one while the new one holds the key: it comes back
-- without its key, the new one keeps it
SELECT pg_background_retry(:first);
SELECT id = :first AS is_first, state, dedupe_key FROM pg_background_tasks
 WHERE id IN (:first, :second) ORDER BY id;
SELECT pg_background_enqueue('SELECT 7', 'dd', dedupe_key => 'refresh') = :second AS still_second;

-- enqueue_many: one key or NULL per statement, input order, repeats collapse
SELECT array_agg(id) AS ids FROM pg_background_enqueue_many(
	ARRAY['SELECT 10', 'SELECT 11', 'SELECT 12', 'SELECT 13'], 'dd_many',
	dedupe_keys => ARRAY['x', NULL, 'x', 'refresh']) AS id \gset
SELECT :'ids'::bigint[] AS ids \gset
SELECT (:'ids'::bigint[])[1] = (:'ids'::bigint[])[3] AS repeat_collapsed,
	   (:'ids'::bigint[])[2] <> (:'ids'::bigint[])[1] AS null_key_new,
	   cardinality(:'ids'::bigint[]) AS n;
SELECT count(*) AS written FROM pg_background_tasks WHERE topic = 'dd_many';
-- a second call finds the queued ones
SELECT array_agg(id) = (SELECT array_agg(x) FROM unnest(:'ids'::bigint[]) WITH ORDINALITY u(x, o) WHERE o IN (1, 3, 4)) AS found
  FROM pg_background_enqueue_many(ARRAY['SELECT 20', 'SELECT 21', 'SELECT 22'], 'dd_many',
								  dedupe_keys => ARRAY['x', 'x', 'refresh']) AS id;

-- bad keys: nothing written
SELECT count(*) AS before FROM pg_background_tasks \gset
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', 'dd', dedupe_key => '')$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELECT 1', 'dd', dedupe_key => repeat('k', 1025))$q$);
SELECT pg_background_enqueue('SELECT 1', 'dd', dedupe_key => repeat('k', 1024)) > 0 AS longest_key;
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1', 'SELECT 2'], dedupe_keys => ARRAY['a'])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1', 'SELECT 2'], dedupe_keys => ARRAY['a', ''])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue_many(ARRAY['SELECT 1'], dedupe_keys => ARRAY[['a']])$q$);
SELECT pg_temp.try($q$SELECT pg_background_enqueue('SELEC 1', 'dd', dedupe_key => 'refresh')$q$);
SELECT count(*) - :before AS written FROM pg_background_tasks;
RESET ROLE;

-- nobody writes a key directly
SET ROLE pgbq_dd_a;
SELECT pg_temp.try($q$UPDATE pg_background_tasks SET dedupe_key = 'z'$q$);
RESET ROLE;

DELETE FROM pg_background_tasks WHERE owner IN ('pgbq_dd_a'::regrole, 'pgbq_dd_b'::regrole);
DROP OWNED BY pgbq_dd_a, pgbq_dd_b;
DROP ROLE pgbq_dd_a, pgbq_dd_b;
