/*-------------------------------------------------------------------------
 *
 * task_rows.c
 *	  The text of every statement that changes the state of a row of
 *	  pg_background_tasks.  The callers prepare and execute them where they
 *	  always did (as the table owner, in a privileged section: catalog.c);
 *	  this file only builds the text, so that all the transitions can be
 *	  read, and checked against each other, in one place.  Every name is
 *	  qualified: nothing on a search_path takes part.
 *
 * Task-row state changes.  Every change of pg_background_tasks.state, who
 * makes it and what keeps it from racing another.  Each UPDATE names the
 * from-state in its WHERE clause, so a change whose from-state no longer
 * holds touches nothing; "row lock" is the lock the UPDATE or FOR UPDATE
 * takes on the row.  "(SQL)" marks statements that live in the extension's
 * SQL scripts, not here.
 *
 *	from              to                who (file), statement here            serialised by; transaction
 *	(new)             pending           pg_background_enqueue[_many]          new row; the caller's
 *	                                    (enqueue.c): pgbq_sql_insert[_many]
 *	(new)             pending/waiting/  enqueue with a dedupe key or after    prerequisites locked first
 *	                  cancelled         (workflow.c): pgbq_sql_insert_        (has_dependents UPDATE);
 *	                                    workflow; waiting if a prerequisite   ON CONFLICT on the key;
 *	                                    is open, cancelled if one failed      the caller's
 *	waiting           pending           release _pg_background_queue_after_   FOR UPDATE of the waiting
 *	                                    end (SQL, 1.2), fired by the table's  rows; in the transaction
 *	                                    AFTER UPDATE trigger (1.4: through    that ends the prerequisite
 *	                                    pg_background_queue_task_changed,
 *	                                    claim_floor.c): the last prerequisite
 *	                                    finished
 *	waiting           cancelled         the same: a prerequisite failed or    the same
 *	                                    was cancelled
 *	pending/retrying  running           claim: pgbq_sql_claim + pgbq_sql_     FOR UPDATE SKIP LOCKED; the
 *	                                    mark_running (worker_bookkeeping.c),  slot goes RUNNING in the same
 *	                                    attempts+1; pgbq_sql_claim_next and   transaction under the shmem
 *	                                    _check read around the claim floor    lock (pgbq_slot_try_start);
 *	                                                                          a transaction of its own
 *	                                                                          (durable), or the previous
 *	                                                                          task's (fused), or a batch's
 *	running           finished          pgbq_sql_finish (with the result when row lock; only WHERE state =
 *	                  (+ result, 1.3)   the task returned rows)               'running' AND worker_pid = us;
 *	                                    (worker_bookkeeping.c)                the task's own transaction, or
 *	                                                                          its subtransaction in a batch
 *	pending/retrying  finished          a batch's task after its first, never the claim's row lock, held
 *	                  (+ result, 1.3)   marked running: pgbq_sql_finish_      since the claim in the batch's
 *	                                    claimed_many for all of them at the   transaction; the batch's
 *	                                    batch's end, attempts+1 and           transaction, just before its
 *	                                    started_at here (pgbq_sql_finish_     commit (the task's subtrans-
 *	                                    claimed at once for a task that       action for pgbq_sql_finish_
 *	                                    changed its own row; a failed one is  claimed)
 *	                                    marked running first, then takes the
 *	                                    failure path)
 *	running           retrying/failed/  pgbq_record_attempt_failure           pgbq_sql_lock_running: FOR
 *	                  cancelled         (catalog.c): pgbq_sql_lock_running    UPDATE WHERE state =
 *	                                    + pgbq_sql_record_failure, after the  'running'; nothing if already
 *	                                    task's transaction (or, in a batch,   accounted for; a new
 *	                                    its subtransaction) rolled back, and  transaction (which may claim
 *	                                    orphan recovery                       the next task), or the batch's
 *	running           pending/retrying  give-back on shutdown, or of a task   row lock; only WHERE state =
 *	                                    claimed but not started: pgbq_sql_    'running' AND worker_pid = us;
 *	                                    give_back, previous state,            a new transaction, or the
 *	                                    attempts-1 (worker_bookkeeping.c)     batch's
 *	pending/retrying/ cancelled         pg_background_cancel (enqueue.c):     row lock; the caller's
 *	waiting                             pgbq_sql_cancel
 *	running           (request only)    pg_background_cancel: slot's          shmem lock, exclusive; the
 *	                                    cancel_requested + SIGINT (also for   worker records "cancelled"
 *	                                    a task of a batch, whose row still    through the failure path
 *	                                    looks pending)
 *	failed/cancelled  pending/waiting   pg_background_retry (enqueue.c):      row lock; prerequisites
 *	                                    pgbq_sql_retry (1.1's objects:        locked first (pgbq_lock_
 *	                                    pgbq_sql_retry_1_1, pending), fresh   prerequisites, workflow.c);
 *	                                    retry budget                          the caller's
 *	pending/retrying/ (same)            pg_background_reschedule (enqueue.c): row lock; the caller's
 *	waiting                             pgbq_sql_reschedule: priority,
 *	                                    run_at, next_run_at
 *	pending/retrying  failed            maintenance: owner dropped or         row lock; a maintenance step
 *	                                    cannot log in (28000): pgbq_sql_      of its own
 *	                                    fail_unrunnable_roles
 *	running           retrying/failed   maintenance orphan recovery: worker   FOR UPDATE SKIP LOCKED; each
 *	                                    gone (57P02, maintenance.c):          candidate re-checked against
 *	                                    pgbq_sql_orphan_scan, then the        the live slots; a maintenance
 *	                                    failure path                          step of its own
 *	finished/failed/  (deleted)         _pg_background_queue_prune (SQL),     FOR UPDATE SKIP LOCKED; a
 *	cancelled                           called by retention (maintenance.c,   maintenance step per batch,
 *	                                    pgbq_sql_prune) and pg_background_    or the caller's
 *	                                    queue_purge (pgbq_sql_purge)
 *
 * Around these, without changing a state:
 *	- the claimable triggers (claim_floor.c) see every INSERT or UPDATE whose
 *	  new state is pending or retrying (enqueue, a failed attempt to be
 *	  retried, give-back, retry, release, reschedule) and lower the role's
 *	  claim floor to the row's key once the transaction commits: 1.3's
 *	  BEFORE INSERT OR UPDATE WHEN the state is claimable; from 1.4 BEFORE
 *	  INSERT and AFTER UPDATE without WHEN (pg_background_queue_task_changed,
 *	  which also releases dependents), so that the workers' own UPDATEs pay
 *	  for no WHEN clause and no row lock a BEFORE UPDATE trigger takes;
 *	- a keyed enqueue takes the dedupe key from a running task of the key
 *	  (workflow.c), and enqueue and retry set has_dependents on the
 *	  prerequisites (workflow.c), which arms the release trigger;
 *	- result and result_truncated (1.3) are written only by the finished
 *	  mark (pgbq_sql_finish with result), so only a finished task has a
 *	  result; with 1.2's objects the library never asks for it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"

#include "compat.h"
#include "task_rows.h"

/*
 * pgbq_sql_insert
 *		Enqueue one task, pending ($1 sql, $2 topic, $3 owner, $4 priority,
 *		$5 run_at); returns its id.
 */
