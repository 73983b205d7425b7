/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Task workers: long-lived dynamic background workers, each connected
 *	  to one database as one role, that claim, run and finish that role's
 *	  tasks.
 *
 * One task costs two commits:
 *	1. the claim: the attempt is counted and the row marked running.  For
 *	   the first claim after the worker was idle this is its own commit
 *	   (durable for the first claim of a process, so a task that crashes
 *	   the server is always counted; asynchronous afterwards);
 *	2. the task's transaction: the task's effects, its finished mark and the
 *	   claim of the next task commit together, so a crash can never leave
 *	   effects committed while the task is still pending or running, and
 *	   the next attempt is recorded durably for free.
 *
 * A failed attempt is recorded in a new transaction (which also claims the
 * next task).  A cancel request, a timeout and a shutdown all interrupt the
 * task with a query cancel; the worker tells them apart by flags: cancel
 * ends the task as cancelled, timeout as a failed attempt (SQLSTATE 57014),
 * shutdown gives the task back without burning the attempt.  A task cannot
 * ignore that interrupt (PL/pgSQL can catch a query cancel): a watchdog
 * ticking while the task runs notices that the task is still running
 * PGBQ_INTERRUPT_GRACE_MS after it was interrupted and terminates the
 * worker (a FATAL error, which nothing can catch); on its way out the
 * worker rolls the task back and records the same outcome.
 *
 * DROP EXTENSION asks the database's workers to exit when it commits.  A
 * worker then abandons its task: the task's transaction rolls back and its
 * row went with the table, so nothing is written anywhere.  Every write
 * about a claimed task first checks that the task table is still the one
 * the task was claimed from (the extension may have been created again),
 * and finish and give-back only touch the row while it is running in this
 * process.
 *
 * After each task the worker resets its session (GUCs, role, prepared
 * statements, cursors, advisory locks, LISTEN, temp tables) in a
 * transaction of its own, which commits before anything else runs: a reset
 * inside the next task's transaction would be undone if that task failed,
 * and would come too late for the transaction characteristics, which
 * StartTransaction copies from default_transaction_* before anything runs.
 * Bookkeeping (claim, finish, recording a failure, give-back) runs in a
 * fixed baseline whatever the task or its role's defaults left behind:
 * READ COMMITTED, READ WRITE, and the settings pinned by
 * pgbq_pin_bookkeeping_settings.  The claim fused into a task's commit is
 * skipped when the task ran at REPEATABLE READ or SERIALIZABLE (its
 * snapshot is not one to claim with); the worker claims in a transaction
 * of its own instead.
 *
 * Shutdown: while a task runs, SIGTERM interrupts it (see above); during
 * bookkeeping it interrupts a wait for a heavyweight lock (the bookkeeping
 * tick looks for one), so a worker never outlives a shutdown behind
 * someone else's lock.  An error while recording a task's end is logged
 * and the recording retried after PGBQ_BOOKKEEPING_RETRY_MS; it never
 * turns into a dead worker and an "interrupted" attempt.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"

/* A claimed task, copied out of the claim transaction. */
typedef struct PgbqTask
{
	int64		id;
	char	   *sql;
	char	   *topic;			/* NULL: default topic */
	char		prev_state[16];
	Oid			table_oid;		/* the task table it was claimed from */
} PgbqTask;

static int	pgbq_slotno = -1;
static bool pgbq_connected = false;
static bool pgbq_first_claim = true;
static bool pgbq_extension_dropped = false;	/* while we held a task */
static char pgbq_dbname[NAMEDATALEN];
static MemoryContext pgbq_worker_ctx = NULL;
static MemoryContext pgbq_task_ctx = NULL;
static PgbqCatalog pgbq_cat;

static SPIPlanPtr pgbq_claim_plan = NULL;
static SPIPlanPtr pgbq_mark_running_plan = NULL;
static SPIPlanPtr pgbq_finish_plan = NULL;
static SPIPlanPtr pgbq_next_eligible_plan = NULL;

static volatile sig_atomic_t pgbq_got_sigterm = false;
static volatile sig_atomic_t pgbq_in_bookkeeping = false;
static bool pgbq_must_exit = false;	/* session could not be reset */
static volatile sig_atomic_t pgbq_self_terminated = false;
static volatile sig_atomic_t pgbq_in_task = false;
static volatile sig_atomic_t pgbq_timed_out = false;
static TimeoutId pgbq_timeout_id;

/*
 * The interrupt watchdog: while a task runs it ticks every
 * PGBQ_WATCHDOG_TICK_MS; once the task was interrupted (cancel, timeout,
 * SIGTERM), enough ticks without the task ending escalate to terminating
 * the worker.
 */
#define PGBQ_WATCHDOG_TICK_MS		250
#define PGBQ_INTERRUPT_GRACE_MS		500

/* Pause between attempts to record a task's end after an error. */
#define PGBQ_BOOKKEEPING_RETRY_MS	1000

/* Pause after a claim failed with an error (logged) before the next try. */
#define PGBQ_CLAIM_ERROR_BACKOFF_MS	1000

/*
 * A claim skips at most this many tasks held back by a topic limit before
 * it gives up for now (each skipped topic is excluded from the next round).
 */
#define PGBQ_CLAIM_ROUNDS			32

/*
 * A worker that could not connect (role dropped, no LOGIN) keeps the
 * launcher from starting another one for its role this long.
 */
#define PGBQ_CONNECT_FAILURE_BACKOFF_S	10
static TimeoutId pgbq_watchdog_id;
static volatile sig_atomic_t pgbq_interrupted = false;
static volatile sig_atomic_t pgbq_interrupted_ticks = 0;
static volatile sig_atomic_t pgbq_escalated = false;

/* The task being run, and its topic's policy, for the exit callback. */
static PgbqTask *pgbq_current_task = NULL;
static volatile int64 pgbq_current_task_id = 0;
static PgbqTopicPolicy pgbq_current_policy;

static void pgbq_stop_task_timers(void);
static void pgbq_begin_bookkeeping_tick(void);

/*
 * pgbq_on_sigterm
 *		SIGTERM: stop after giving back the current task.  While a task runs,
 *		interrupt it with a query cancel so the worker regains control.  A
 *		task that terminates its own worker (pg_terminate_backend of its
 *		own pid, e.g. while terminating every session of its role) is not a
 *		shutdown: giving it back would run it again forever, so its attempt
 *		fails instead and the worker stays.
 */
