/*-------------------------------------------------------------------------
 *
 * worker_int.h
 *	  What the three parts of a task worker share: worker.c (the loop, the
 *	  run of one task, attach and exit), worker_signals.c (signal handlers,
 *	  the task timeout and the watchdog) and worker_bookkeeping.c (claim,
 *	  finish, recording a task's end, give-back, demand).  Private to the
 *	  worker; every process has its own copy of these variables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGBQ_WORKER_INT_H
#define PGBQ_WORKER_INT_H

#include <signal.h>

#include "storage/itemptr.h"
#include "utils/timeout.h"

#include "pgbq.h"

/*
 * The interrupt watchdog: while a task runs it ticks every
 * PGBQ_WATCHDOG_TICK_MS; once the task was interrupted (cancel, timeout,
 * SIGTERM), enough ticks without the task ending escalate to terminating
 * the worker.  During bookkeeping the same tick looks for a shutdown that
 * should interrupt a lock wait.
 */
#define PGBQ_WATCHDOG_TICK_MS		250
#define PGBQ_INTERRUPT_GRACE_MS		500

/*
 * On shutdown, bookkeeping about a held task waits this long for a lock
 * before it gives up (see pgbq_watchdog_handler).
 */
#define PGBQ_SHUTDOWN_LOCK_GRACE_MS	5000

/*
 * An idle worker whose statistics could not all be flushed (PostgreSQL
 * flushes a process's at most once a second: PGSTAT_MIN_INTERVAL) wakes
 * after this long to flush them.
 */
#define PGBQ_STATS_RETRY_MS			1000

/* A claimed task, copied out of the claim transaction. */
typedef struct PgbqTask
{
	int64		id;
	char	   *sql;
	char	   *topic;			/* NULL: default topic */
	char		prev_state[16];
	Oid			table_oid;		/* the task table it was claimed from */
	bool		capture;		/* the table has a result column */
	PgbqResult	result;			/* what the task's statements returned */
	bool		unmarked;		/* claimed in a batch, never marked running:
								 * the finish counts the attempt */
	TimestampTz claimed_at;		/* start of an unmarked task */
	ItemPointerData claimed_tid;	/* the row version its claim locked */
	ItemPointerData running_tid;	/* the version its running mark wrote
									 * (invalid: not marked) */
} PgbqTask;

/*
 * pgbq_same_topic
 *		Do two tasks belong to the same topic (NULL: the default topic)?
 */
static inline bool
pgbq_same_topic(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

/* worker.c */
extern int	pgbq_slotno;
extern bool pgbq_extension_dropped;	/* while we held a task */
extern bool pgbq_must_exit;		/* session could not be reset, or a task's
								 * end could not be recorded at shutdown */
extern char pgbq_dbname[NAMEDATALEN];
extern MemoryContext pgbq_worker_ctx;
extern PgbqTask *pgbq_current_task;	/* for the exit callback */

/* worker_signals.c */
extern volatile sig_atomic_t pgbq_got_sigterm;
extern volatile sig_atomic_t pgbq_self_terminated;
extern volatile sig_atomic_t pgbq_in_task;
extern volatile sig_atomic_t pgbq_timed_out;
extern volatile sig_atomic_t pgbq_interrupted;
extern volatile sig_atomic_t pgbq_interrupted_ticks;
extern volatile sig_atomic_t pgbq_escalated;
extern volatile int64 pgbq_current_task_id;
extern TimeoutId pgbq_timeout_id;
extern TimeoutId pgbq_watchdog_id;

extern void pgbq_install_sigterm(void);
extern void pgbq_worker_sigint(SIGNAL_ARGS);
extern void pgbq_task_timeout_handler(void);
extern void pgbq_watchdog_handler(void);
extern bool pgbq_cancel_requested(int64 task_id);
extern void pgbq_stop_task_timers(void);
extern void pgbq_begin_bookkeeping_tick(bool holds_task);
extern void pgbq_task_to_bookkeeping(void);

/* worker_bookkeeping.c */
extern void pgbq_log_abandoned(PgbqTask *task, bool started);
extern void pgbq_recover_bookkeeping_error(MemoryContext ctx);
extern void pgbq_release_slot_task(void);
extern bool pgbq_guarded_claim(PgbqTask **task, TimestampTz *wait_until,
							   bool *blocked);
extern void pgbq_hand_over_wakeup(void);
extern void pgbq_give_back_guarded(PgbqTask *task);
extern PgbqTask *pgbq_finish_and_claim_next(PgbqTask *task, bool in_batch);
extern void pgbq_record_end_in_batch(PgbqTask *task, bool cancelled,
									 bool shutdown, const char *sqlstate,
									 const char *message, const char *detail);
extern PgbqTask *pgbq_batch_claim(const PgbqTask *first);
extern void pgbq_batch_mark_running(PgbqTask *task);
extern int	pgbq_batch_deferred_count(void);
extern void pgbq_batch_forget_deferred(int keep);
extern void pgbq_batch_finish_deferred(PgbqTask *first);
extern PgbqTask *pgbq_record_end(PgbqTask *task, bool cancelled, bool shutdown,
								 const char *sqlstate, const char *message,
								 const char *detail, bool claim_next);
extern PgbqTask *pgbq_record_end_guarded(PgbqTask *task, bool cancelled,
										 bool shutdown, const char *sqlstate,
										 const char *message,
										 const char *detail);
extern bool pgbq_settle_demand(uint64 seq, TimestampTz next_eligible,
							   bool exiting);
extern uint64 pgbq_demand_seq(void);

#endif							/* PGBQ_WORKER_INT_H */
