/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: one static background worker, connected to no database
 *	  (it reads only the shared catalog pg_database).  It never runs task
 *	  SQL.  It
 *	  - starts task workers for (database, role) pairs with outstanding
 *		demand, up to max_parallel_running_tasks_count workers in all, a pair
 *		without a worker before any pair gets a second one, and asks workers
 *		of other pairs to make room when the cap is hit (pgbq_make_room);
 *	  - starts a worker when delayed work of a pair without workers becomes
 *		eligible;
 *	  - starts maintenance passes: for every database after a (re)start,
 *		periodically for databases that have the extension, and on request
 *		(a worker died holding a task, ensure_workers());
 *	  - frees slots of workers that vanished without cleaning up.
 *
 * It sleeps on its latch, woken by commits that announce work, by the
 * postmaster when a worker it started stops (bgw_notify_pid), and by
 * timeouts computed from the earliest thing it has to do.  If it is killed
 * it is restarted by the postmaster and adopts the existing slots.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"

#define PGBQ_MAX_CONCURRENT_MAINTENANCE 2
#define PGBQ_START_FAILURE_BACKOFF_MS 1000
#define PGBQ_STARTING_TIMEOUT_US (60 * USECS_PER_SEC)
/* "no free background worker slots" is logged at most this often */
#define PGBQ_START_FAILURE_LOG_INTERVAL_MS (60 * 1000)

static BackgroundWorkerHandle **pgbq_handles = NULL;
static TimestampTz pgbq_last_start_failure_log = 0;

/*
 * pgbq_register_launcher
 *		Register the static launcher worker; called from _PG_init.
 */
void
pgbq_register_launcher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_background_queue");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "pgbq_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "pg_background_queue launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "pg_background_queue launcher");
	worker.bgw_notify_pid = 0;
	RegisterBackgroundWorker(&worker);
}

/*
 * pgbq_launcher_detach
 *		Forget the launcher's latch on exit.
 */
static void
pgbq_launcher_detach(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (pgbq_shared == NULL)
		return;
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	if (pgbq_shared->launcher_pid == MyProcPid)
	{
		pgbq_shared->launcher_pid = 0;
		pgbq_shared->launcher_latch = NULL;
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_start_worker
 *		Reserve a slot and register a dynamic worker for it.  Returns false
 *		if no slot or no background worker process is available.
 */
static bool
pgbq_start_worker(PgbqWorkerKind kind, Oid dboid, Oid roleoid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	PgbqSlot   *s = NULL;
	int			slotno = -1;
	uint32		generation = 0;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		if (pgbq_shared->slots[i].state == PGBQ_SLOT_FREE)
		{
			s = &pgbq_shared->slots[i];
			slotno = i;
			break;
		}
	}
	if (s != NULL)
	{
		pgbq_slot_clear(s);
		s->generation++;
		generation = s->generation;
		s->state = PGBQ_SLOT_STARTING;
		s->kind = kind;
		s->dboid = dboid;
		s->roleoid = roleoid;
		s->backend_start = GetCurrentTimestamp();
		s->woken = true;		/* started for announced work */
	}
	LWLockRelease(pgbq_shared->lock);
	if (s == NULL)
		return false;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "pg_background_queue");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "pgbq_worker_main");
	if (kind == PGBQ_KIND_TASK)
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "pg_background_queue worker");
		snprintf(worker.bgw_type, BGW_MAXLEN, "pg_background_queue worker");
	}
	else
	{
		snprintf(worker.bgw_name, BGW_MAXLEN, "pg_background_queue maintenance");
		snprintf(worker.bgw_type, BGW_MAXLEN, "pg_background_queue maintenance");
	}
	worker.bgw_main_arg = Int32GetDatum(slotno);
	memcpy(worker.bgw_extra, &generation, sizeof(uint32));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		TimestampTz now = GetCurrentTimestamp();

		LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
		pgbq_slot_clear(s);
		LWLockRelease(pgbq_shared->lock);
		if (TimestampDifferenceExceeds(pgbq_last_start_failure_log, now,
									   PGBQ_START_FAILURE_LOG_INTERVAL_MS))
		{
			ereport(LOG,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("pg_background_queue: could not start a worker: no free background worker slots"),
					 errdetail("Queued tasks wait until a slot frees up; nothing is lost."),
					 errhint("Consider increasing max_worker_processes (currently %d).",
							 max_worker_processes)));
			pgbq_last_start_failure_log = now;
		}
		return false;
	}
	if (pgbq_handles[slotno])
		pfree(pgbq_handles[slotno]);
	pgbq_handles[slotno] = handle;
	return true;
}