static void
pgbq_on_sigterm(bool from_self)
{
	if (pgbq_in_task)
	{
		if (from_self)
			pgbq_self_terminated = true;
		else
			pgbq_got_sigterm = true;
		pgbq_interrupted = true;
		InterruptPending = true;
		QueryCancelPending = true;
	}
	else if (!from_self)
	{
		pgbq_got_sigterm = true;
		/* bookkeeping waiting for someone else's lock: stop waiting */
		if (pgbq_in_bookkeeping && MyProc != NULL && MyProc->waitLock != NULL)
		{
			InterruptPending = true;
			QueryCancelPending = true;
		}
	}
	SetLatch(MyLatch);
}

#ifdef SA_SIGINFO
/*
 * pgbq_worker_sigterm
 *		The SIGTERM handler, told who sent the signal.
 */
static void
pgbq_worker_sigterm(int signo, siginfo_t *info, void *context)
{
	int			save_errno = errno;

	(void) signo;
	(void) context;
	pgbq_on_sigterm(info != NULL && info->si_code == SI_USER &&
					info->si_pid == MyProcPid);
	errno = save_errno;
}

/*
 * pgbq_install_sigterm
 *		Install pgbq_worker_sigterm with the sender's identity.
 */
static void
pgbq_install_sigterm(void)
{
	struct sigaction act;

	memset(&act, 0, sizeof(act));
	act.sa_sigaction = pgbq_worker_sigterm;
	sigemptyset(&act.sa_mask);
	act.sa_flags = SA_SIGINFO | SA_RESTART;
	if (sigaction(SIGTERM, &act, NULL) != 0)
		elog(FATAL, "could not install the SIGTERM handler: %m");
}
#else
/*
 * pgbq_worker_sigterm
 *		The SIGTERM handler where the sender is not known.
 */
static void
pgbq_worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	pgbq_on_sigterm(false);
	errno = save_errno;
}

/*
 * pgbq_install_sigterm
 *		Install pgbq_worker_sigterm.
 */
static void
pgbq_install_sigterm(void)
{
	pqsignal(SIGTERM, pgbq_worker_sigterm);
}
#endif

/*
 * pgbq_cancel_requested
 *		Has pg_background_cancel() asked our slot to cancel this task?  Read
 *		without the lock (also from a signal handler): the canceller sets
 *		the flag under the lock before it sends SIGINT.
 */
static bool
pgbq_cancel_requested(int64 task_id)
{
	volatile PgbqSlot *me = &pgbq_shared->slots[pgbq_slotno];

	return me->cancel_requested && me->task_id == task_id;
}

/*
 * pgbq_worker_sigint
 *		SIGINT: a query cancel while a task runs (pg_background_cancel,
 *		pg_cancel_backend, or the task's own statement_timeout or
 *		lock_timeout); ignored between tasks, where a cancel request for the
 *		next task is found in the slot when the task starts.  Only a cancel
 *		by pg_background_cancel() starts the watchdog's count: a task may
 *		catch its own timeouts and go on.
 */
