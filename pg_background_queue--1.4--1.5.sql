/* pg_background_queue--1.4--1.5.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION pg_background_queue UPDATE TO '1.5'" to load this file. \quit

--
-- Version 1.5: the task table's two append-only indexes stop deduplicating
-- (issue 15).
--

/*
 * Every task's running mark adds an entry to the running index and its
 * finished mark one to the closed index, and each goes to the same, last
 * leaf page: the running index's key is the topic (NULL for most tasks, so
 * entries fall in heap order), the closed index's the end time.  With
 * deduplication, a full leaf is first rewritten into posting lists before
 * it splits, under the exclusive lock every worker's next insert waits
 * for; neither index gains from it (closing times are all but unique, and
 * the running index's entries die within a task's run and are removed
 * when they do).  The option applies to new inserts: no rewrite, no lock
 * beyond ALTER INDEX's brief one.
 */
ALTER INDEX @extschema@.pg_background_tasks_running_idx SET (deduplicate_items = off);
ALTER INDEX @extschema@.pg_background_tasks_closed_idx SET (deduplicate_items = off);