char *
pgbq_sql_insert(const PgbqCatalog *cat)
{
	return psprintf("INSERT INTO %s (sql_statement, topic, owner, priority, run_at, next_run_at) "
					"VALUES ($1, $2, $3, $4, $5, COALESCE($5, now())) RETURNING id",
					cat->qualified_table);
}

/*
 * pgbq_sql_insert_many
 *		Enqueue an array of statements ($1) as pending tasks, in array
 *		order; returns their ids in order.
 */
char *
pgbq_sql_insert_many(const PgbqCatalog *cat)
{
	return psprintf("WITH ins AS ("
					"  INSERT INTO %s (sql_statement, topic, owner, priority, run_at, next_run_at) "
					"  SELECT s.sql, $2, $3, $4, $5, COALESCE($5, now()) "
					"  FROM unnest($1) WITH ORDINALITY AS s(sql, ord) ORDER BY s.ord "
					"  RETURNING id) "
					"SELECT id FROM ins ORDER BY id",
					cat->qualified_table);
}

/*
 * pgbq_sql_insert_workflow
 *		Enqueue one task with a dedupe key ($6), a state ($7: pending,
 *		waiting or cancelled), prerequisites ($8) and, for a cancelled one,
 *		its error ($9).  keyed: do nothing if a queued task has the key.
 */