static void
pgbq_worker_sigint(SIGNAL_ARGS)
{
	int			save_errno = errno;

	if (pgbq_in_task && !proc_exit_inprogress)
	{
		if (pgbq_cancel_requested(pgbq_current_task_id))
			pgbq_interrupted = true;
		InterruptPending = true;
		QueryCancelPending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * pgbq_task_timeout_handler
 *		The task's time limit passed: interrupt it.
 */
static void
pgbq_task_timeout_handler(void)
{
	if (!pgbq_in_task)
		return;
	pgbq_timed_out = true;
	pgbq_interrupted = true;
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

/*
 * pgbq_watchdog_handler
 *		A tick while a task runs: if the task was interrupted and is still
 *		running after the grace period, it caught the query cancel; make the
 *		worker exit (see pgbq_worker_before_exit).  A tick during
 *		bookkeeping: if shutdown was asked for while the worker waits for a
 *		lock, interrupt the wait.
 */
static void
pgbq_watchdog_handler(void)
{
	if (pgbq_in_bookkeeping)
	{
		/*
		 * A SIGTERM that came just before a lock wait began: interrupt the
		 * wait (the bookkeeping's error path sees pgbq_got_sigterm).
		 */
		if (pgbq_got_sigterm && MyProc != NULL && MyProc->waitLock != NULL)
		{
			InterruptPending = true;
			QueryCancelPending = true;
			SetLatch(MyLatch);
		}
		return;
	}
	if (!pgbq_in_task)
		return;
	if (!pgbq_interrupted || pgbq_escalated)
		return;
	pgbq_interrupted_ticks++;
	if (pgbq_interrupted_ticks * PGBQ_WATCHDOG_TICK_MS > PGBQ_INTERRUPT_GRACE_MS)
	{
		pgbq_escalated = true;
		InterruptPending = true;
		ProcDiePending = true;
		SetLatch(MyLatch);
	}
}

/*
 * pgbq_worker_detach
 *		Free our slot on exit.  If we exit while holding a task (a FATAL
 *		error), ask for a maintenance pass to account for it; if we never
 *		managed to connect (role dropped or not allowed to log in), back off
 *		and let maintenance fail that role's tasks.
 */
static void
pgbq_worker_detach(int code, Datum arg)
{
	PgbqSlot   *s;
	bool		need_maintenance = false;
	Oid			dboid;

	(void) code;
	(void) arg;
	if (pgbq_shared == NULL || pgbq_slotno < 0)
		return;
	s = &pgbq_shared->slots[pgbq_slotno];
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	dboid = s->dboid;
	if (s->pid == MyProcPid)
	{
		need_maintenance = (s->state == PGBQ_SLOT_RUNNING);
		if (!pgbq_connected && s->kind == PGBQ_KIND_TASK)
		{
			PgbqDemand *d = pgbq_demand_lookup(s->dboid, s->roleoid, false);

			if (d)
				d->retry_after = GetCurrentTimestamp() +
					PGBQ_CONNECT_FAILURE_BACKOFF_S * USECS_PER_SEC;
			need_maintenance = true;
		}
		s->state = PGBQ_SLOT_FREE;
		s->pid = 0;
		s->latch = NULL;
		s->task_id = 0;
		s->exit_reasons = 0;
		s->waiting_capacity = false;
		s->cancel_requested = false;
	}
	LWLockRelease(pgbq_shared->lock);
	if (need_maintenance)
		pgbq_request_maintenance(dboid);
	else
		pgbq_wake_launcher();
}

/*
 * pgbq_attach_slot
 *		Take over the slot the launcher reserved for us; exit quietly if it
 *		was given to someone else meanwhile.
 */
static PgbqSlot *
pgbq_attach_slot(int slotno, uint32 generation)
{
	PgbqSlot   *s;

	if (pgbq_shared == NULL || slotno < 0 || slotno >= pgbq_shared->nslots)
		proc_exit(0);
	s = &pgbq_shared->slots[slotno];
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	if (s->generation != generation || s->state != PGBQ_SLOT_STARTING)
	{
		LWLockRelease(pgbq_shared->lock);
		proc_exit(0);
	}
	s->pid = MyProcPid;
	s->latch = MyLatch;
	s->state = PGBQ_SLOT_IDLE;
	s->backend_start = GetCurrentTimestamp();
	s->tasks_done = 0;
	pgbq_slotno = slotno;
	LWLockRelease(pgbq_shared->lock);
	before_shmem_exit(pgbq_worker_detach, 0);
	return s;
}

/*
 * pgbq_prepare
 *		Prepare and keep one bookkeeping statement.
 */
static SPIPlanPtr
pgbq_prepare(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep plan");
	return plan;
}

/*
 * pgbq_worker_plans
 *		Make sure the catalog lookup and prepared statements match the
 *		installed extension, and lock its task table; returns false if it is
 *		gone.  Runs inside a transaction and an SPI connection.  Plans are
 *		prepared as the table owner, the user they always run as, so they
 *		are never replanned for a change of user.
 */
static bool
pgbq_worker_plans(void)
{
	PgbqCatalog cat;
	MemoryContext old;
	Oid			claim_types[3] = {OIDOID, TIMESTAMPTZOID, TEXTARRAYOID};
	Oid			mark_types[3] = {INT8OID, TIMESTAMPTZOID, INT4OID};
	Oid			finish_types[3] = {INT8OID, TIMESTAMPTZOID, INT4OID};
	Oid			next_types[1] = {OIDOID};
	SPIPlanPtr	claim;
	SPIPlanPtr volatile mark = NULL;
	SPIPlanPtr volatile finish = NULL;
	SPIPlanPtr volatile next = NULL;
	const char *t;
	Oid			save_userid;
	int			save_sec;
	int			nest;

	/*
	 * Lock the table by OID before using it by name, then check that it
	 * still exists: a DROP EXTENSION that commits while we wait for the lock
	 * must not send us to another table of the same name.
	 */
	if (OidIsValid(pgbq_cat.table_oid))
	{
		LockRelationOid(pgbq_cat.table_oid, RowShareLock);
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(pgbq_cat.table_oid)))
			return true;
	}

	for (;;)
	{
		bool		found;

		old = MemoryContextSwitchTo(pgbq_worker_ctx);
		found = pgbq_catalog_lookup(&cat, true);
		MemoryContextSwitchTo(old);
		if (!found)
			return false;
		LockRelationOid(cat.table_oid, RowShareLock);
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(cat.table_oid)))
			break;
	}
	/*
	 * Prepare the new plans before freeing the old ones, and switch over
	 * only once all of them exist: an error in between (say, a changed
	 * table) leaves the old catalog and plans in place, never a freed or
	 * missing plan that the next claim would execute.
	 */
	nest = pgbq_begin_privileged(cat.owner, &save_userid, &save_sec);
	t = cat.qualified_table;
	claim = pgbq_prepare(psprintf("SELECT id, topic, state::text FROM %s "
								  "WHERE owner = $1 AND state IN ('pending', 'retrying') "
								  "AND next_run_at <= $2 AND COALESCE(topic, '') <> ALL ($3) "
								  "ORDER BY priority, next_run_at, id "
								  "LIMIT 1 FOR UPDATE SKIP LOCKED", t),
						 3, claim_types);
	PG_TRY();
	{
		mark = pgbq_prepare(psprintf("UPDATE %s SET state = 'running', "
									 "attempts = attempts + 1, started_at = $2, "
									 "closed_at = NULL, worker_pid = $3 "
									 "WHERE id = $1 RETURNING sql_statement", t),
							3, mark_types);
		finish = pgbq_prepare(psprintf("UPDATE %s SET state = 'finished', closed_at = $2, "
									   "worker_pid = NULL "
									   "WHERE id = $1 AND state = 'running' "
									   "AND worker_pid = $3", t),
							  3, finish_types);
		next = pgbq_prepare(psprintf("SELECT min(next_run_at) FROM %s "
									 "WHERE owner = $1 "
									 "AND state IN ('pending', 'retrying')", t),
							1, next_types);
	}
	PG_CATCH();
	{
		/* kept plans are not freed by the abort */
		if (next)
			SPI_freeplan(next);
		if (finish)
			SPI_freeplan(finish);
		if (mark)
			SPI_freeplan(mark);
		SPI_freeplan(claim);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pgbq_end_privileged(nest, save_userid, save_sec);

	if (pgbq_claim_plan)
	{
		SPI_freeplan(pgbq_claim_plan);
		SPI_freeplan(pgbq_mark_running_plan);
		SPI_freeplan(pgbq_finish_plan);
		SPI_freeplan(pgbq_next_eligible_plan);
	}
	pgbq_claim_plan = claim;
	pgbq_mark_running_plan = mark;
	pgbq_finish_plan = finish;
	pgbq_next_eligible_plan = next;
	pgbq_cat = cat;
	return true;
}

/*
 * pgbq_task_table_alive
 *		Inside a transaction and an SPI connection: is the table the task was
 *		claimed from still the extension's task table?  After DROP EXTENSION
 *		it is not, even once the extension has been created again (the
 *		task's id means nothing in the new table); then remember that the
 *		worker must leave.
 */
static bool
pgbq_task_table_alive(PgbqTask *task)
{
	AcceptInvalidationMessages();
	if (pgbq_worker_plans() && pgbq_cat.table_oid == task->table_oid)
		return true;
	pgbq_extension_dropped = true;
	return false;
}

