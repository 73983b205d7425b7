-- topic_config is validated by the server's JSON parser at SET / ALTER SYSTEM /
-- reload time; errors name the topic and the key.
\set VERBOSITY default

-- valid configurations are accepted
ALTER SYSTEM SET pg_background_queue.topic_config = '{}';
ALTER SYSTEM SET pg_background_queue.topic_config = '';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"critical": {"max_parallel_running_tasks_count": 10, "retry_count": 5, "delay_in_sec": 0, "priority": 1}, "maintenance": {"max_parallel_running_tasks_count": 2, "retry_count": 1, "delay_in_sec": 0.5, "priority": 100, "timeout_in_sec": 3600}, "reporting": {}}';
-- batched commits: tasks_per_commit 1..64, batch_max_ms 1..10000
ALTER SYSTEM SET pg_background_queue.topic_config = '{"bulk": {"tasks_per_commit": 64, "batch_max_ms": 250}, "one": {"tasks_per_commit": 1}, "most": {"tasks_per_commit": 64, "batch_max_ms": 10000}}';

-- invalid ones are rejected
ALTER SYSTEM SET pg_background_queue.topic_config = 'not json';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retry_count": 1}';
ALTER SYSTEM SET pg_background_queue.topic_config = '[1, 2]';
ALTER SYSTEM SET pg_background_queue.topic_config = '42';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": 1}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": []}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retries": 1}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retry_count": "3"}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retry_count": true}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retry_count": null}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retry_count": -1}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"priority": 1.5}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"max_parallel_running_tasks_count": 1e12}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"delay_in_sec": -0.5}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"timeout_in_sec": {"x": 1}}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"retry_count": 1, "retry_count": 2}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"tasks_per_commit": 0}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"tasks_per_commit": 65}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"tasks_per_commit": 2.5}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"tasks_per_commit": "64"}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"batch_max_ms": 0}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"batch_max_ms": 10001}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {"batch_ms": 10}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"a": {}, "a": {}}';
ALTER SYSTEM SET pg_background_queue.topic_config = '{"": {}}';
SELECT format('ALTER SYSTEM SET pg_background_queue.topic_config = %L',
              format('{"%s": {}}', repeat('t', 64))) \gexec
SELECT format('ALTER SYSTEM SET pg_background_queue.topic_config = %L',
              '{"a": ' || repeat('[', 12) || repeat(']', 12) || '}') \gexec

-- the other parameters have ranges too
ALTER SYSTEM SET pg_background_queue.retry_count = -1;
ALTER SYSTEM SET pg_background_queue.delay_in_sec = -1;
ALTER SYSTEM SET pg_background_queue.max_parallel_running_tasks_count = 100000;
-- (PostgreSQL words these two differently from release to release: the
-- unit in the range; only the SQLSTATE is shown)
\set VERBOSITY sqlstate
ALTER SYSTEM SET pg_background_queue.timeout_in_sec = -5;
ALTER SYSTEM SET pg_background_queue.worker_idle_timeout = 0;
\set VERBOSITY default
-- an unknown name under our (reserved) prefix is refused (ALTER SYSTEM's
-- SQLSTATE for it changed in 18, SET's did not)
SET pg_background_queue.no_such_setting = 1;

-- reload-time parameters cannot be SET in a session
SET pg_background_queue.topic_config = '{}';
SET pg_background_queue.retry_count = 3;

ALTER SYSTEM RESET pg_background_queue.topic_config;

-- the defaults
SELECT name, setting, unit, context FROM pg_settings
 WHERE name LIKE 'pg_background_queue.%' ORDER BY name;