char *
pgbq_sql_insert_workflow(const char *qualified_table,
						 const char *qualified_schema, bool keyed)
{
	return psprintf("INSERT INTO %s AS t (sql_statement, topic, owner, priority, run_at, next_run_at, "
					"dedupe_key, state, after, errors, closed_at) "
					"VALUES ($1, $2, $3, $4, $5, COALESCE($5, now()), $6, "
					"CAST($7 AS %s.pg_background_queue_task_state), $8, $9, "
					"CASE WHEN $9 IS NOT NULL THEN now() END) "
					"%s RETURNING id",
					qualified_table, qualified_schema,
					keyed ? "ON CONFLICT (owner, (COALESCE(topic, '')), dedupe_key) "
					"WHERE dedupe_key IS NOT NULL "
					"AND state NOT IN ('running', 'finished', 'failed', 'cancelled') "
					"DO NOTHING" : "");
}

/*
 * pgbq_sql_claim
 *		Lock the first claimable task of a role ($1) due by $2, outside the
 *		topics $3, starting at the claim floor ($4, $5, $6; see
 *		claim_floor.c), a bound of the claim index scan, but for the tasks
 *		$7 (those a batch ran, whose finished marks wait for its end, and
 *		rows other workers hold: pgbq_claim_left_out).  Returns its id,
 *		topic, state, claim key, SQL, whether it has a dedupe key and the
 *		locked row version (a batch's finish checks that it is unchanged).
 */
char *
pgbq_sql_claim(const PgbqCatalog *cat)
{
	/* a task with a dedupe key is always marked running (worker_bookkeeping.c) */
	return psprintf("SELECT id, topic, state::text, priority, next_run_at, "
					"sql_statement, %s, ctid FROM %s "
					"WHERE owner = $1 AND state IN ('pending', 'retrying') "
					"AND next_run_at <= $2 AND COALESCE(topic, '') <> ALL ($3) "
					"AND (priority, next_run_at, id) >= ($4, $5, $6) "
					"AND id <> ALL ($7) "
					"ORDER BY priority, next_run_at, id "
					"LIMIT 1 FOR UPDATE SKIP LOCKED",
					cat->has_workflows ? "dedupe_key IS NOT NULL" : "false",
					cat->qualified_table);
}

/*
 * pgbq_sql_claim_next
 *		When the role's ($1) next claimable task is due, from the claim
 *		floor ($2, $3, $4) on.
 */
char *
pgbq_sql_claim_next(const PgbqCatalog *cat)
{
	return psprintf("SELECT min(next_run_at) FROM %s "
					"WHERE owner = $1 "
					"AND state IN ('pending', 'retrying') "
					"AND (priority, next_run_at, id) >= ($2, $3, $4)",
					cat->qualified_table);
}

/*
 * pgbq_sql_claim_check
 *		The first row of the role ($1) still claimable from the floor ($2,
 *		$3, $4) on, but for the rows workers hold ($5: locked by their
 *		claims, see claim_floor.c); the caller compares it with the claimed
 *		row.
 *
 *		No upper bound at the claimed row: a btree scan ends at a row
 *		comparison's bound only when the comparison is decided by its first
 *		column (seen on PostgreSQL 15), and claim keys mostly differ in their
 *		id alone, so "< (claimed key)" made every claim that found nothing
 *		in between (the usual case) read the role's whole queue to its end.
 *		This scan ends at the first claimable row, at most just past the
 *		claimed one.
 */
char *
pgbq_sql_claim_check(const PgbqCatalog *cat)
{
	return psprintf("SELECT priority, next_run_at, id FROM %s "
					"WHERE owner = $1 AND state IN ('pending', 'retrying') "
					"AND (priority, next_run_at, id) >= ($2, $3, $4) "
					"AND id <> ALL ($5) "
					"ORDER BY priority, next_run_at, id LIMIT 1",
					cat->qualified_table);
}

/*
 * pgbq_sql_mark_running
 *		Mark the claimed task ($1) running, started at $2 by worker $3,
 *		counting the attempt (its SQL came with the claim); returns the new
 *		row version's ctid.  With by_tid, find the row by the version the
 *		claim locked ($4): a TID scan reads the one heap tuple, where the
 *		primary key's scan would share the leaf page every worker's
 *		updates insert into.
 */