/*
 * pgbq_reap_slots
 *		Free slots whose process is gone without having cleaned up (it can
 *		only happen for a worker that never attached, or one killed in a way
 *		that skipped its exit callback).  A slot that held a task asks for a
 *		maintenance pass of its database.
 */
static void
pgbq_reap_slots(TimestampTz now)
{
	int			i;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];
		BackgroundWorkerHandle *h = pgbq_handles[i];
		bool		gone = false;
		pid_t		pid;

		if (h != NULL)
		{
			if (GetBackgroundWorkerPid(h, &pid) == BGWH_STOPPED)
			{
				pfree(h);
				pgbq_handles[i] = NULL;
				gone = true;
			}
		}
		LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
		if (s->state != PGBQ_SLOT_FREE)
		{
			if (!gone && h == NULL)
			{
				/* Adopted from an earlier launcher: probe the process. */
				if (s->pid > 0)
					gone = (kill(s->pid, 0) != 0 && errno == ESRCH);
				else if (s->state == PGBQ_SLOT_STARTING)
					gone = (now - s->backend_start > PGBQ_STARTING_TIMEOUT_US);
			}
			if (gone)
			{
				if (s->state == PGBQ_SLOT_RUNNING)
				{
					PgbqDatabase *db = pgbq_database_lookup(s->dboid, true);

					if (db)
						db->maintenance_requested = true;
				}
				pgbq_slot_clear(s);
			}
		}
		LWLockRelease(pgbq_shared->lock);
	}
}

/*
 * pgbq_scan_databases
 *		Request a maintenance pass of every database that accepts
 *		connections.
 */
static void
pgbq_scan_databases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *oids = NIL;
	ListCell   *lc;
	MemoryContext launcher_ctx = CurrentMemoryContext;
	MemoryContext old;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn && !db->datistemplate)
		{
			/* the list must outlive the transaction */
			old = MemoryContextSwitchTo(launcher_ctx);
			oids = lappend_oid(oids, db->oid);
			MemoryContextSwitchTo(old);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(launcher_ctx);

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	foreach(lc, oids)
	{
		PgbqDatabase *db = pgbq_database_lookup(lfirst_oid(lc), true);

		if (db)
			db->maintenance_requested = true;
	}
	pgbq_shared->rescan_requested = false;
	LWLockRelease(pgbq_shared->lock);
	list_free(oids);
}

/*
 * pgbq_count_workers
 *		Count slots in use: task workers in all, task workers of one pair,
 *		maintenance workers in all and of one database.  Caller holds lock.
 */
static void
pgbq_count_workers(Oid dboid, Oid roleoid, int *tasks_all, int *tasks_pair,
				   int *maint_all, int *maint_db)
{
	int			i;

	*tasks_all = *tasks_pair = *maint_all = *maint_db = 0;
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_FREE)
			continue;
		if (s->kind == PGBQ_KIND_TASK)
		{
			(*tasks_all)++;
			if (s->dboid == dboid && s->roleoid == roleoid && s->exit_reasons == 0)
				(*tasks_pair)++;
		}
		else
		{
			(*maint_all)++;
			if (s->dboid == dboid)
				(*maint_db)++;
		}
	}
}