/*
 * pgbq_log_abandoned
 *		Say in the log that a task was abandoned because the extension was
 *		dropped while this worker held it.
 */
static void
pgbq_log_abandoned(PgbqTask *task, bool started)
{
	ereport(LOG,
			(errmsg("pg_background_queue: extension was dropped in database \"%s\" while task " INT64_FORMAT " was %s; worker exiting",
					pgbq_dbname, task->id, started ? "running" : "claimed"),
			 started ? errdetail("The task's effects were rolled back.") : 0));
}

/*
 * pgbq_text_array
 *		Build a text[] of the topics skipped so far ('' is the NULL topic).
 */
static Datum
pgbq_text_array(List *topics)
{
	Datum	   *elems;
	ListCell   *lc;
	int			n = 0;

	elems = palloc(sizeof(Datum) * (list_length(topics) + 1));
	foreach(lc, topics)
		elems[n++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

/*
 * pgbq_claim
 *		Claim the next eligible task of our role, in the current transaction
 *		(caller is inside SPI and a privileged section).  Returns NULL if
 *		none can start now; *wait_until is then the earliest time one might
 *		(0 if unknown), *blocked whether a limit held a task back.
 */
static PgbqTask *
pgbq_claim(TimestampTz *wait_until, bool *blocked)
{
	List	   *skipped = NIL;
	int			round;

	*wait_until = 0;
	*blocked = false;
	for (round = 0; round < PGBQ_CLAIM_ROUNDS; round++)
	{
		Datum		args[3];
		bool		isnull;
		int64		id;
		char	   *topic = NULL;
		char	   *prev_state;
		PgbqTopicPolicy policy;
		PgbqStartResult res;
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz retry_at;
		int			rc;

		args[0] = ObjectIdGetDatum(pgbq_shared->slots[pgbq_slotno].roleoid);
		args[1] = TimestampTzGetDatum(now);
		args[2] = pgbq_text_array(skipped);
		rc = SPI_execute_plan(pgbq_claim_plan, args, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 0)
			break;
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
		topic = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		prev_state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);

		pgbq_topic_policy(topic, &policy);
		res = pgbq_slot_try_start(pgbq_slotno, id, topic, &policy, now, &retry_at);
		if (res == PGBQ_START_OK)
		{
			PgbqTask   *task;
			Datum		margs[3];
			MemoryContext old;

			margs[0] = Int64GetDatum(id);
			margs[1] = TimestampTzGetDatum(GetCurrentTimestamp());
			margs[2] = Int32GetDatum(MyProcPid);
			rc = SPI_execute_plan(pgbq_mark_running_plan, margs, NULL, false, 1);
			if (rc != SPI_OK_UPDATE_RETURNING || SPI_processed != 1)
				elog(ERROR, "could not mark task " INT64_FORMAT " running", id);
			old = MemoryContextSwitchTo(pgbq_worker_ctx);
			task = palloc0(sizeof(PgbqTask));
			task->id = id;
			task->sql = SPI_getvalue(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1);
			task->topic = topic ? pstrdup(topic) : NULL;
			strlcpy(task->prev_state, prev_state, sizeof(task->prev_state));
			task->table_oid = pgbq_cat.table_oid;
			MemoryContextSwitchTo(old);
			return task;
		}
		*blocked = true;
		if (res == PGBQ_START_RATE_LIMITED &&
			(*wait_until == 0 || retry_at < *wait_until))
			*wait_until = retry_at;
		skipped = lappend(skipped, topic ? topic : "");
	}

	/* Nothing can start now: when could something become eligible? */
	{
		Datum		args[1];
		bool		isnull;
		Datum		d;
		int			rc;

		args[0] = ObjectIdGetDatum(pgbq_shared->slots[pgbq_slotno].roleoid);
		rc = SPI_execute_plan(pgbq_next_eligible_plan, args, NULL, true, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not compute next eligible time");
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
						  &isnull);
		if (!isnull)
		{
			TimestampTz next = DatumGetTimestampTz(d);

			if (next > GetCurrentTimestamp() &&
				(*wait_until == 0 || next < *wait_until))
				*wait_until = next;
		}
	}
	return NULL;
}

/*
 * pgbq_bookkeeping_claim
 *		Claim in the current transaction with SPI and privileges set up.
 *		Returns false (and no task) if the extension is gone.
 */
static bool
pgbq_bookkeeping_claim(PgbqTask **task, TimestampTz *wait_until, bool *blocked)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;

	*task = NULL;
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!pgbq_worker_plans())
	{
		SPI_finish();
		PopActiveSnapshot();
		return false;
	}
	nest = pgbq_begin_privileged(pgbq_cat.owner, &save_userid, &save_sec);
	*task = pgbq_claim(wait_until, blocked);
	pgbq_end_privileged(nest, save_userid, save_sec);
	SPI_finish();
	PopActiveSnapshot();
	return true;
}

/*
 * pgbq_standalone_claim
 *		Claim in a transaction of its own.
 */