char *
pgbq_sql_mark_running(const PgbqCatalog *cat, bool by_tid)
{
	return psprintf("UPDATE %s SET state = 'running', "
					"attempts = attempts + 1, started_at = $2, "
					"closed_at = NULL, worker_pid = $3 "
					"WHERE %sid = $1 RETURNING ctid",
					cat->qualified_table, by_tid ? "ctid = $4 AND " : "");
}

/*
 * pgbq_sql_finish
 *		Mark task $1, running in worker $3, finished at $2; with result
 *		(1.3's objects, a task whose statements returned rows), also its
 *		result ($4) and whether it was cut ($5).  With by_tid, find the row
 *		by the version its running mark wrote (the last parameter, see
 *		pgbq_sql_mark_running); the caller falls back to the id when that
 *		version is gone (the task's statements updated its own row).
 */
char *
pgbq_sql_finish(const PgbqCatalog *cat, bool result, bool by_tid)
{
	return psprintf("UPDATE %s SET state = 'finished', closed_at = $2, "
					"worker_pid = NULL%s "
					"WHERE %sid = $1 AND state = 'running' "
					"AND worker_pid = $3", cat->qualified_table,
					result ? ", result = $4, result_truncated = $5" : "",
					!by_tid ? "" : result ? "ctid = $6 AND " : "ctid = $4 AND ");
}

/*
 * pgbq_sql_finish_claimed
 *		Mark task $1, claimed in this transaction and never marked running
 *		(a task of a batch: its running mark would be seen by nobody),
 *		finished at $2: count the attempt and its start ($3) here; with
 *		result, also its result ($4) and whether it was cut ($5).  The
 *		claim's row lock keeps it pending or retrying until then.
 */
char *
pgbq_sql_finish_claimed(const PgbqCatalog *cat, bool result)
{
	return psprintf("UPDATE %s SET state = 'finished', "
					"attempts = attempts + 1, started_at = $3, closed_at = $2, "
					"worker_pid = NULL%s "
					"WHERE id = $1 AND state IN ('pending', 'retrying')",
					cat->qualified_table,
					result ? ", result = $4, result_truncated = $5" : "");
}

/*
 * pgbq_sql_finish_claimed_many
 *		pgbq_sql_finish_claimed for several tasks of a batch at once, at the
 *		batch's end ($1 ids, $2 ends, $3 starts; with result, $4 results
 *		and $5 whether each was cut).  Whatever state a later task of the
 *		batch gave a row (see pgbq_batch_finish_deferred).
 */
char *
pgbq_sql_finish_claimed_many(const PgbqCatalog *cat, bool result)
{
	return psprintf("UPDATE %s t SET state = 'finished', "
					"attempts = t.attempts + 1, started_at = u.started_at, "
					"closed_at = u.closed_at, worker_pid = NULL%s "
					"FROM unnest($1, $2, $3%s) "
					"AS u(id, closed_at, started_at%s) "
					"WHERE t.id = u.id",
					cat->qualified_table,
					result ? ", result = u.result, result_truncated = u.truncated" : "",
					result ? ", $4, $5" : "",
					result ? ", result, truncated" : "");
}

/*
 * pgbq_sql_give_back
 *		Return task $1, running in this worker, to its previous state ($2)
 *		without burning the attempt.
 */
char *
pgbq_sql_give_back(const PgbqCatalog *cat, int worker_pid)
{
	return psprintf("UPDATE %s SET state = CAST($2 AS %s.pg_background_queue_task_state), "
					"attempts = GREATEST(attempts - 1, 0), worker_pid = NULL "
					"WHERE id = $1 AND state = 'running' AND worker_pid = %d",
					cat->qualified_table, cat->qualified_schema,
					worker_pid);
}

/*
 * pgbq_sql_lock_running
 *		Lock task $1 if it is still running; returns its attempts.
 */
char *
pgbq_sql_lock_running(const PgbqCatalog *cat)
{
	return psprintf("SELECT attempts FROM %s WHERE id = $1 AND state = 'running' FOR UPDATE",
					cat->qualified_table);
}

/*
 * pgbq_sql_record_failure
 *		Record a failed attempt of task $1 (locked by pgbq_sql_lock_running):
 *		next state $2, retry delay $3 s, message $4, SQLSTATE $5, detail $6.
 */