/*
 * pgbq_pair_workers
 *		Task workers of the pair of slot s that stay (no exit reason).
 *		Caller holds the lock.
 */
static int
pgbq_pair_workers(const PgbqSlot *s)
{
	int			n = 0;
	int			i;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *o = &pgbq_shared->slots[i];

		if (o->state != PGBQ_SLOT_FREE && o->kind == PGBQ_KIND_TASK &&
			o->exit_reasons == 0 && o->dboid == s->dboid &&
			o->roleoid == s->roleoid)
			n++;
	}
	return n;
}

/*
 * pgbq_pick_victim
 *		The worker to leave so that another pair can get its slot, or NULL.
 *		Caller holds the lock.
 *
 *		First an idle worker asleep (it found no work): one with nothing
 *		scheduled, else the one whose delayed work is due last (it hands its
 *		wake-up time over when it leaves).  A worker started or woken for
 *		announced work that it has not looked for yet is spoken for:
 *		evicted, it would leave without that work, and nobody would announce
 *		it again; one that is looking (between its tasks, or claiming) would
 *		give back what it claims, and its replacement would cost a start.
 *
 *		Only for a pair that has no worker at all (hungry): a running worker
 *		of the pair holding the most workers, if it holds more than one; else
 *		the pair's only worker that has served longest, once it has served
 *		PGBQ_YIELD_AFTER_MS.  A running victim finishes its task first.
 */
static PgbqSlot *
pgbq_pick_victim(bool hungry, TimestampTz now)
{
	PgbqSlot   *victim = NULL;
	int			victim_pair = 0;
	int			i;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_IDLE || s->kind != PGBQ_KIND_TASK ||
			s->exit_reasons != 0 || s->woken || !s->asleep)
			continue;
		if (victim == NULL ||
			(victim->wake_at != 0 && (s->wake_at == 0 || s->wake_at > victim->wake_at)))
			victim = s;
	}
	if (victim != NULL || !hungry)
		return victim;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];
		int			pair;

		if (s->state != PGBQ_SLOT_RUNNING || s->kind != PGBQ_KIND_TASK ||
			s->exit_reasons != 0)
			continue;
		pair = pgbq_pair_workers(s);
		if (pair == 1 &&
			!TimestampDifferenceExceeds(s->backend_start, now, PGBQ_YIELD_AFTER_MS))
			continue;
		if (victim == NULL || pair > victim_pair ||
			(pair == victim_pair && s->backend_start < victim->backend_start))
		{
			victim = s;
			victim_pair = pair;
		}
	}
	return victim;
}

/*
 * pgbq_make_room
 *		Ask workers of other pairs to leave so that waiting pairs can get a
 *		worker: one pending eviction per pair waiting without a worker
 *		(hungry), or a single one when only pairs that have workers wait
 *		(then only an idle worker is evicted).  Caller holds the lock.
 */
static void
pgbq_make_room(int hungry, TimestampTz now)
{
	int			pending = 0;
	int			wanted = Max(hungry, 1);
	int			i;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_FREE && s->kind == PGBQ_KIND_TASK &&
			(s->exit_reasons & (PGBQ_EXIT_EVICTED | PGBQ_EXIT_YIELD)))
			pending++;
	}
	for (; pending < wanted; pending++)
	{
		PgbqSlot   *victim = pgbq_pick_victim(hungry > 0, now);

		if (victim == NULL)
			break;
		if (victim->state == PGBQ_SLOT_IDLE)
		{
			victim->exit_reasons |= PGBQ_EXIT_EVICTED;
			if (victim->latch)
				SetLatch(victim->latch);
		}
		else
			victim->exit_reasons |= PGBQ_EXIT_YIELD;
		elog(DEBUG1, "pg_background_queue: launcher asks worker %d (role %u) to %s",
			 (int) victim->pid, victim->roleoid,
			 victim->state == PGBQ_SLOT_IDLE ? "leave" : "yield after its task");
	}
}