static bool
pgbq_standalone_claim(PgbqTask **task, TimestampTz *wait_until, bool *blocked)
{
	bool		ok;

	pgbq_start_bookkeeping_xact();
	if (!pgbq_first_claim)
		(void) set_config_option("synchronous_commit", "off",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	ok = pgbq_bookkeeping_claim(task, wait_until, blocked);
	CommitTransactionCommand();
	if (*task)
		pgbq_first_claim = false;
	return ok;
}

/*
 * pgbq_release_slot_task
 *		Our slot no longer runs the task.
 */
static void
pgbq_release_slot_task(void)
{
	pgbq_slot_finish_task(pgbq_slotno);
}

/*
 * pgbq_guarded_claim
 *		pgbq_standalone_claim, surviving errors (a stray cancel signal, a
 *		serialization hiccup): the error is logged, the transaction and slot
 *		are cleaned up, and the worker backs off for a second.
 */
static bool
pgbq_guarded_claim(PgbqTask **task, TimestampTz *wait_until, bool *blocked)
{
	volatile bool ok = true;
	MemoryContext ctx = CurrentMemoryContext;

	pgbq_begin_bookkeeping_tick();
	PG_TRY();
	{
		ok = pgbq_standalone_claim(task, wait_until, blocked);
	}
	PG_CATCH();
	{
		pgbq_stop_task_timers();
		pgbq_recover_from_error(ctx);
		QueryCancelPending = false;
		pgbq_release_slot_task();
		*task = NULL;
		*blocked = false;
		*wait_until = GetCurrentTimestamp() + PGBQ_CLAIM_ERROR_BACKOFF_MS * 1000;
		ok = true;
	}
	PG_END_TRY();
	pgbq_stop_task_timers();
	return ok;
}

/*
 * pgbq_give_back
 *		Return a claimed task to its previous state without burning the
 *		attempt (shutdown), in the current transaction.
 */
static void
pgbq_give_back(PgbqTask *task)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		args[2];
	char	   *sql;

	PushActiveSnapshot(GetTransactionSnapshot());
	nest = pgbq_begin_privileged(pgbq_cat.owner, &save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	sql = psprintf("UPDATE %s SET state = CAST($2 AS %s.pg_background_queue_task_state), "
				   "attempts = GREATEST(attempts - 1, 0), worker_pid = NULL "
				   "WHERE id = $1 AND state = 'running' AND worker_pid = %d",
				   pgbq_cat.qualified_table, pgbq_cat.qualified_schema,
				   (int) MyProcPid);
	args[0] = Int64GetDatum(task->id);
	args[1] = CStringGetTextDatum(task->prev_state);
	if (SPI_execute_with_args(sql, 2, types, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not give back task " INT64_FORMAT, task->id);
	SPI_finish();
	pgbq_end_privileged(nest, save_userid, save_sec);
	PopActiveSnapshot();
}

/*
 * pgbq_reannounce
 *		After giving a task back, announce it again so that another worker
 *		(or a new one) takes it: this worker is about to exit.
 */
static void
pgbq_reannounce(void)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];

	/* leaving: not the idle worker that will take it */
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	me->exit_reasons |= PGBQ_EXIT_LEAVING;
	LWLockRelease(pgbq_shared->lock);
	pgbq_announce_work(me->dboid, me->roleoid, 1, 0);
}

/*
 * pgbq_hand_over_wakeup
 *		Leaving while delayed work of our (database, role) is due later: let
 *		the launcher start a worker for it when it is due.
 */
static void
pgbq_hand_over_wakeup(void)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
	TimestampTz wake_at;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	wake_at = me->wake_at;
	LWLockRelease(pgbq_shared->lock);
	if (wake_at != 0)
		pgbq_announce_work(me->dboid, me->roleoid, 0, wake_at);
}

/*
 * pgbq_begin_bookkeeping
 *		Start a transaction to record what became of a claimed task; returns
 *		whether its task table still exists (DROP EXTENSION may have taken
 *		it, and the row with it).
 */
static bool
pgbq_begin_bookkeeping(PgbqTask *task)
{
	bool		alive;

	pgbq_start_bookkeeping_xact();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	alive = pgbq_task_table_alive(task);
	SPI_finish();
	PopActiveSnapshot();
	return alive;
}

/*
 * pgbq_give_back_standalone
 *		Give a claimed but not started task back, in its own transaction.
 */
static void
pgbq_give_back_standalone(PgbqTask *task)
{
	bool		alive;

	alive = pgbq_begin_bookkeeping(task);
	if (alive)
		pgbq_give_back(task);
	else
		pgbq_log_abandoned(task, false);
	pgbq_release_slot_task();
	CommitTransactionCommand();
	if (alive)
		pgbq_reannounce();
}

/*
 * pgbq_give_back_guarded
 *		pgbq_give_back_standalone on the way out; on an error (or a shutdown
 *		that interrupted a lock wait) the task stays running in the name of
 *		this exiting worker, and orphan recovery accounts for it.
 */
static void
pgbq_give_back_guarded(PgbqTask *task)
{
	MemoryContext ctx = CurrentMemoryContext;

	pgbq_begin_bookkeeping_tick();
	PG_TRY();
	{
		pgbq_give_back_standalone(task);
	}
	PG_CATCH();
	{
		pgbq_stop_task_timers();
		pgbq_recover_from_error(ctx);
		QueryCancelPending = false;
	}
	PG_END_TRY();
	pgbq_stop_task_timers();
}

/*
 * pgbq_finish_and_claim_next
 *		In the task's transaction: mark it finished, release the slot and
 *		claim the next task (returned, or NULL).
 */
static PgbqTask *
pgbq_finish_and_claim_next(PgbqTask *task)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Datum		args[3];
	int			rc;
	PgbqTask   *next = NULL;
	TimestampTz wait_until;
	bool		blocked;

	/*
	 * Whatever the task set: the pinned settings, READ WRITE (a task may
	 * have made its transaction read-only), until the commit.
	 */
	(void) NewGUCNestLevel();
	pgbq_pin_bookkeeping_settings();

	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!pgbq_task_table_alive(task))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" was dropped while task " INT64_FORMAT " ran",
						PGBQ_EXTENSION_NAME, task->id)));
	nest = pgbq_begin_privileged(pgbq_cat.owner, &save_userid, &save_sec);
	args[0] = Int64GetDatum(task->id);
	args[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	args[2] = Int32GetDatum(MyProcPid);
	rc = SPI_execute_plan(pgbq_finish_plan, args, NULL, false, 0);
	if (rc != SPI_OK_UPDATE || SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("task " INT64_FORMAT " is no longer running; its effects are rolled back",
						task->id)));
	pgbq_notify_terminal(task->id, "finished");
	pgbq_release_slot_task();

	/*
	 * Claim the next task in this commit only at READ COMMITTED: at a
	 * higher level (the role's default, or the task's choice) the claim
	 * would run on the task's snapshot, see rows claimed since as still
	 * pending and fail to lock them with a serialization error.  The loop
	 * claims in a transaction of its own instead.
	 */
	if (!pgbq_got_sigterm && !IsolationUsesXactSnapshot())
		next = pgbq_claim(&wait_until, &blocked);
	pgbq_end_privileged(nest, save_userid, save_sec);
	SPI_finish();
	PopActiveSnapshot();
	return next;
}