char *
pgbq_sql_record_failure(const PgbqCatalog *cat)
{
	return psprintf("UPDATE %s SET state = CAST($2 AS %s.pg_background_queue_task_state), "
					"closed_at = CASE WHEN $2 = 'retrying' THEN NULL ELSE now() END, "
					"retry_count = retry_count + CASE WHEN $2 = 'retrying' THEN 1 ELSE 0 END, "
					"retry_delay_in_sec = $3, "
					"next_run_at = CASE WHEN $2 = 'retrying' "
					"  THEN now() + make_interval(secs => $3) ELSE next_run_at END, "
					"errors = $4, "
					"error_history = error_history || jsonb_build_array(jsonb_build_object("
					"  'attempt', attempts, 'sqlstate', $5, 'message', $4, 'detail', $6, "
					"  'at', now())), "
					"worker_pid = NULL "
					"WHERE id = $1",
					cat->qualified_table, cat->qualified_schema);
}

/*
 * pgbq_sql_update_own_task
 *		An UPDATE of task $1 if role $2 may manage it (USAGE of its owner);
 *		set_and_where is the SET list and WHERE clause (pgbq_sql_cancel,
 *		pgbq_sql_retry, pgbq_sql_reschedule).  Returns the owner.
 */
char *
pgbq_sql_update_own_task(const PgbqCatalog *cat, const char *set_and_where)
{
	return psprintf("UPDATE %s t SET %s AND pg_catalog.pg_has_role($2, t.owner, 'USAGE') "
					"RETURNING t.owner::pg_catalog.oid",
					cat->qualified_table, set_and_where);
}

/*
 * pgbq_sql_own_task_running
 *		Is task $1, one role $2 may manage, running?
 */
char *
pgbq_sql_own_task_running(const PgbqCatalog *cat)
{
	return psprintf("SELECT 1 FROM %s t WHERE t.id = $1 "
					"AND t.state = 'running' "
					"AND pg_catalog.pg_has_role($2, t.owner, 'USAGE')",
					cat->qualified_table);
}

/*
 * pgbq_sql_cancel
 *		SET and WHERE of pg_background_cancel for a queued task, cancelled
 *		by role_name.
 */
char *
pgbq_sql_cancel(const char *role_name)
{
	return psprintf("state = 'cancelled', closed_at = now(), worker_pid = NULL, "
					"errors = 'cancelled by pg_background_cancel()', "
					"error_history = t.error_history || jsonb_build_array(jsonb_build_object("
					"'attempt', t.attempts, 'sqlstate', '57014', "
					"'message', 'cancelled by pg_background_cancel()', "
					"'detail', %s, 'at', now())) "
	/* as text: 1.1's enum has no 'waiting' */
					"WHERE t.id = $1 AND t.state::text IN ('pending', 'retrying', 'waiting')",
					quote_literal_cstr(psprintf("cancelled by role %s", role_name)));
}

/*
 * pgbq_sql_retry_1_1
 *		SET and WHERE of pg_background_retry with 1.1's objects (library
 *		updated, ALTER EXTENSION UPDATE not yet): no prerequisites, no keys.
 */
const char *
pgbq_sql_retry_1_1(void)
{
	return "state = 'pending', next_run_at = now(), closed_at = NULL, "
		"attempts = 0, retry_count = 0, retry_delay_in_sec = 0 "
		"WHERE t.id = $1 AND t.state IN ('failed', 'cancelled')";
}

/*
 * pgbq_sql_retry
 *		SET and WHERE of pg_background_retry: waiting again while a
 *		prerequisite is open, else pending; the dedupe key is dropped if
 *		another queued task has it now.
 */
char *
pgbq_sql_retry(const PgbqCatalog *cat)
{
	return psprintf("state = CASE WHEN t.after IS NOT NULL AND EXISTS ("
					"SELECT 1 FROM %s p WHERE p.id = ANY (t.after) "
					"AND p.state <> 'finished') "
					"THEN 'waiting' ELSE 'pending' END"
					"::%s.pg_background_queue_task_state, "
					"next_run_at = now(), closed_at = NULL, "
					"attempts = 0, retry_count = 0, retry_delay_in_sec = 0, "
					"dedupe_key = CASE WHEN t.dedupe_key IS NOT NULL AND EXISTS ("
					"SELECT 1 FROM %s k WHERE k.owner = t.owner "
					"AND COALESCE(k.topic, '') = COALESCE(t.topic, '') "
					"AND k.dedupe_key = t.dedupe_key AND k.id <> t.id "
					"AND k.state NOT IN ('finished', 'failed', 'cancelled')) "
					"THEN NULL ELSE t.dedupe_key END "
					"WHERE t.id = $1 AND t.state IN ('failed', 'cancelled')",
					cat->qualified_table, cat->qualified_schema,
					cat->qualified_table);
}

