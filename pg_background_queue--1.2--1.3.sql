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

-- ==== end of section: queue storage and claim ====


-- ==== section: batched commits ====

-- ==== end of section: batched commits ====