/*
 * pgbq_classify_interrupt
 *		Why was the running task interrupted?  Sets *cancelled (by
 *		pg_background_cancel) or *shutdown (SIGTERM: give it back), and
 *		returns the message to record, or NULL for a plain query cancel
 *		(pg_cancel_backend, or one the task raised itself).
 */
static const char *
pgbq_classify_interrupt(PgbqTask *task, const PgbqTopicPolicy *policy,
						bool *cancelled, bool *shutdown)
{
	PgbqSlot   *s = &pgbq_shared->slots[pgbq_slotno];

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	*cancelled = s->cancel_requested && s->task_id == task->id;
	LWLockRelease(pgbq_shared->lock);
	*shutdown = false;
	if (*cancelled)
		return "task was cancelled by pg_background_cancel()";
	if (pgbq_self_terminated)
		return "task terminated its own worker (pg_terminate_backend)";
	if (pgbq_timed_out)
		return psprintf("task exceeded its timeout of %d s", policy->timeout_in_sec);
	if (pgbq_got_sigterm)
		*shutdown = true;
	return NULL;
}

/*
 * pgbq_record_end
 *		After the task's transaction was rolled back: in a new transaction,
 *		give the task back (shutdown), or record the failed or cancelled
 *		attempt and, with claim_next, claim the next task (returned).
 */
static PgbqTask *
pgbq_record_end(PgbqTask *task, bool cancelled, bool shutdown,
				const char *sqlstate, const char *message, const char *detail,
				bool claim_next)
{
	PgbqTask   *next = NULL;
	bool		alive;

	alive = pgbq_begin_bookkeeping(task);
	if (!alive)
	{
		/* DROP EXTENSION: the row is gone, nothing to record */
		pgbq_log_abandoned(task, true);
		pgbq_release_slot_task();
		shutdown = false;
	}
	else if (shutdown)
	{
		pgbq_give_back(task);
		pgbq_release_slot_task();
	}
	else
	{
		TimestampTz wait_until;
		bool		blocked;

		PushActiveSnapshot(GetTransactionSnapshot());
		pgbq_record_attempt_failure(&pgbq_cat, task->id, task->topic,
									cancelled, sqlstate, message, detail);
		PopActiveSnapshot();
		pgbq_release_slot_task();
		if (claim_next && !pgbq_got_sigterm)
			(void) pgbq_bookkeeping_claim(&next, &wait_until, &blocked);
	}
	CommitTransactionCommand();
	pgbq_current_task = NULL;
	if (shutdown)
		pgbq_reannounce();
	return next;
}

/*
 * pgbq_stop_task_timers
 *		The task is over (or being given up): no more timeout, watchdog or
 *		statement_timeout.
 */
static void
pgbq_stop_task_timers(void)
{
	DisableTimeoutParams timers[3];

	pgbq_in_task = false;
	pgbq_in_bookkeeping = false;
	timers[0].id = pgbq_timeout_id;
	timers[0].keep_indicator = false;
	timers[1].id = pgbq_watchdog_id;
	timers[1].keep_indicator = false;
	timers[2].id = STATEMENT_TIMEOUT;	/* if a statement failed */
	timers[2].keep_indicator = false;
	disable_timeouts(timers, 3);
}

/*
 * pgbq_begin_bookkeeping_tick
 *		Bookkeeping starts: tick, so that a shutdown asked for while it waits
 *		for a lock interrupts the wait (see pgbq_watchdog_handler).  Ended by
 *		pgbq_stop_task_timers.
 */
static void
pgbq_begin_bookkeeping_tick(void)
{
	pgbq_in_bookkeeping = true;
	enable_timeout_every(pgbq_watchdog_id,
						 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 PGBQ_WATCHDOG_TICK_MS),
						 PGBQ_WATCHDOG_TICK_MS);
}

/*
 * pgbq_task_to_bookkeeping
 *		The task's statements are done; its bookkeeping starts.  The task's
 *		timeout and statement_timeout stop, the watchdog keeps ticking for
 *		the bookkeeping, and a cancel that came too late for the task is
 *		void (no handler sets one once pgbq_in_task is off, except a
 *		shutdown during a lock wait).
 */
static void
pgbq_task_to_bookkeeping(void)
{
	DisableTimeoutParams timers[2];

	pgbq_in_bookkeeping = true;
	pgbq_in_task = false;
	QueryCancelPending = false;
	timers[0].id = pgbq_timeout_id;
	timers[0].keep_indicator = false;
	timers[1].id = STATEMENT_TIMEOUT;
	timers[1].keep_indicator = false;
	disable_timeouts(timers, 2);
}

/*
 * pgbq_reset_between_tasks
 *		Undo what the task did to the session, in a transaction of its own
 *		that commits before anything else runs (see the file header).  A
 *		worker whose session cannot be reset runs no further task.
 */
static void
pgbq_reset_between_tasks(void)
{
	MemoryContext ctx = CurrentMemoryContext;

	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		/* dropping the task's temp tables writes */
		XactReadOnly = false;
		pgbq_reset_session();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		pgbq_recover_from_error(ctx);
		ereport(LOG,
				(errmsg("pg_background_queue: worker could not reset its session after a task in database \"%s\"; worker exiting",
						pgbq_dbname)));
		pgbq_must_exit = true;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(ctx);
}

/*
 * pgbq_record_end_guarded
 *		pgbq_record_end, surviving errors: an error is logged and the
 *		recording tried again after PGBQ_BOOKKEEPING_RETRY_MS, so the task
 *		ends with its own outcome instead of a dead worker and an
 *		"interrupted" attempt.  On shutdown the worker stops trying and
 *		leaves: the row, still running in its name, goes to orphan recovery.
 */
