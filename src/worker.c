/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Task workers: long-lived dynamic background workers, each connected
 *	  to one database as one role, that claim, run and finish that role's
 *	  tasks.  This file has the loop, the run of one task, attaching to and
 *	  leaving the slot; worker_signals.c the signal handlers, the task's
 *	  time limit and the watchdog; worker_bookkeeping.c every write about a
 *	  task (claim, finish, failure, give-back) and the demand it settles.
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
 * Batched commits (a topic's tasks_per_commit > 1, pgbq_run_batch): a task
 * whose SQL may join a batch (pgbq_sql_batchable) starts a transaction in
 * which it and the tasks claimed after it run, each in a subtransaction
 * with its finished mark (or, on an error, followed by the record of its
 * failed attempt in the batch's transaction), and all of them commit
 * together.  Exactly once holds per task; a crash rolls the whole batch
 * back.  The tasks after the first are claimed in the batch's transaction
 * and never marked running (only that transaction could see the mark):
 * their finished mark counts the attempt; all of these marks are written
 * by one statement just before the batch commits, in the batch's
 * transaction (pgbq_batch_finish_deferred; pgbq_sql_finish_claimed in the
 * task's subtransaction for a task that changed its own row, or whose
 * result would not fit the batch's bound); one that fails is marked
 * running first and takes the failure path, one given back is left
 * pending.  A task that ignores its interrupt in a
 * batch has the batch's first task (the only one whose claim committed)
 * recorded on the way out.
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
 * Statistics: the worker flushes its cumulative statistics (the tasks' and
 * its own table, database, WAL and I/O counters) between tasks, which
 * PostgreSQL limits to once a second, and before it sleeps, coming back
 * within PGBQ_STATS_RETRY_MS for what could not go yet; a client backend
 * does the same when it goes idle.  Autovacuum decides from these counters:
 * kept until the worker exits, the rows its tasks updated or deleted and
 * the queue's own dead versions would go unseen while it is busy.
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
#include "worker_int.h"

/*
 * A worker that could not connect (role dropped, no LOGIN) keeps the
 * launcher from starting another one for its role this long.
 */
#define PGBQ_CONNECT_FAILURE_BACKOFF_S	10

int			pgbq_slotno = -1;
bool		pgbq_extension_dropped = false;
bool		pgbq_must_exit = false;
char		pgbq_dbname[NAMEDATALEN];
MemoryContext pgbq_worker_ctx = NULL;
PgbqTask   *pgbq_current_task = NULL;

static bool pgbq_connected = false;
static MemoryContext pgbq_task_ctx = NULL;
static PgbqTopicPolicy pgbq_current_policy;	/* of pgbq_current_task */
static PgbqTask *pgbq_batch_first = NULL;	/* while a batch runs */

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
		s->nheld = 0;
		s->started_id = 0;
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

	/*
	 * In a batch, the tasks claimed in the batch's transaction are pending
	 * again once it rolls back; only its first task is running in our name.
	 */
	if (pgbq_batch_first != NULL)
		task = pgbq_batch_first;
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
 * pgbq_task_begins
 *		A task becomes the current one: clear the interrupt flags of the
 *		previous one.
 */
static void
pgbq_task_begins(PgbqTask *task)
{
	MemoryContextReset(pgbq_task_ctx);
	pgbq_timed_out = false;
	pgbq_self_terminated = false;
	pgbq_interrupted = false;
	pgbq_interrupted_ticks = 0;
	pgbq_escalated = false;
	pgbq_current_task = task;
	pgbq_current_task_id = task->id;
}

/*
 * pgbq_task_clock_starts
 *		The task's statements are about to run: its timeout and the watchdog
 *		start, and a cancel or SIGTERM that came before interrupts it at
 *		once.
 */
static void
pgbq_task_clock_starts(PgbqTask *task)
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
}

/*
 * pgbq_run_single
 *		Run one claimed task to its end in a transaction of its own; returns
 *		the next claimed task, if one could be claimed in the same commit.
 */
static PgbqTask *
pgbq_run_single(PgbqTask *task)
{
	PgbqTask   *volatile next = NULL;

	pgbq_task_begins(task);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	MemoryContextSwitchTo(pgbq_task_ctx);
	PG_TRY();
	{
		pgbq_task_clock_starts(task);
		pgbq_execute_sql(task->sql, task->capture ? &task->result : NULL);
		pgbq_task_to_bookkeeping();

		next = pgbq_finish_and_claim_next(task, false);
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
 * pgbq_batch_wants_leave
 *		Should a batch stop claiming: shutdown, the launcher asks the worker
 *		to leave, or the session could not be reset.
 */
static bool
pgbq_batch_wants_leave(void)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
	uint8		exit_reasons;

	if (pgbq_got_sigterm || pgbq_must_exit || pgbq_extension_dropped)
		return true;
	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	exit_reasons = me->exit_reasons;
	LWLockRelease(pgbq_shared->lock);
	return exit_reasons != 0 || pgbq_drop_in_progress(me->dboid);
}

/*
 * pgbq_run_in_subxact
 *		Inside a batch's transaction: run one task in a subtransaction of
 *		its own, its finished mark included; on an error, roll back only
 *		the subtransaction and record the failed or cancelled attempt (or
 *		give the task back on shutdown) in the batch's transaction.  Sets
 *		*shutdown when the task was given back.  Errors of the bookkeeping
 *		in the batch's transaction propagate (the batch rolls back).
 */
static void
pgbq_run_in_subxact(PgbqTask *task, bool *shutdown)
{
	ResourceOwner owner = CurrentResourceOwner;
	int			held = pgbq_held_notifications();
	int			deferred = pgbq_batch_deferred_count();
	ErrorData  *volatile edata = NULL;

	*shutdown = false;
	pgbq_task_begins(task);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(pgbq_task_ctx);
	PG_TRY();
	{
		pgbq_task_clock_starts(task);
		pgbq_execute_sql(task->sql, task->capture ? &task->result : NULL);
		pgbq_fire_deferred_triggers();
		pgbq_task_to_bookkeeping();
		(void) pgbq_finish_and_claim_next(task, true);
		ReleaseCurrentSubTransaction();
		CurrentResourceOwner = owner;
		pgbq_stop_task_timers();
	}
	PG_CATCH();
	{
		pgbq_stop_task_timers();
		MemoryContextSwitchTo(pgbq_task_ctx);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		CurrentResourceOwner = owner;
		pgbq_forget_notifications_since(held);
		pgbq_batch_forget_deferred(deferred);
		QueryCancelPending = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(pgbq_task_ctx);

	if (edata != NULL)
	{
		bool		cancelled = false;
		const char *message = edata->message;
		char		sqlstate[6];

		strlcpy(sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(sqlstate));
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			const char *why = pgbq_classify_interrupt(task, &pgbq_current_policy,
													  &cancelled, shutdown);

			if (why != NULL)
				message = why;
		}
		elog(DEBUG1, "pg_background_queue: task " INT64_FORMAT " of a batch failed: %s",
			 task->id, edata->message);
		pgbq_begin_bookkeeping_tick(true);
		pgbq_record_end_in_batch(task, cancelled, *shutdown, sqlstate,
								 message, edata->detail);
		pgbq_stop_task_timers();
	}
	pgbq_current_task = NULL;
}

/*
 * pgbq_run_batch
 *		Run tasks of a topic with tasks_per_commit > 1 in one transaction,
 *		each in a subtransaction with its finished mark, and commit them
 *		together; returns the next claimed task (one that cannot join the
 *		batch), if any.  first was claimed before the batch began; each
 *		further task is claimed in the batch's transaction, with the same
 *		claim as any other, so priorities, limits and rate limits are those
 *		of single tasks: the batch goes on while the claim returns a task of
 *		the same topic that may join a batch, up to tasks_per_commit tasks
 *		and until batch_max_ms have passed since it began.  The worker's
 *		slot stays taken from one task to the next (the topic's capacity is
 *		not up for grabs in between), and is released after the commit.
 *		The session is reset after each task, in the batch's transaction
 *		(the reset of pgbq_reset_between_tasks follows the commit as after
 *		a single task).
 *
 *		An error outside a task's subtransaction (recording a failure, the
 *		reset, the claim, the commit itself) rolls the whole batch back: the
 *		tasks claimed in it are pending again as if never claimed, and the
 *		first task's attempt is recorded as failed with that error.
 */
static PgbqTask *
pgbq_run_batch(PgbqTask *first)
{
	PgbqTask   *volatile next = NULL;
	PgbqTask   *volatile task = first;
	MemoryContext ctx = CurrentMemoryContext;
	TimestampTz batch_end;
	volatile int ntasks = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();

	/*
	 * Batches commit at READ COMMITTED, READ WRITE only: a task's snapshot
	 * at a higher level would be the batch's (the role's defaults may ask
	 * for one); such a worker runs every task alone.
	 */
	if (IsolationUsesXactSnapshot() || XactReadOnly)
	{
		CommitTransactionCommand();
		MemoryContextSwitchTo(ctx);
		return pgbq_run_single(first);
	}
	batch_end = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
											pgbq_current_policy.batch_max_ms);
	pgbq_batch_first = first;
	pgbq_batch_forget_deferred(0);
	PG_TRY();
	{
		for (;;)
		{
			bool		shutdown;
			PgbqTask   *claimed;

			pgbq_run_in_subxact(task, &shutdown);
			ntasks++;

			/* what the task did to the session, before anything else runs */
			pgbq_reset_session();
			XactReadOnly = false;
			if (task != first)
			{
				pfree(task->sql);
				if (task->topic)
					pfree(task->topic);
				pfree(task);
				task = first;
			}
			if (shutdown || ntasks >= pgbq_current_policy.tasks_per_commit ||
				GetCurrentTimestamp() >= batch_end || pgbq_batch_wants_leave())
				break;

			/* the claimed task itself is copied to pgbq_worker_ctx */
			MemoryContextSwitchTo(pgbq_task_ctx);
			claimed = pgbq_batch_claim(first);
			if (claimed == NULL)
				break;
			if (!pgbq_same_topic(claimed->topic, first->topic) ||
				!pgbq_sql_batchable(claimed->sql))
			{
				/* runs after the commit, as a claim fused into it */
				if (claimed->unmarked)
					pgbq_batch_mark_running(claimed);
				next = claimed;
				break;
			}
			task = claimed;
		}
		pgbq_batch_finish_deferred(first);
		MemoryContextSwitchTo(ctx);
		CommitTransactionCommand();

		/*
		 * The slot stayed taken from task to task, so that no other worker
		 * took the topic's capacity between two of them; a next task of
		 * another topic has it now.
		 */
		if (next == NULL)
			pgbq_release_slot_task();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		char		sqlstate[6];
		PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];

		pgbq_stop_task_timers();
		MemoryContextSwitchTo(pgbq_task_ctx);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		pgbq_batch_first = NULL;
		pgbq_batch_forget_deferred(0);
		pgbq_forget_notifications();
		QueryCancelPending = false;
		if (task != first)
		{
			pfree(task->sql);
			if (task->topic)
				pfree(task->topic);
			pfree(task);
		}
		if (next != NULL)
		{
			pfree(next->sql);
			if (next->topic)
				pfree(next->topic);
			pfree(next);
		}
		/* the slot may hold a task whose claim rolled back */
		LWLockAcquire(pgbq_shared->lock, LW_SHARED);
		if (me->state == PGBQ_SLOT_RUNNING && me->task_id != first->id)
		{
			LWLockRelease(pgbq_shared->lock);
			pgbq_release_slot_task();
		}
		else
			LWLockRelease(pgbq_shared->lock);
		strlcpy(sqlstate, unpack_sql_state(edata->sqlerrcode), sizeof(sqlstate));
		ereport(LOG,
				(errmsg("pg_background_queue: a batch of %d task(s) of topic \"%s\" rolled back: %s",
						ntasks + 1, first->topic ? first->topic : "", edata->message)));
		pgbq_current_task = first;
		next = pgbq_record_end_guarded(first, false, false, sqlstate,
									   edata->message, edata->detail);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	pgbq_batch_first = NULL;
	pgbq_flush_notifications();
	pgbq_reset_between_tasks();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(pgbq_worker_ctx);
	return next;
}

/*
 * pgbq_run_task
 *		Run one claimed task, alone or, for a topic with tasks_per_commit >
 *		1 and SQL that may join a batch, as the first of a batch; returns
 *		the next claimed task, if any.
 */
static PgbqTask *
pgbq_run_task(PgbqTask *task)
{
	pgbq_topic_policy(task->topic, &pgbq_current_policy);
	if (pgbq_current_policy.tasks_per_commit > 1 &&
		pgbq_sql_batchable(task->sql))
		return pgbq_run_batch(task);
	return pgbq_run_single(task);
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
			elog(DEBUG1, "pg_background_queue: worker of role %u leaves (reasons 0x%x)%s",
				 me->roleoid, exit_reasons, next ? ", giving its next task back" : "");
			if (next)
				pgbq_give_back_guarded(next);
			/* dropped: nothing of this database is to be woken any more */
			if (!pgbq_extension_dropped && !(exit_reasons & PGBQ_EXIT_DROPPED))
				pgbq_hand_over_wakeup();

			/*
			 * Yielded in the middle of our role's work: announce what is
			 * left, so our role waits for a worker like any other.
			 */
			if ((exit_reasons & PGBQ_EXIT_YIELD) && !pgbq_extension_dropped &&
				!(exit_reasons & PGBQ_EXIT_DROPPED))
				pgbq_announce_work(me->dboid, me->roleoid, 1, 0);
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
			/* at most once a second; what is left goes when we are idle */
			(void) pgstat_report_stat(false);
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
		/* surplus after a lower limit: leave at once (the loop's top) */
		if (blocked && pgbq_slot_yielding(pgbq_slotno))
			continue;

		now = GetCurrentTimestamp();
		deadline = idle_since + (int64) pgbq_worker_idle_timeout * USECS_PER_SEC;

		/*
		 * Nothing of our role is eligible while another role waits for a
		 * slot: leave now rather than hold the slot until the idle timeout
		 * or an eviction.
		 */
		if (!blocked && pgbq_others_wait(pgbq_slotno))
			deadline = now;
		if (now >= deadline)
		{
			if (pgbq_settle_demand(seq, wait_until, true))
			{
				elog(DEBUG1, "pg_background_queue: worker of role %u leaves: no work of its own%s",
					 me->roleoid, now >= idle_since + (int64) pgbq_worker_idle_timeout * USECS_PER_SEC ?
					 " (idle timeout)" : " while other roles wait");
				break;
			}
			continue;
		}
		if (!pgbq_settle_demand(seq, 0, false))
			continue;
		if (wait_until != 0 && wait_until < deadline)
			deadline = wait_until;
		timeout_ms = (long) ((deadline - now + 999) / 1000);
		/* counters flushed too recently to go now: come back for them */
		if (pgstat_report_stat(false) != 0)
			timeout_ms = Min(timeout_ms, PGBQ_STATS_RETRY_MS);
		LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
		me->wake_at = wait_until;
		me->asleep = true;
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
