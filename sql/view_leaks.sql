-- Every view of the extension is safe against leaky functions (issue 14 §2):
-- a cheap function in the caller's WHERE must only ever see the rows the view
-- returns to the caller, never another role's.  For every column of every
-- view, role A runs  SELECT count(*) FROM view WHERE pg_temp.leak(col::text)
-- and the function records each value it was called with; it must have been
-- called exactly once per row A can see, and never with B's markers.
\getenv abs_srcdir PG_ABS_SRCDIR
\i :abs_srcdir/sql/include/try.sql

CREATE ROLE pgbq_leak_a LOGIN;
CREATE ROLE pgbq_leak_b LOGIN;
CREATE ROLE pgbq_leak_c LOGIN;		-- never granted
SELECT pg_background_queue_grant_usage('pgbq_leak_a');
SELECT pg_background_queue_grant_usage('pgbq_leak_b');

-- B's tasks carry markers: a topic name and a state A never has
SET ROLE pgbq_leak_b;
SELECT pg_background_enqueue('SELECT ''b secret''', 'secret_b_topic', 7, '2999-01-01+00') IS NOT NULL AS queued;
SELECT pg_background_cancel(pg_background_enqueue('SELECT 2', 'secret_b_topic', 7, '2999-01-01+00')) AS cancelled;
RESET ROLE;
SET ROLE pgbq_leak_a;
SELECT pg_background_enqueue('SELECT ''a''', 'a_topic', 1, '2999-01-01+00') IS NOT NULL AS queued;
RESET ROLE;

-- The leaky function: as cheap as possible (so the planner would rather
-- run it first), STABLE (so a pushed-down qual is allowed), and it keeps
-- what it saw in a custom setting of the session.
CREATE FUNCTION pg_temp.leak(v text) RETURNS boolean
LANGUAGE plpgsql STABLE COST 0.0000001 AS $$
BEGIN
	PERFORM pg_catalog.set_config('pgbq_leak.calls',
		(coalesce(nullif(pg_catalog.current_setting('pgbq_leak.calls', true), ''), '0')::int + 1)::text, false);
	PERFORM pg_catalog.set_config('pgbq_leak.seen',
		coalesce(pg_catalog.current_setting('pgbq_leak.seen', true), '') || '|' || coalesce(v, '<null>'), false);
	RETURN true;
END
$$;
GRANT EXECUTE ON FUNCTION pg_temp.leak(text) TO PUBLIC;

-- every column of every view that belongs to the extension
CREATE TEMP TABLE view_columns AS
SELECT c.oid::regclass::text AS view, a.attname::text AS col, a.attnum
  FROM pg_depend d
  JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'v'
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
   AND d.refclassid = 'pg_extension'::regclass
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_background_queue');
GRANT SELECT ON view_columns TO PUBLIC;
SELECT view, count(*) AS columns FROM view_columns GROUP BY view ORDER BY view;

-- every view is a security barrier
SELECT c.relname, c.reloptions
  FROM pg_class c
 WHERE c.oid IN (SELECT view::regclass FROM view_columns)
 ORDER BY 1;

CREATE FUNCTION pg_temp.probe(v text, col text)
RETURNS TABLE (calls int, visible_rows bigint, seen text)
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_catalog.set_config('pgbq_leak.calls', '0', false);
	PERFORM pg_catalog.set_config('pgbq_leak.seen', '', false);
	EXECUTE pg_catalog.format('SELECT count(*) FROM %s WHERE pg_temp.leak(%I::text)', v, col);
	calls := pg_catalog.current_setting('pgbq_leak.calls')::int;
	seen := pg_catalog.current_setting('pgbq_leak.seen');
	EXECUTE pg_catalog.format('SELECT count(*) FROM %s', v) INTO visible_rows;
	RETURN NEXT;
END
$$;
GRANT EXECUTE ON FUNCTION pg_temp.probe(text, text) TO PUBLIC;

-- as A: one call per visible row, and no marker of B's
SET ROLE pgbq_leak_a;
SELECT vc.view, vc.col,
	   p.calls = p.visible_rows AS only_visible_rows,
	   p.seen NOT LIKE '%secret_b%' AND p.seen NOT LIKE '%cancelled%' AS no_marker
  FROM view_columns vc, LATERAL pg_temp.probe(vc.view, vc.col) p
 ORDER BY vc.view, vc.attnum;
-- what A does see, for the record
SELECT topic, state, tasks FROM pg_background_queue_task_stats ORDER BY topic;
SELECT topic, pending, paused FROM pg_background_queue_topics WHERE topic IS NOT NULL ORDER BY topic;
RESET ROLE;

-- the functions behind the views: not for roles never granted usage
SET ROLE pgbq_leak_c;
SELECT pg_temp.try($q$SELECT * FROM _pg_background_queue_workers()$q$);
SELECT pg_temp.try($q$SELECT * FROM _pg_background_queue_configured_topics()$q$);
SELECT pg_temp.try($q$SELECT * FROM _pg_background_queue_paused_topics()$q$);
SELECT pg_temp.try($q$SELECT * FROM pg_background_queue_topic_config('x')$q$);
SELECT pg_temp.try($q$SELECT * FROM pg_background_queue_topics$q$);
RESET ROLE;
-- a granted role calls them (the views run them as the caller) and gets
-- only what the views show it
SET ROLE pgbq_leak_a;
SELECT pg_temp.try($q$SELECT * FROM _pg_background_queue_workers()$q$);
SELECT configured, retry_count FROM pg_background_queue_topic_config(NULL);
RESET ROLE;

-- the same probe as superuser sees everything, so the test can fail
SELECT bool_or(p.seen LIKE '%secret_b%') AS superuser_sees_b
  FROM view_columns vc, LATERAL pg_temp.probe(vc.view, vc.col) p;

DELETE FROM pg_background_tasks WHERE owner IN ('pgbq_leak_a'::regrole, 'pgbq_leak_b'::regrole);
DROP OWNED BY pgbq_leak_a, pgbq_leak_b, pgbq_leak_c;
DROP ROLE pgbq_leak_a, pgbq_leak_b, pgbq_leak_c;