static PgbqTask *
pgbq_record_end_guarded(PgbqTask *task, bool cancelled, bool shutdown,
						const char *sqlstate, const char *message,
						const char *detail)
{
	MemoryContext ctx = CurrentMemoryContext;

	for (;;)
	{
		PgbqTask   *volatile next = NULL;
		volatile bool done = false;

		pgbq_begin_bookkeeping_tick();
		PG_TRY();
		{
			next = pgbq_record_end(task, cancelled, shutdown, sqlstate,
								   message, detail, true);
			done = true;
		}
		PG_CATCH();
		{
			PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
			bool		holds_next;

			pgbq_stop_task_timers();
			pgbq_recover_from_error(ctx);
			pgbq_forget_notifications();
			QueryCancelPending = false;
			/* a next task claimed in the aborted transaction is not ours */
			LWLockAcquire(pgbq_shared->lock, LW_SHARED);
			holds_next = (me->state == PGBQ_SLOT_RUNNING && me->task_id != task->id);
			LWLockRelease(pgbq_shared->lock);
			if (holds_next)
				pgbq_release_slot_task();
		}
		PG_END_TRY();
		pgbq_stop_task_timers();
		if (done)
			return next;
		if (pgbq_got_sigterm)
		{
			pgbq_current_task = NULL;
			pgbq_must_exit = true;
			return NULL;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 PGBQ_BOOKKEEPING_RETRY_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}

/*
 * pgbq_worker_before_exit
 *		The worker exits while running a task because the task ignored its
 *		interrupt (see pgbq_watchdog_handler): roll the task back and record
 *		the outcome the interrupt stood for, as pgbq_run_task would have.
 *		Any other exit in the middle of a task is left to orphan recovery.
 *		Runs before the transaction machinery shuts down, like PostgreSQL's
 *		own cleanup of temporary relations.
 */
static void
pgbq_worker_before_exit(int code, Datum arg)
{
	PgbqTask   *task = pgbq_current_task;
	const char *message;
	bool		cancelled;
	bool		shutdown;

	(void) code;
	(void) arg;
	if (task == NULL || !pgbq_escalated)
		return;
	pgbq_current_task = NULL;
	pgbq_stop_task_timers();
	HOLD_INTERRUPTS();
	QueryCancelPending = false;
	MemoryContextSwitchTo(pgbq_worker_ctx);
	AbortOutOfAnyTransaction();
	pgbq_forget_notifications();

	message = pgbq_classify_interrupt(task, &pgbq_current_policy, &cancelled, &shutdown);
	ereport(LOG,
			(errmsg("pg_background_queue: task " INT64_FORMAT " kept running %d ms after it was interrupted; its worker was terminated",
					task->id, PGBQ_INTERRUPT_GRACE_MS),
			 errdetail("The task caught the query cancel sent for %s.",
					   cancelled ? "pg_background_cancel()" :
					   pgbq_self_terminated ? "its own pg_terminate_backend()" :
					   pgbq_timed_out ? "its topic's timeout" :
					   shutdown ? "a shutdown or pg_terminate_backend()" :
					   "a query cancel request")));
	if (message == NULL)
		message = "canceling statement due to user request";
	if (!shutdown)
		message = psprintf("%s (the task ignored the interrupt; its worker was terminated)",
						   message);
	(void) pgbq_record_end(task, cancelled, shutdown, "57014", message, NULL, false);
	pgbq_flush_notifications();
	RESUME_INTERRUPTS();
}

/*
 * pgbq_run_task
 *		Run one claimed task to its end; returns the next claimed task, if
 *		one could be claimed in the same commit.
 */
static PgbqTask *
pgbq_run_task(PgbqTask *task)
{
	PgbqTask   *volatile next = NULL;

	pgbq_topic_policy(task->topic, &pgbq_current_policy);
	MemoryContextReset(pgbq_task_ctx);
	pgbq_timed_out = false;
	pgbq_self_terminated = false;
	pgbq_interrupted = false;
	pgbq_interrupted_ticks = 0;
	pgbq_escalated = false;
	pgbq_current_task = task;
	pgbq_current_task_id = task->id;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	MemoryContextSwitchTo(pgbq_task_ctx);
	PG_TRY();
	{
		pgstat_report_activity(STATE_RUNNING, task->sql);
		if (pgbq_current_policy.timeout_in_sec > 0)
			enable_timeout_after(pgbq_timeout_id,
								 pgbq_current_policy.timeout_in_sec * 1000);
		enable_timeout_every(pgbq_watchdog_id,
							 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 PGBQ_WATCHDOG_TICK_MS),
							 PGBQ_WATCHDOG_TICK_MS);
		pgbq_in_task = true;
		/* a cancel or SIGTERM that came before the task started */
		pg_memory_barrier();
		if (pgbq_got_sigterm || pgbq_cancel_requested(task->id))
		{
			pgbq_interrupted = true;
			InterruptPending = true;
			QueryCancelPending = true;
		}
		pgbq_execute_sql(task->sql);
		pgbq_task_to_bookkeeping();

		next = pgbq_finish_and_claim_next(task);
		CommitTransactionCommand();
		pgbq_stop_task_timers();
		pgbq_current_task = NULL;
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		bool		cancelled = false;
		bool		shutdown = false;
		const char *message;
		char		sqlstate[6];

		pgbq_stop_task_timers();

		/*
		 * The error's copy lives in the task context, reset before the next
		 * task: FreeErrorData does not free every string CopyErrorData makes.
		 */
		MemoryContextSwitchTo(pgbq_task_ctx);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		pgbq_forget_notifications();
		QueryCancelPending = false;

		strlcpy(sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(sqlstate));
		message = edata->message;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			const char *why = pgbq_classify_interrupt(task, &pgbq_current_policy,
													  &cancelled, &shutdown);

			if (why != NULL)
				message = why;
		}
		elog(DEBUG1, "pg_background_queue: task " INT64_FORMAT " failed: %s",
			 task->id, edata->message);
		next = pgbq_record_end_guarded(task, cancelled, shutdown, sqlstate,
									   message, edata->detail);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	pgbq_flush_notifications();
	pgbq_reset_between_tasks();

	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(pgbq_worker_ctx);
	return next;
}

/*
 * pgbq_settle_demand
 *		No task could be claimed: forget the launcher's outstanding demand
 *		for our (database, role), unless new work was announced since seq
 *		was read.  Returns false in that case (try again at once).
 */
static bool
pgbq_settle_demand(uint64 seq, TimestampTz next_eligible, bool exiting)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
	PgbqDemand *d;
	bool		settled = true;
	bool		unmet;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	d = pgbq_demand_lookup(me->dboid, me->roleoid, exiting && next_eligible != 0);
	if (d)
	{
		if (d->seq != seq)
			settled = false;
		else
		{
			d->want = 0;
			if (exiting && next_eligible != 0 &&
				(d->wake_at == 0 || next_eligible < d->wake_at))
				d->wake_at = next_eligible;
		}
	}
	if (settled && exiting)
		me->exit_reasons |= PGBQ_EXIT_LEAVING;	/* no more wake-ups for us */
	unmet = pgbq_shared->unmet_demand;
	LWLockRelease(pgbq_shared->lock);

	/*
	 * An idle worker can now be evicted to make room for another role's
	 * work that is waiting for a slot (see pgbq_make_room).
	 */
	if (settled && unmet)
		pgbq_wake_launcher();
	return settled;
}

