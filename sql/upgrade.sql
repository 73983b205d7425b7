-- Upgrade path: install 1.0, queue work and grant a role, update to 1.1,
-- grant a second role, update to the default version, and compare every
-- member object (definition, view options and privileges) with a fresh
-- install of that version.
CREATE ROLE pgbq_upgrade_user LOGIN;
CREATE ROLE pgbq_upgrade_user11 LOGIN;

-- a description of every object of the extension, with its definition
-- and access privileges
CREATE FUNCTION pg_temp.pgbq_objects()
RETURNS TABLE (object text, definition text)
LANGUAGE sql AS $$
	SELECT pg_describe_object(d.classid, d.objid, d.objsubid),
		   CASE d.classid
			 WHEN 'pg_proc'::regclass THEN
				pg_get_functiondef(d.objid) || coalesce(p.proacl::text, '')
			 WHEN 'pg_class'::regclass THEN
				c.relkind::text || coalesce(c.relacl::text, '') ||
				coalesce(c.reloptions::text, '') ||
				coalesce(pg_get_viewdef(d.objid), '') ||
				(SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) ||
								   ' ' || a.attnotnull ||
								   coalesce(' ' || pg_get_expr(ad.adbin, ad.adrelid), ''),
								   ', ' ORDER BY a.attnum)
				   FROM pg_attribute a
				   LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
				  WHERE a.attrelid = d.objid AND a.attnum > 0 AND NOT a.attisdropped) ||
				coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1)
							FROM pg_index i WHERE i.indrelid = d.objid), '') ||
				coalesce((SELECT string_agg(conname || ' ' || pg_get_constraintdef(k.oid), '; ' ORDER BY 1)
							FROM pg_constraint k WHERE k.conrelid = d.objid), '') ||
				coalesce((SELECT string_agg(polname || ' ' || polcmd::text || ' ' ||
											pg_get_expr(polqual, polrelid), '; ' ORDER BY 1)
							FROM pg_policy WHERE polrelid = d.objid), '') ||
				coalesce((SELECT string_agg(pg_get_triggerdef(tg.oid), '; ' ORDER BY 1)
							FROM pg_trigger tg WHERE tg.tgrelid = d.objid AND NOT tg.tgisinternal), '') ||
				c.relrowsecurity::text
			 WHEN 'pg_type'::regclass THEN
				coalesce((SELECT string_agg(enumlabel::text, ',' ORDER BY enumsortorder)
							FROM pg_enum WHERE enumtypid = d.objid), '') ||
				-- a domain: its base type, NOT NULL and checks
				coalesce((SELECT format_type(ty.typbasetype, ty.typtypmod) || ' ' || ty.typnotnull ||
								 coalesce(' ' || (SELECT string_agg(conname || ' ' || pg_get_constraintdef(k.oid), '; ' ORDER BY 1)
													FROM pg_constraint k WHERE k.contypid = ty.oid), '')
							FROM pg_type ty WHERE ty.oid = d.objid AND ty.typtype = 'd'), '')
			 ELSE ''
		   END
	  FROM pg_depend d
	  LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
	  LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
	 WHERE d.refclassid = 'pg_extension'::regclass
	   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_background_queue')
	   AND d.deptype = 'e'
	   -- row and array types follow their table, view or enum (and are
	   -- listed as members only from PostgreSQL 17 on)
	   AND NOT EXISTS (SELECT 1 FROM pg_type t
					   WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
						 AND (t.typrelid <> 0 OR t.typcategory = 'A'))
$$;

DROP EXTENSION pg_background_queue;
CREATE EXTENSION pg_background_queue VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'pg_background_queue';
SELECT pg_background_queue_grant_usage('pgbq_upgrade_user');
SET ROLE pgbq_upgrade_user;
SELECT pg_background_enqueue('SELECT 1', 'upgrade') AS queued_id \gset
RESET ROLE;

ALTER EXTENSION pg_background_queue UPDATE TO '1.1';
SELECT pg_background_queue_grant_usage('pgbq_upgrade_user11');
SET ROLE pgbq_upgrade_user11;
SELECT pg_background_enqueue('SELECT 11', 'upgrade11') AS queued_id11 \gset
RESET ROLE;

ALTER EXTENSION pg_background_queue UPDATE TO '1.2';
SET ROLE pgbq_upgrade_user11;
SELECT pg_background_enqueue('SELECT 12', 'upgrade11', dedupe_key => 'k12') AS queued_id12 \gset
RESET ROLE;

ALTER EXTENSION pg_background_queue UPDATE;
SELECT extversion, (SELECT default_version FROM pg_available_extensions
					 WHERE name = 'pg_background_queue') = extversion AS is_default
  FROM pg_extension WHERE extname = 'pg_background_queue';

-- work queued under 1.0, 1.1 and 1.2 is intact, and the roles granted under 1.0
-- and 1.1 read every view (the 1.2 topics view calls functions revoked from
-- PUBLIC in 1.2)
SELECT id IN (:queued_id, :queued_id11, :queued_id12) AS same_task, state, topic, owner
  FROM pg_background_tasks ORDER BY id;
SET ROLE pgbq_upgrade_user;
SELECT topic, state, tasks, attempts, oldest_age >= '0' AS has_age, p50_run_seconds
  FROM pg_background_queue_task_stats;
SELECT topic, pending, paused FROM pg_background_queue_topics WHERE topic IS NOT NULL;
SELECT count(*) FROM pg_background_queue_workers;
RESET ROLE;
SET ROLE pgbq_upgrade_user11;
SELECT topic, pending, paused FROM pg_background_queue_topics WHERE topic IS NOT NULL;
RESET ROLE;

CREATE TEMP TABLE upgraded AS SELECT * FROM pg_temp.pgbq_objects();

-- fresh install of the default version, same grant
DROP EXTENSION pg_background_queue;
CREATE EXTENSION pg_background_queue;
SELECT pg_background_queue_grant_usage('pgbq_upgrade_user');
SELECT pg_background_queue_grant_usage('pgbq_upgrade_user11');
CREATE TEMP TABLE fresh AS SELECT * FROM pg_temp.pgbq_objects();

SELECT count(*) AS objects, count(*) FILTER (WHERE definition <> '') AS with_definition FROM fresh;
-- both differences must be empty
SELECT 'only after upgrade' AS side, * FROM (TABLE upgraded EXCEPT TABLE fresh) u
UNION ALL
SELECT 'only in fresh install', * FROM (TABLE fresh EXCEPT TABLE upgraded) f;

-- downgrading is not offered
ALTER EXTENSION pg_background_queue UPDATE TO '1.0';

DROP OWNED BY pgbq_upgrade_user, pgbq_upgrade_user11;
DROP ROLE pgbq_upgrade_user, pgbq_upgrade_user11;