/*
 * pgbq_sql_reschedule
 *		SET and WHERE of pg_background_reschedule: a new priority and/or
 *		run_at (NULL: unchanged; at least one is given, both validated by
 *		the caller).  A waiting task keeps its next_run_at: the release
 *		trigger derives it from run_at.
 */
char *
pgbq_sql_reschedule(const int32 *priority, const TimestampTz *run_at)
{
	StringInfoData set;

	initStringInfo(&set);
	if (priority != NULL)
		appendStringInfo(&set, "priority = %d", *priority);
	if (run_at != NULL)
	{
		char	   *at;

		/* exact, whatever DateStyle: microseconds since the PostgreSQL epoch */
		at = psprintf("(TIMESTAMPTZ '2000-01-01 00:00:00+00' + " INT64_FORMAT " * INTERVAL '1 microsecond')",
					  (int64) *run_at);
		appendStringInfo(&set, "%srun_at = %s, next_run_at = CASE WHEN t.state = 'waiting' "
						 "THEN t.next_run_at ELSE %s END",
						 set.len > 0 ? ", " : "", at, at);
	}
	appendStringInfoString(&set, " WHERE t.id = $1 AND t.state IN ('pending', 'retrying', 'waiting')");
	return set.data;
}

/*
 * pgbq_sql_orphan_scan
 *		Lock the running tasks whose worker, by the list of live workers
 *		($1 pids, $2 their tasks), is gone.
 */
char *
pgbq_sql_orphan_scan(const PgbqCatalog *cat)
{
	return psprintf("SELECT t.id, t.topic, t.worker_pid FROM %s t "
					"WHERE t.state = 'running' AND NOT EXISTS ("
					"  SELECT 1 FROM unnest($1, $2) AS l(pid, task_id) "
					"  WHERE l.pid = t.worker_pid AND l.task_id = t.id) "
					"FOR UPDATE SKIP LOCKED",
					cat->qualified_table);
}

/*
 * pgbq_sql_fail_unrunnable_roles
 *		Fail the queued tasks whose owner no longer exists (or cannot log
 *		in, where workers need LOGIN); returns their ids.
 */
char *
pgbq_sql_fail_unrunnable_roles(const PgbqCatalog *cat)
{
	const char *msg = "('role with OID ' || t.owner::pg_catalog.oid::pg_catalog.text || "
		"' no longer exists or cannot log in')";

	return psprintf("UPDATE %s t SET state = 'failed', closed_at = now(), "
					"errors = %s, "
					"error_history = t.error_history || jsonb_build_array(jsonb_build_object("
					"  'attempt', t.attempts, 'sqlstate', '28000', 'message', %s, "
					"  'detail', NULL, 'at', now())) "
					"WHERE t.state IN ('pending', 'retrying') AND NOT EXISTS ("
					"  SELECT 1 FROM pg_catalog.pg_authid a WHERE a.oid = t.owner %s) "
					"RETURNING t.id",
					cat->qualified_table, msg, msg,
					PGBQ_REQUIRE_ROLE_LOGIN ? "AND a.rolcanlogin" : "");
}

/*
 * pgbq_sql_prune
 *		Retention: delete up to batch terminal tasks closed more than $1
 *		seconds ago; returns how many.
 */
char *
pgbq_sql_prune(const PgbqCatalog *cat, int batch)
{
	return psprintf("SELECT %s._pg_background_queue_prune("
					"now() - make_interval(secs => $1), NULL, %d)",
					cat->qualified_schema, batch);
}

/*
 * pgbq_sql_purge
 *		pg_background_queue_purge: delete the terminal tasks of role $2
 *		(NULL: everyone's) closed before now() - $1; returns how many.
 */
char *
pgbq_sql_purge(const PgbqCatalog *cat)
{
	return psprintf("SELECT %s._pg_background_queue_prune(now() - $1, $2, 2147483647)",
					cat->qualified_schema);
}