/*
 * pgbq_demand_seq
 *		About to look for work: no longer spoken for (see pgbq_announce_work),
 *		and the current announcement sequence number of our (database, role).
 */
static uint64
pgbq_demand_seq(void)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
	PgbqDemand *d;
	uint64		seq = 0;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	me->woken = false;
	d = pgbq_demand_lookup(me->dboid, me->roleoid, false);
	if (d)
		seq = d->seq;
	LWLockRelease(pgbq_shared->lock);
	return seq;
}

/*
 * pgbq_task_loop
 *		Claim, run, finish; sleep on the latch when nothing is eligible;
 *		exit after the idle timeout.
 */
static void
pgbq_task_loop(void)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
	PgbqTask   *next = NULL;
	TimestampTz idle_since = GetCurrentTimestamp();

	for (;;)
	{
		TimestampTz wait_until = 0;
		TimestampTz now;
		TimestampTz deadline;
		bool		blocked = false;
		uint8		exit_reasons;
		uint64		seq;
		long		timeout_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		LWLockAcquire(pgbq_shared->lock, LW_SHARED);
		exit_reasons = me->exit_reasons;
		if (pgbq_drop_in_progress(me->dboid))
			exit_reasons |= PGBQ_EXIT_DROPPED;
		LWLockRelease(pgbq_shared->lock);

		if (pgbq_extension_dropped)
			break;
		if (pgbq_got_sigterm || exit_reasons != 0 || pgbq_must_exit)
		{
			if (next)
				pgbq_give_back_guarded(next);
			/* dropped: nothing of this database is to be woken any more */
			if (!pgbq_extension_dropped && !(exit_reasons & PGBQ_EXIT_DROPPED))
				pgbq_hand_over_wakeup();
			break;
		}

		if (next != NULL)
		{
			PgbqTask   *task = next;

			next = pgbq_run_task(task);
			pfree(task->sql);
			if (task->topic)
				pfree(task->topic);
			pfree(task);
			idle_since = GetCurrentTimestamp();
			continue;
		}

		ResetLatch(MyLatch);
		seq = pgbq_demand_seq();
		if (!pgbq_guarded_claim(&next, &wait_until, &blocked))
		{
			ereport(LOG,
					(errmsg("pg_background_queue: extension is not installed in database \"%s\"; worker exiting",
							pgbq_dbname)));
			break;
		}
		if (next != NULL)
			continue;

		now = GetCurrentTimestamp();
		deadline = idle_since + (int64) pgbq_worker_idle_timeout * USECS_PER_SEC;
		if (now >= deadline)
		{
			if (pgbq_settle_demand(seq, wait_until, true))
				break;
			continue;
		}
		if (!pgbq_settle_demand(seq, 0, false))
			continue;
		if (wait_until != 0 && wait_until < deadline)
			deadline = wait_until;
		timeout_ms = (long) ((deadline - now + 999) / 1000);
		LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
		me->wake_at = wait_until;
		LWLockRelease(pgbq_shared->lock);
		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout_ms, 1), PG_WAIT_EXTENSION);
	}
}

/*
 * pgbq_worker_main
 *		Entry point of task and maintenance workers.
 */
void
pgbq_worker_main(Datum main_arg)
{
	int			slotno = DatumGetInt32(main_arg);
	uint32		generation;
	PgbqSlot   *me;
	Oid			dboid;
	Oid			roleoid;
	PgbqWorkerKind kind;

	memcpy(&generation, MyBgworkerEntry->bgw_extra, sizeof(uint32));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pgbq_install_sigterm();
	pqsignal(SIGINT, pgbq_worker_sigint);
	BackgroundWorkerUnblockSignals();

	me = pgbq_attach_slot(slotno, generation);
	dboid = me->dboid;
	roleoid = me->roleoid;
	kind = me->kind;

	/*
	 * A maintenance worker holds no task to give back: the standard
	 * handlers, so SIGTERM (fast shutdown, pg_terminate_backend, DROP
	 * DATABASE) ends it at once, in the middle of a retention pass or a
	 * lock wait, and a query cancel cancels its current step.
	 */
	if (kind == PGBQ_KIND_MAINTENANCE)
	{
		pqsignal(SIGTERM, die);
		pqsignal(SIGINT, StatementCancelHandler);
		if (pgbq_got_sigterm)
			proc_exit(0);
	}

	BackgroundWorkerInitializeConnectionByOid(dboid,
											  kind == PGBQ_KIND_TASK ? roleoid : InvalidOid,
											  PGBQ_BGW_CONNECT_FLAGS);
	pgbq_connected = true;

	pgbq_worker_ctx = AllocSetContextCreate(TopMemoryContext,
											"pg_background_queue worker",
											ALLOCSET_DEFAULT_SIZES);
	pgbq_task_ctx = AllocSetContextCreate(pgbq_worker_ctx,
										  "pg_background_queue task",
										  ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(pgbq_worker_ctx);

	if (kind == PGBQ_KIND_MAINTENANCE)
	{
		pgbq_maintenance_run(slotno);
		proc_exit(0);
	}

	pgbq_defer_notifications();

	/* for messages outside a transaction */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	{
		char	   *dbname = get_database_name(MyDatabaseId);

		strlcpy(pgbq_dbname, dbname ? dbname : "?", sizeof(pgbq_dbname));
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(pgbq_worker_ctx);

	pgbq_timeout_id = RegisterTimeout(USER_TIMEOUT, pgbq_task_timeout_handler);
	pgbq_watchdog_id = RegisterTimeout(USER_TIMEOUT, pgbq_watchdog_handler);
	/* after the connection's own callbacks: runs before they do */
	before_shmem_exit(pgbq_worker_before_exit, 0);
	pgbq_task_loop();
	proc_exit(0);
}