/*
 * pgbq_schedule_maintenance
 *		Start due maintenance passes; returns the next time one is due.
 */
static TimestampTz
pgbq_schedule_maintenance(TimestampTz now)
{
	TimestampTz next_due = 0;
	int64		interval = (int64) pgbq_maintenance_interval * USECS_PER_SEC;
	int			i;

	for (i = 0; i < PGBQ_MAX_DATABASES; i++)
	{
		PgbqDatabase *db = &pgbq_shared->databases[i];
		bool		due;
		Oid			dboid;
		int			tasks_all;
		int			tasks_pair;
		int			maint_all;
		int			maint_db;
		TimestampTz due_at;

		LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
		if (!db->in_use)
		{
			LWLockRelease(pgbq_shared->lock);
			continue;
		}
		dboid = db->dboid;
		due_at = db->last_maintenance + interval;
		due = db->maintenance_requested || (db->has_extension && due_at <= now);
		pgbq_count_workers(dboid, InvalidOid, &tasks_all, &tasks_pair,
						   &maint_all, &maint_db);
		if (due && maint_db == 0 && maint_all < PGBQ_MAX_CONCURRENT_MAINTENANCE)
		{
			db->maintenance_requested = false;
			db->last_maintenance = now;
			LWLockRelease(pgbq_shared->lock);
			if (!pgbq_start_worker(PGBQ_KIND_MAINTENANCE, dboid, InvalidOid))
			{
				LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
				db->maintenance_requested = true;
				LWLockRelease(pgbq_shared->lock);
				due_at = now + PGBQ_START_FAILURE_BACKOFF_MS * 1000;
			}
			else
				due_at = now + interval;
		}
		else
		{
			if (due)
				due_at = now + PGBQ_START_FAILURE_BACKOFF_MS * 1000;
			LWLockRelease(pgbq_shared->lock);
			if (!due && !db->has_extension)
				continue;
		}
		if (next_due == 0 || due_at < next_due)
			next_due = due_at;
	}
	return next_due;
}

/* A (database, role) pair the launcher may start workers for. */
typedef struct PgbqCandidate
{
	PgbqDemand *d;
	Oid			dboid;
	Oid			roleoid;
	int			workers;		/* staying workers of the pair */
	int			want;			/* workers wanted beyond those */
	int			starts;			/* planned in this pass */
	TimestampTz since;
} PgbqCandidate;

/*
 * pgbq_next_candidate
 *		The candidate to get the next worker: fewest workers first (a pair
 *		without any before any pair gets a second one), then the one waiting
 *		longest.  -1 if none wants more.
 */
static int
pgbq_next_candidate(PgbqCandidate *c, int n)
{
	int			best = -1;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (c[i].want <= 0)
			continue;
		if (best < 0 || c[i].workers < c[best].workers ||
			(c[i].workers == c[best].workers && c[i].since < c[best].since))
			best = i;
	}
	return best;
}

/*
 * pgbq_schedule_task_workers
 *		Start task workers where demand exceeds idle workers, sharing the
 *		slots fairly between pairs (see pgbq_next_candidate), and ask
 *		workers of other pairs to make room when the slots are taken;
 *		returns the next time something is due.
 */
