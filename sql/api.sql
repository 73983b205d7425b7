-- SQL API of pg_background_queue (nothing runs: max_parallel_running_tasks_count = 0)
CREATE EXTENSION pg_background_queue;

-- enum and table shape
SELECT enum_range(NULL::pg_background_queue_task_state);
SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull
  FROM pg_attribute
 WHERE attrelid = 'pg_background_tasks'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;

-- its indexes; the two that every task appends to do not deduplicate (1.5)
SELECT c.relname, i.indisunique, c.reloptions
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'pg_background_tasks'::regclass
 ORDER BY 1;

-- one- and two-argument calls of the contract keep working
SELECT pg_background_enqueue('SELECT 1') AS id1 \gset
SELECT pg_background_enqueue('SELECT 2', 'reports') AS id2 \gset
SELECT pg_background_enqueue('SELECT 3', 'reports', 5) AS id3 \gset
SELECT pg_background_enqueue('SELECT 4', run_at => '2999-01-01 00:00:00+00') AS id4 \gset
SELECT :id2 = :id1 + 1 AND :id3 = :id2 + 1 AND :id4 = :id3 + 1 AS ids_increase;

SELECT id - :id1 AS n, sql_statement, topic, owner, priority, state, attempts,
       retry_count, retry_delay_in_sec, errors, error_history, worker_pid,
       started_at IS NULL AS not_started, closed_at IS NULL AS not_closed,
       next_run_at = COALESCE(run_at, joined_at) AS eligible_at_join_or_run_at
  FROM pg_background_tasks ORDER BY id;

-- a multi-statement script is one task
SELECT pg_background_enqueue('CREATE TABLE IF NOT EXISTS s(x int); INSERT INTO s VALUES (1);') > 0 AS ok;

-- enqueue_many: ids in input order, one statement for the batch
SELECT array_agg(id ORDER BY ord) = array_agg(id ORDER BY id) AS ids_in_input_order, count(*)
  FROM pg_background_enqueue_many(ARRAY['SELECT 10', 'SELECT 11', 'SELECT 12'], 'batch', 7)
       WITH ORDINALITY AS r(id, ord);
SELECT sql_statement, topic, priority FROM pg_background_tasks WHERE topic = 'batch' ORDER BY id;
SELECT count(*) FROM pg_background_enqueue_many(ARRAY[]::text[]);

-- enqueued work of a rolled back transaction is gone
BEGIN;
SELECT pg_background_enqueue('SELECT ''rolled back''') > 0 AS ok;
ROLLBACK;
SELECT count(*) FROM pg_background_tasks WHERE sql_statement = 'SELECT ''rolled back''';

-- cancel: pending -> cancelled, never twice; retry: cancelled -> pending
SELECT pg_background_cancel(:id1) AS cancelled;
SELECT pg_background_cancel(:id1) AS cancelled_again;
SELECT state, closed_at IS NOT NULL AS closed, errors, error_history->0->>'sqlstate' AS sqlstate
  FROM pg_background_tasks WHERE id = :id1;
SELECT pg_background_retry(:id1) AS retried;
SELECT pg_background_retry(:id1) AS retried_again;
SELECT state, attempts, closed_at IS NULL AS reopened, jsonb_array_length(error_history) AS history
  FROM pg_background_tasks WHERE id = :id1;
SELECT pg_background_retry(:id2) AS retry_of_pending;
SELECT pg_background_cancel(-1) AS cancel_missing, pg_background_retry(-1) AS retry_missing;

-- purge keeps statistics of what it deletes
SELECT pg_background_cancel(:id3);
SELECT pg_background_queue_purge('1 hour') AS purged_too_young;
SELECT pg_background_queue_purge('0') AS purged;
SELECT count(*) FROM pg_background_tasks WHERE id = :id3;
SELECT topic, owner, state, tasks, attempts FROM pg_background_queue_stats;

-- views
SELECT topic, configured, max_parallel_running_tasks_count, retry_count, delay_in_sec,
       priority, timeout_in_sec, pending, running
  FROM pg_background_queue_topics ORDER BY topic NULLS FIRST;
SELECT * FROM pg_background_queue_topic_config(NULL);
SELECT count(*) FROM pg_background_queue_workers WHERE state <> 'maintenance';

-- worker accounting (no workers may run in this suite)
SELECT pg_background_queue_active_workers_count();
SELECT pg_background_queue_calibrate_workers_count();
SELECT pg_background_queue_ensure_workers();

-- the claim query uses the claim index in claim order: no sort, no sequential scan
SET enable_seqscan = off;
EXPLAIN (COSTS OFF)
SELECT id FROM pg_background_tasks
 WHERE owner = 'postgres'::regrole::oid AND state IN ('pending', 'retrying')
   AND next_run_at <= now() AND COALESCE(topic, '') <> ALL (ARRAY[]::text[])
 ORDER BY priority, next_run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED;
RESET enable_seqscan;
