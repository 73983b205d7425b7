/* pg_background_queue--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_background_queue UPDATE TO '1.3'" to load this file. \quit

--
-- Version 1.3: task results and a server-side wait (issue 11), a queue
-- table that long transactions cannot slow down and batched commits
-- (issue 15).  Each part below keeps to its own section.
--

-- ==== section: results and pg_background_wait ====

-- ==== end of section: results and pg_background_wait ====


-- ==== section: queue storage and claim ====

/*
 * The claim floor (issue 15): workers claim from where the last claim of
 * their role ended instead of walking the dead index entries of every task
 * claimed since the last vacuum (which a long transaction anywhere in the
 * cluster keeps from being removed).  This trigger notes the key of every
 * row that becomes claimable, by INSERT or by any UPDATE, so that the
 * floor is lowered to it when the transaction commits (C: claim_floor.c).
 */
CREATE FUNCTION @extschema@._pg_background_queue_claimable()
RETURNS trigger
AS 'MODULE_PATHNAME', 'pg_background_queue_claimable'
LANGUAGE C;

REVOKE ALL ON FUNCTION @extschema@._pg_background_queue_claimable() FROM PUBLIC;

CREATE TRIGGER pg_background_tasks_claimable
	BEFORE INSERT OR UPDATE ON @extschema@.pg_background_tasks
	FOR EACH ROW
	WHEN (NEW.state IN ('pending', 'retrying'))
	EXECUTE FUNCTION @extschema@._pg_background_queue_claimable();

/*
 * The task table is small and hot: every task is inserted and updated
 * twice.  Vacuum it after a fixed number of dead rows rather than a
 * fraction of the table (the default 20% lets a table of a million
 * finished tasks collect 200,000 dead ones first), without cost-based
 * sleeps, so that autovacuum keeps up with a sustained load.
 */
ALTER TABLE @extschema@.pg_background_tasks SET (
	autovacuum_vacuum_scale_factor = 0.0,
	autovacuum_vacuum_threshold = 10000,
	autovacuum_vacuum_insert_scale_factor = 0.0,
	autovacuum_vacuum_insert_threshold = 10000,
	autovacuum_analyze_scale_factor = 0.02,
	autovacuum_vacuum_cost_delay = 0
);

-- ==== end of section: queue storage and claim ====


-- ==== section: batched commits ====

-- ==== end of section: batched commits ====