static TimestampTz
pgbq_schedule_task_workers(TimestampTz now)
{
	PgbqCandidate *cands;
	TimestampTz next_due = 0;
	bool		unmet = false;
	int			ncands = 0;
	int			tasks_all = 0;
	int			free_slots;
	int			hungry = 0;
	int			i;

	cands = palloc(sizeof(PgbqCandidate) * PGBQ_MAX_DEMANDS);
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_FREE && s->kind == PGBQ_KIND_TASK)
			tasks_all++;
	}
	for (i = 0; i < PGBQ_MAX_DEMANDS; i++)
	{
		PgbqDemand *d = &pgbq_shared->demands[i];
		int			t_all;
		int			tasks_pair;
		int			maint_all;
		int			maint_db;
		int			need;

		if (!d->in_use)
			continue;
		if (pgbq_drop_in_progress(d->dboid))
			continue;			/* the dropping transaction wakes us when done */
		pgbq_count_workers(d->dboid, d->roleoid, &t_all, &tasks_pair,
						   &maint_all, &maint_db);
		if (d->retry_after > now)
		{
			if (next_due == 0 || d->retry_after < next_due)
				next_due = d->retry_after;
			continue;
		}
		need = d->want;
		if (d->wake_at != 0 && d->wake_at <= now)
		{
			d->wake_at = 0;
			if (tasks_pair == 0)
				need = Max(need, 1);
		}
		if (d->wake_at != 0 && (next_due == 0 || d->wake_at < next_due))
			next_due = d->wake_at;
		if (need <= 0)
		{
			d->want = 0;
			d->waiting_since = 0;
			if (d->wake_at == 0 && tasks_pair == 0)
				d->in_use = false;	/* nothing to remember */
			continue;
		}
		cands[ncands].d = d;
		cands[ncands].dboid = d->dboid;
		cands[ncands].roleoid = d->roleoid;
		cands[ncands].workers = tasks_pair;
		cands[ncands].want = need;
		cands[ncands].starts = 0;
		cands[ncands].since = d->waiting_since != 0 ? d->waiting_since : now;
		ncands++;
	}

	/*
	 * Plan the starts one worker at a time, and take the planned demand out
	 * of the entries: work announced while we start workers (the lock is
	 * released meanwhile) adds to what is left instead of being overwritten.
	 */
	free_slots = pgbq_max_parallel - tasks_all;
	while (free_slots > 0)
	{
		int			c = pgbq_next_candidate(cands, ncands);

		if (c < 0)
			break;
		cands[c].starts++;
		cands[c].workers++;
		cands[c].want--;
		free_slots--;
	}
	for (i = 0; i < ncands; i++)
	{
		/* cands[i].want: what is left of the need once planned starts run */
		cands[i].d->want = cands[i].want;
		if (cands[i].want == 0)
			cands[i].d->waiting_since = 0;
		if (cands[i].want > 0)
		{
			unmet = true;
			if (cands[i].workers == 0)
				hungry++;
		}
	}
	if (unmet)
		pgbq_make_room(hungry, now);
	LWLockRelease(pgbq_shared->lock);

	for (i = 0; i < ncands; i++)
	{
		PgbqCandidate *c = &cands[i];

		while (c->starts > 0)
		{
			if (!pgbq_start_worker(PGBQ_KIND_TASK, c->dboid, c->roleoid))
			{
				TimestampTz retry = now + PGBQ_START_FAILURE_BACKOFF_MS * 1000;

				LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
				if (c->d->in_use && c->d->dboid == c->dboid &&
					c->d->roleoid == c->roleoid)
				{
					c->d->retry_after = retry;
					c->d->want = Min(c->d->want + c->starts,
									 Max(pgbq_max_parallel, 1));
				}
				LWLockRelease(pgbq_shared->lock);
				if (next_due == 0 || retry < next_due)
					next_due = retry;
				unmet = true;
				break;
			}
			elog(DEBUG1, "pg_background_queue: launcher started a worker for role %u",
				 c->roleoid);
			c->starts--;
		}
	}
	pfree(cands);

	/*
	 * While demand is unmet, an idle worker going to sleep wakes us (it may
	 * be evicted); while a pair waits without any worker, so does a worker
	 * ending a task (it may be asked to yield).  Not every task's end for
	 * pairs that have workers: when a role has more work than slots (a
	 * lowered limit, roles sharing the slots), that woke us for nothing at
	 * every task, about a tenth of a core.
	 */
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	pgbq_shared->unmet_demand = unmet;
	pgbq_shared->hungry_demand = unmet && hungry > 0;
	LWLockRelease(pgbq_shared->lock);
	return next_due;
}

