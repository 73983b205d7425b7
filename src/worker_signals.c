/*-------------------------------------------------------------------------
 *
 * worker_signals.c
 *	  A task worker's signal handlers, the task's time limit and the
 *	  interrupt watchdog (see worker.c for what each interrupt means).
 *	  Handlers only set flags, a pending interrupt and the latch.
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

volatile sig_atomic_t pgbq_got_sigterm = false;
volatile sig_atomic_t pgbq_self_terminated = false;
volatile sig_atomic_t pgbq_in_task = false;
volatile sig_atomic_t pgbq_timed_out = false;
volatile sig_atomic_t pgbq_interrupted = false;
volatile sig_atomic_t pgbq_interrupted_ticks = 0;
volatile sig_atomic_t pgbq_escalated = false;
volatile int64 pgbq_current_task_id = 0;
TimeoutId	pgbq_timeout_id;
TimeoutId	pgbq_watchdog_id;

/* between a task's last statement and its worker's next wait */
static volatile sig_atomic_t pgbq_in_bookkeeping = false;
/* ... and it is about a task this worker holds (finish, failure, give-back) */
static volatile sig_atomic_t pgbq_bookkeeping_holds_task = false;
/* ticks spent waiting for a lock since shutdown was asked for */
static volatile sig_atomic_t pgbq_lock_wait_ticks = 0;

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
		if (pgbq_in_bookkeeping && !pgbq_bookkeeping_holds_task &&
			MyProc != NULL && MyProc->waitLock != NULL)
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
void
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
void
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
bool
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
void
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
void
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
void
pgbq_watchdog_handler(void)
{
	if (pgbq_in_bookkeeping)
	{
		/*
		 * Shutdown was asked for while the bookkeeping waits for a lock
		 * (or just before the wait began): interrupt the wait; the error
		 * path sees pgbq_got_sigterm.  A claim holds nothing and stops at
		 * once.  Recording a held task's end waits up to
		 * PGBQ_SHUTDOWN_LOCK_GRACE_MS first: the lock holder is usually
		 * leaving too (a client backend at shutdown, a DROP EXTENSION), and
		 * an abandoned record is only accounted for by orphan recovery, as
		 * an interrupted attempt.
		 */
		if (pgbq_got_sigterm && MyProc != NULL && MyProc->waitLock != NULL)
		{
			pgbq_lock_wait_ticks++;
			if (!pgbq_bookkeeping_holds_task ||
				pgbq_lock_wait_ticks * PGBQ_WATCHDOG_TICK_MS > PGBQ_SHUTDOWN_LOCK_GRACE_MS)
			{
				InterruptPending = true;
				QueryCancelPending = true;
				SetLatch(MyLatch);
			}
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
 * pgbq_stop_task_timers
 *		The task is over (or being given up): no more timeout, watchdog or
 *		statement_timeout.
 */
void
pgbq_stop_task_timers(void)
{
	DisableTimeoutParams timers[3];

	pgbq_in_task = false;
	pgbq_in_bookkeeping = false;
	pgbq_bookkeeping_holds_task = false;
	pgbq_lock_wait_ticks = 0;
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
 *		for a lock interrupts the wait (see pgbq_watchdog_handler); holds_task
 *		if it records the end of a task this worker holds.  Ended by
 *		pgbq_stop_task_timers.
 */
void
pgbq_begin_bookkeeping_tick(bool holds_task)
{
	pgbq_bookkeeping_holds_task = holds_task;
	pgbq_lock_wait_ticks = 0;
	pg_memory_barrier();
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
void
pgbq_task_to_bookkeeping(void)
{
	DisableTimeoutParams timers[2];

	pgbq_bookkeeping_holds_task = true;
	pgbq_lock_wait_ticks = 0;
	pg_memory_barrier();
	pgbq_in_bookkeeping = true;
	pgbq_in_task = false;
	QueryCancelPending = false;
	timers[0].id = pgbq_timeout_id;
	timers[0].keep_indicator = false;
	timers[1].id = STATEMENT_TIMEOUT;
	timers[1].keep_indicator = false;
	disable_timeouts(timers, 2);
}