/*
 * pgbq_demand_after_raise
 *		max_parallel_running_tasks_count was raised by a reload.  Announced
 *		work is counted up to the limit of its time (pgbq_announce_work: at
 *		least one while the limit is 0), and the launcher took what it could
 *		start, so a pair may have more work queued than it has workers, and
 *		nobody would say so until its queue drains: whether its workers are
 *		all busy, still starting, or not started yet because the limit held
 *		them back.  Ask for up to the new limit for every pair that has
 *		work (announced and unmet, or workers that are not asleep), unless
 *		one of its workers went to sleep: that one found nothing eligible.
 *		A worker started for nothing finds no task and settles the demand
 *		(pgbq_settle_demand).
 */
static void
pgbq_demand_after_raise(void)
{
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < PGBQ_MAX_DEMANDS; i++)
	{
		PgbqDemand *d = &pgbq_shared->demands[i];
		int			workers = 0;
		bool		asleep = false;
		int			j;

		if (!d->in_use)
			continue;
		for (j = 0; j < pgbq_shared->nslots; j++)
		{
			PgbqSlot   *s = &pgbq_shared->slots[j];

			if (s->state == PGBQ_SLOT_FREE || s->kind != PGBQ_KIND_TASK ||
				s->dboid != d->dboid || s->roleoid != d->roleoid ||
				s->exit_reasons != 0)
				continue;
			workers++;			/* running, idle, or starting for work */
			if (s->state == PGBQ_SLOT_IDLE && s->asleep)
				asleep = true;
		}
		if (asleep || (workers == 0 && d->want == 0) ||
			workers >= pgbq_max_parallel)
			continue;
		if (d->want == 0 && d->waiting_since == 0)
			d->waiting_since = now;
		d->want = Max(d->want, pgbq_max_parallel - workers);
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_launcher_main
 *		Entry point of the launcher.
 */
void
pgbq_launcher_main(Datum main_arg)
{
	(void) main_arg;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	MemoryContextSwitchTo(AllocSetContextCreate(TopMemoryContext,
												"pg_background_queue launcher",
												ALLOCSET_DEFAULT_SIZES));
	pgbq_handles = MemoryContextAllocZero(TopMemoryContext,
										  sizeof(BackgroundWorkerHandle *) *
										  pgbq_shared->nslots);
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	pgbq_shared->launcher_pid = MyProcPid;
	pgbq_shared->launcher_latch = MyLatch;
	LWLockRelease(pgbq_shared->lock);
	before_shmem_exit(pgbq_launcher_detach, 0);

	for (;;)
	{
		TimestampTz now;
		TimestampTz next_due;
		TimestampTz t;
		bool		rescan;
		long		timeout_ms;

		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			int			old_limit = pgbq_max_parallel;

			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			if (pgbq_max_parallel > old_limit)
				pgbq_demand_after_raise();
		}

		now = GetCurrentTimestamp();
		pgbq_reap_slots(now);

		LWLockAcquire(pgbq_shared->lock, LW_SHARED);
		rescan = pgbq_shared->rescan_requested;
		LWLockRelease(pgbq_shared->lock);
		if (rescan)
		{
			pgbq_scan_databases();
			/* its catalog reads, counted now rather than at our exit */
			(void) pgstat_report_stat(true);
		}

		next_due = pgbq_schedule_maintenance(now);
		t = pgbq_schedule_task_workers(now);
		if (t != 0 && (next_due == 0 || t < next_due))
			next_due = t;

		if (next_due == 0)
			timeout_ms = (long) pgbq_maintenance_interval * 1000;
		else
			timeout_ms = (long) Max((next_due - GetCurrentTimestamp() + 999) / 1000, 1);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout_ms, PG_WAIT_EXTENSION);
	}
}
