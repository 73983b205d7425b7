/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Shared state of pg_background_queue.
 *
 * One LWLock (pgbq_shared->lock) protects everything here.  Writers hold it
 * exclusively, readers at least shared; the exceptions are listed below.
 * Worker accounting is derived from the slots themselves, never from a
 * separate counter, so it cannot drift: a slot is in use from the moment
 * the launcher reserves it until the process behind it has exited.
 *
 * Slot state machine (PgbqSlot.state; every transition under the lock held
 * exclusively):
 *
 *	 FREE --(launcher: pgbq_start_worker reserves it, generation++,
 *	 |		 woken = true)--> STARTING
 *	 STARTING --(worker: pgbq_attach_slot, if the generation still
 *	 |		 matches; sets pid and latch)--> IDLE
 *	 STARTING --(launcher: registration failed, or no process after
 *	 |		 PGBQ_STARTING_TIMEOUT_US / process gone: pgbq_reap_slots)--> FREE
 *	 IDLE --(worker: pgbq_slot_try_start, after checking the global and
 *	 |		 topic limits and the rate limit in the same critical
 *	 |		 section)--> RUNNING (task_id, topic, task_started_at)
 *	 RUNNING --(worker: pgbq_slot_hand_over; task ended, the next one is
 *	 |		 claimed in the same commit; task_id 0)--> RUNNING, then
 *	 |		 pgbq_slot_try_start (the next task) or pgbq_slot_finish_task
 *	 RUNNING --(worker: pgbq_slot_finish_task; task ended, given back,
 *	 |		 or its claim rolled back)--> IDLE
 *	 IDLE, RUNNING --(worker exit: pgbq_worker_detach; RUNNING asks for
 *			 a maintenance pass)--> FREE
 *	 any --(launcher or calibrate: process vanished without detaching,
 *			 pgbq_reap_slots / pgbq_live_task_workers)--> FREE
 *
 * Flags of a slot in use:
 *	- woken: set by pgbq_start_worker and pgbq_announce_work ("this worker
 *	  is spoken for by announced work"), cleared by the worker when it
 *	  starts looking for work (pgbq_demand_seq).  A woken worker is not
 *	  counted again for new work and is never evicted.
 *	- waiting_capacity: set by pgbq_slot_try_start when a limit held a task
 *	  back, and by pgbq_slot_held_back_topics when the claim leaves a full
 *	  topic out (its worker may set its own flag holding the lock in any
 *	  mode; every other write holds it exclusively); cleared, and the
 *	  latch set, by pgbq_wake_capacity_waiters when a running slot frees;
 *	  cleared when the slot starts a task, or by pgbq_slot_forget_
 *	  capacity_wait when the claim found no task waiting.
 *	- asleep: set by the worker when it found no work and goes to sleep,
 *	  cleared when it wakes to look again (pgbq_demand_seq); only a worker
 *	  asleep is evicted (pgbq_make_room).
 *	- wake_at: written by the worker before it sleeps (its delayed work's
 *	  due time), read by the launcher to choose whom to evict and by the
 *	  worker to hand its wake-up over when it leaves; cleared by
 *	  pgbq_request_database_exit.
 *	- exit_reasons (PGBQ_EXIT_* bits, see pgbq.h): EVICTED (an idle
 *	  worker) and YIELD (a running one: it finishes its task first) set by
 *	  the launcher (pgbq_make_room, at most one pending eviction per pair
 *	  waiting without a worker), DROPPED by pgbq_request_database_exit
 *	  (DROP DATABASE / EXTENSION), LEAVING by the worker itself (idle
 *	  timeout, no work of its own while other pairs wait, or it gave a task
 *	  back and is exiting; with YIELD, in pgbq_slot_try_start, when it is
 *	  surplus after the global limit was lowered).  Any bit: the worker
 *	  claims nothing more, leaves at its next look, gets no more wake-ups
 *	  and counts no longer towards its role's pool.  Cleared only by
 *	  detach.
 *	- cancel_requested: set by pgbq_signal_cancel for task_id just before it
 *	  sends SIGINT, cleared when the slot starts or finishes a task.  The
 *	  worker reads it without the lock (from its SIGINT handler, and when a
 *	  task starts): the write happened before the signal was sent.
 *
 * Fields stable once a slot is reserved (written by the launcher while the
 * slot is STARTING, unchanged until it is FREE again, so the slot's own
 * worker reads them without the lock): kind, dboid, roleoid, generation.
 * pid and latch are written once at attach and cleared at detach; a latch
 * read under the lock may be set after releasing it (a stale latch belongs
 * to a process that is gone or about to be: setting it is harmless).
 *
 * Demand entries (PgbqDemand, keyed by (database, role)): want is raised by
 * pgbq_announce_work, taken by the launcher before it starts workers (what
 * it could not start is added back, never overwritten) and zeroed by a
 * worker that found nothing (pgbq_settle_demand, unless seq moved: new work
 * was announced meanwhile).  Database entries (PgbqDatabase) carry the
 * maintenance schedule and the DROP EXTENSION mark.
 *
 * Concurrency limits are checked and taken in one critical section
 * (pgbq_slot_try_start), so neither the global nor a topic limit can be
 * exceeded under any interleaving.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"

PgbqShared *pgbq_shared = NULL;

static bool pgbq_slots_over_limit(void);
static void pgbq_wake_capacity_waiters(void);

#define PGBQ_LWLOCK_TRANCHE "pg_background_queue"

/*
 * pgbq_shmem_size
 *		Bytes needed: one slot per possible background worker.
 */
static Size
pgbq_shmem_size(void)
{
	return add_size(offsetof(PgbqShared, slots),
					mul_size(sizeof(PgbqSlot), max_worker_processes));
}

/*
 * pgbq_require_shmem
 *		Ask for our shared memory and lock.  From 15 on this runs in the
 *		shmem_request_hook, before that directly in _PG_init.
 */
void
pgbq_require_shmem(void)
{
	RequestAddinShmemSpace(pgbq_shmem_size());
	RequestAddinShmemSpace(pgbq_paused_shmem_size());
	RequestAddinShmemSpace(pgbq_listeners_shmem_size());
	RequestNamedLWLockTranche(PGBQ_LWLOCK_TRANCHE, 1);
}

/*
 * pgbq_shmem_init
 *		shmem_startup_hook body: create or attach to the shared state.
 */
void
pgbq_shmem_init(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	pgbq_shared = ShmemInitStruct("pg_background_queue", pgbq_shmem_size(),
								  &found);
	if (!found)
	{
		memset(pgbq_shared, 0, pgbq_shmem_size());
		pgbq_shared->lock = &(GetNamedLWLockTranche(PGBQ_LWLOCK_TRANCHE))->lock;
		pgbq_shared->nslots = max_worker_processes;
		/* After a (re)start, every database needs a maintenance pass. */
		pgbq_shared->rescan_requested = true;
		ConditionVariableInit(&pgbq_shared->task_ended);
		SpinLockInit(&pgbq_shared->notify.mutex);
	}
	pgbq_paused_shmem_init();
	pgbq_listeners_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * pgbq_slot_clear
 *		Mark a slot free, keeping its generation.  Caller holds the lock.
 */
void
pgbq_slot_clear(PgbqSlot *s)
{
	uint32		generation = s->generation;

	memset(s, 0, sizeof(PgbqSlot));
	s->generation = generation;
	s->state = PGBQ_SLOT_FREE;
}

/*
 * pgbq_rate_lookup
 *		Rate limit state of a topic, created on demand for a task of role
 *		roleoid.  A role beyond its share of the table (see
 *		PGBQ_RATE_TOPICS_PER_ROLE) gets a free entry only while enough stay
 *		free for the others.  Otherwise an entry whose delay has long
 *		elapsed is recycled; if none can be, NULL is returned and the caller
 *		must treat the topic as rate limited.  Caller holds the lock
 *		exclusively.
 */
static PgbqRateTopic *
pgbq_rate_lookup(const char *topic, TimestampTz now, double delay, Oid roleoid)
{
	PgbqRateTopic *freeent = NULL;
	PgbqRateTopic *oldest = NULL;
	int			nfree = 0;
	int			mine = 0;
	int			i;

	for (i = 0; i < PGBQ_MAX_RATE_TOPICS; i++)
	{
		PgbqRateTopic *r = &pgbq_shared->rates[i];

		if (!r->in_use)
		{
			if (freeent == NULL)
				freeent = r;
			nfree++;
			continue;
		}
		if (topic == NULL ? r->isnull : (!r->isnull && strcmp(r->topic, topic) == 0))
			return r;
		if (r->roleoid == roleoid)
			mine++;
		if (oldest == NULL || r->last_start < oldest->last_start)
			oldest = r;
	}
	if (freeent != NULL && mine >= PGBQ_RATE_TOPICS_PER_ROLE &&
		nfree <= PGBQ_RATE_TOPICS_RESERVE)
		freeent = NULL;			/* beyond its share: the rest is for others */
	if (freeent == NULL)
	{
		/* Recycle an entry that no longer constrains anything. */
		if (oldest == NULL ||
			oldest->last_start + (int64) (delay * USECS_PER_SEC) > now)
			return NULL;
		freeent = oldest;
	}
	memset(freeent, 0, sizeof(PgbqRateTopic));
	freeent->in_use = true;
	freeent->roleoid = roleoid;
	freeent->isnull = (topic == NULL);
	if (topic)
		strlcpy(freeent->topic, topic, NAMEDATALEN);
	freeent->last_start = 0;
	return freeent;
}

/*
 * pgbq_slot_try_start
 *		Atomically check that the topic is not paused, the global limit,
 *		the topic's limit and its rate limit, and if all allow it mark the
 *		slot as running the task.
 */
PgbqStartResult
pgbq_slot_try_start(int slotno, int64 task_id, const char *topic,
					const PgbqTopicPolicy *policy, TimestampTz now,
					TimestampTz *retry_at)
{
	PgbqSlot   *me = &pgbq_shared->slots[slotno];
	PgbqRateTopic *rate = NULL;
	int			running = 0;
	int			topic_running = 0;
	int			i;

	*retry_at = 0;
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	if (pgbq_topic_paused(topic))
	{
		LWLockRelease(pgbq_shared->lock);
		return PGBQ_START_PAUSED;
	}
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_RUNNING || i == slotno)
			continue;
		running++;
		if (topic == NULL ? s->topic_isnull
			: (!s->topic_isnull && strcmp(s->topic, topic) == 0))
			topic_running++;
	}
	if (running >= pgbq_max_parallel ||
		(policy->max_parallel >= 0 && topic_running >= policy->max_parallel))
	{
		/*
		 * More task workers than the global limit (lowered by a reload):
		 * this idle one is surplus.  Waiting for capacity, it would be woken
		 * by every finish and claim in vain, never idle long enough to time
		 * out.  It leaves instead, announcing its role's work like a
		 * yielding worker, so a role whose only worker it was waits for a
		 * slot like any other.
		 */
		if (running >= pgbq_max_parallel && pgbq_slots_over_limit())
			me->exit_reasons |= PGBQ_EXIT_LEAVING | PGBQ_EXIT_YIELD;
		else
			me->waiting_capacity = true;
		LWLockRelease(pgbq_shared->lock);
		return PGBQ_START_NO_CAPACITY;
	}
	if (policy->delay_in_sec > 0)
	{
		int64		delay_us = (int64) (policy->delay_in_sec * USECS_PER_SEC);

		rate = pgbq_rate_lookup(topic, now, policy->delay_in_sec, me->roleoid);
		if (rate == NULL)
		{
			*retry_at = now + delay_us;
			LWLockRelease(pgbq_shared->lock);
			return PGBQ_START_RATE_LIMITED;
		}
		if (rate->last_start != 0 && rate->last_start + delay_us > now)
		{
			*retry_at = rate->last_start + delay_us;
			LWLockRelease(pgbq_shared->lock);
			return PGBQ_START_RATE_LIMITED;
		}
		rate->last_start = now;
	}
	/* a hand-over to another topic frees the old topic's capacity */
	if (me->state == PGBQ_SLOT_RUNNING &&
		(me->topic_isnull != (topic == NULL) ||
		 (topic != NULL && strcmp(me->topic, topic) != 0)))
		pgbq_wake_capacity_waiters();
	me->state = PGBQ_SLOT_RUNNING;
	me->task_id = task_id;
	me->topic_isnull = (topic == NULL);
	if (topic)
		strlcpy(me->topic, topic, NAMEDATALEN);
	else
		me->topic[0] = '\0';
	me->task_started_at = now;
	me->cancel_requested = false;
	me->waiting_capacity = false;
	LWLockRelease(pgbq_shared->lock);
	return PGBQ_START_OK;
}

/*
 * pgbq_slot_topic_listed
 *		Is this topic (NULL: the default topic, "" in the list) in topics?
 */
static bool
pgbq_slot_topic_listed(List *topics, const char *topic)
{
	ListCell   *lc;

	foreach(lc, topics)
	{
		if (strcmp((const char *) lfirst(lc), topic ? topic : "") == 0)
			return true;
	}
	return false;
}

/*
 * pgbq_slot_held_back_topics
 *		The topics of which the slot could start no task now: paused, at
 *		their concurrency limit (counting the other slots), or inside their
 *		rate limit's spacing (*rate_until: the earliest time one of those
 *		may start again, 0 if none).  The claim leaves their rows out from
 *		its first round, so that it does not lock a row only to be refused
 *		it: while a refused claim holds that lock, however briefly, other
 *		workers' claims skip the row (SKIP LOCKED) and take the tasks behind
 *		it, out of priority order; a batch would commit them without it.
 *		A topic that fills up after this look is still refused by
 *		pgbq_slot_try_start.
 *
 *		A topic held back by its concurrency limit marks the slot as
 *		waiting for capacity now, under the lock, so that a slot freed
 *		before the claim ends wakes it (pgbq_slot_forget_capacity_wait
 *		undoes that when no task was waiting after all).  The flag is the
 *		slot's own: its worker sets it with the lock held in any mode, a
 *		waker clears it holding the lock exclusively.
 */
List *
pgbq_slot_held_back_topics(int slotno, TimestampTz now, TimestampTz *rate_until)
{
	PgbqSlot   *me = &pgbq_shared->slots[slotno];
	List	   *held = NIL;
	int			i;

	*rate_until = 0;
	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	held = pgbq_paused_topics(held);

	/* topics at their concurrency limit: those of the other running slots */
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];
		const char *topic;
		PgbqTopicPolicy policy;
		int			running = 0;
		int			j;

		if (s->state != PGBQ_SLOT_RUNNING || i == slotno)
			continue;
		topic = s->topic_isnull ? NULL : s->topic;
		if (pgbq_slot_topic_listed(held, topic))
			continue;
		pgbq_topic_policy(topic, &policy);
		if (policy.max_parallel < 0)
			continue;
		for (j = 0; j < pgbq_shared->nslots; j++)
		{
			PgbqSlot   *o = &pgbq_shared->slots[j];

			if (o->state == PGBQ_SLOT_RUNNING && j != slotno &&
				o->topic_isnull == s->topic_isnull &&
				(s->topic_isnull || strcmp(o->topic, s->topic) == 0))
				running++;
		}
		if (running >= policy.max_parallel)
		{
			held = lappend(held, pstrdup(topic ? topic : ""));
			me->waiting_capacity = true;
		}
	}

	/* topics inside their rate limit's spacing */
	for (i = 0; i < PGBQ_MAX_RATE_TOPICS; i++)
	{
		PgbqRateTopic *r = &pgbq_shared->rates[i];
		const char *topic;
		PgbqTopicPolicy policy;
		TimestampTz until;

		if (!r->in_use || r->last_start == 0)
			continue;
		topic = r->isnull ? NULL : r->topic;
		pgbq_topic_policy(topic, &policy);
		if (policy.delay_in_sec <= 0)
			continue;
		until = r->last_start + (int64) (policy.delay_in_sec * USECS_PER_SEC);
		if (until <= now || pgbq_slot_topic_listed(held, topic))
			continue;
		held = lappend(held, pstrdup(topic ? topic : ""));
		if (*rate_until == 0 || until < *rate_until)
			*rate_until = until;
	}
	LWLockRelease(pgbq_shared->lock);
	return held;
}

/*
 * pgbq_slot_forget_capacity_wait
 *		The claim found no task waiting after all: a slot freed later need
 *		not wake this one.
 */
void
pgbq_slot_forget_capacity_wait(int slotno)
{
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	pgbq_shared->slots[slotno].waiting_capacity = false;
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_slots_over_limit
 *		Do more task workers stay (slots in use whose worker has no reason
 *		to leave) than max_parallel_running_tasks_count allows?  Workers
 *		already leaving do not count, so of several surplus workers that
 *		ask at once only the surplus leave.  Caller holds the lock.
 */
static bool
pgbq_slots_over_limit(void)
{
	int			staying = 0;
	int			i;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_FREE && s->kind == PGBQ_KIND_TASK &&
			s->exit_reasons == 0)
			staying++;
	}
	return staying > pgbq_max_parallel;
}

/*
 * pgbq_wake_capacity_waiters
 *		Set the latch of every worker that found no free capacity.  Caller
 *		holds the lock exclusively.
 */
static void
pgbq_wake_capacity_waiters(void)
{
	int			i;

	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_IDLE && s->waiting_capacity && s->latch)
		{
			s->waiting_capacity = false;
			SetLatch(s->latch);
		}
	}
}

/*
 * pgbq_slot_hand_over
 *		The slot's task ended, and the worker claims its next one in the same
 *		commit: the slot stays RUNNING (the capacity it holds, global and
 *		topic, is not freed, so no worker woken by a release can lock the
 *		next task in priority order and make this claim skip it), but holds
 *		no task any more (task_id 0: a cancel of the ended task reaches
 *		nobody).  pgbq_slot_try_start then moves the slot to the next task,
 *		waking the capacity waiters if the topic changes; if nothing is
 *		claimed, pgbq_slot_finish_task frees it.
 */
void
pgbq_slot_hand_over(int slotno)
{
	PgbqSlot   *me = &pgbq_shared->slots[slotno];
	Latch	   *launcher;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	if (me->state == PGBQ_SLOT_RUNNING && me->task_id != 0)
		me->tasks_done++;
	me->task_id = 0;
	me->cancel_requested = false;
	/*
	 * As at any task's end: a pair waiting without a worker may now ask this
	 * one to yield.
	 */
	launcher = pgbq_shared->hungry_demand ? pgbq_shared->launcher_latch : NULL;
	LWLockRelease(pgbq_shared->lock);
	if (launcher)
		SetLatch(launcher);
}

/*
 * pgbq_slot_finish_task
 *		The slot no longer runs a task; wake workers waiting for capacity,
 *		and the launcher if it waits for a worker to become idle.
 */
void
pgbq_slot_finish_task(int slotno)
{
	PgbqSlot   *me = &pgbq_shared->slots[slotno];
	Latch	   *launcher;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	if (me->state == PGBQ_SLOT_RUNNING)
	{
		me->state = PGBQ_SLOT_IDLE;
		/* counted already if the task was handed over (pgbq_slot_hand_over) */
		if (me->task_id != 0)
			me->tasks_done++;
	}
	me->task_id = 0;
	/* before the row can be claimable again: a give-back, a failed attempt */
	me->started_id = 0;
	me->cancel_requested = false;
	pgbq_wake_capacity_waiters();
	launcher = pgbq_shared->hungry_demand ? pgbq_shared->launcher_latch : NULL;
	LWLockRelease(pgbq_shared->lock);
	if (launcher)
		SetLatch(launcher);
}

/*
 * pgbq_demand_lookup
 *		Demand entry of (database, role).  Caller holds the lock (exclusive
 *		if create is true).  Returns NULL if absent, or if the table is full.
 */
PgbqDemand *
pgbq_demand_lookup(Oid dboid, Oid roleoid, bool create)
{
	PgbqDemand *freeent = NULL;
	int			i;

	for (i = 0; i < PGBQ_MAX_DEMANDS; i++)
	{
		PgbqDemand *d = &pgbq_shared->demands[i];

		if (d->in_use && d->dboid == dboid && d->roleoid == roleoid)
			return d;
		if (!d->in_use && freeent == NULL)
			freeent = d;
	}
	if (!create || freeent == NULL)
		return NULL;
	memset(freeent, 0, sizeof(PgbqDemand));
	freeent->in_use = true;
	freeent->dboid = dboid;
	freeent->roleoid = roleoid;
	return freeent;
}

/*
 * pgbq_database_lookup
 *		Database entry, created on demand.  Caller holds the lock (exclusive
 *		if create is true).
 */
PgbqDatabase *
pgbq_database_lookup(Oid dboid, bool create)
{
	PgbqDatabase *freeent = NULL;
	int			i;

	for (i = 0; i < PGBQ_MAX_DATABASES; i++)
	{
		PgbqDatabase *d = &pgbq_shared->databases[i];

		if (d->in_use && d->dboid == dboid)
			return d;
		if (!d->in_use && freeent == NULL)
			freeent = d;
	}
	if (!create || freeent == NULL)
		return NULL;
	memset(freeent, 0, sizeof(PgbqDatabase));
	freeent->in_use = true;
	freeent->dboid = dboid;
	freeent->has_extension = true;
	return freeent;
}

/*
 * pgbq_wake_launcher
 *		Set the launcher's latch, if it runs.
 */
void
pgbq_wake_launcher(void)
{
	Latch	   *latch;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	latch = pgbq_shared->launcher_latch;
	LWLockRelease(pgbq_shared->lock);
	if (latch)
		SetLatch(latch);
}

/*
 * pgbq_announce_work
 *		Called after a commit that made tasks of (database, role) eligible:
 *		wake up to "ready" idle workers of that pair, and ask the launcher
 *		for more workers if that is not enough.  earliest_future is the
 *		earliest eligibility time of tasks that are not eligible yet.
 */
void
pgbq_announce_work(Oid dboid, Oid roleoid, int ready,
				   TimestampTz earliest_future)
{
	PgbqDemand *d;
	PgbqDatabase *db;
	bool		wake_launcher = false;
	int			idle_workers = 0;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	db = pgbq_database_lookup(dboid, true);
	if (db)
		db->has_extension = true;
	d = pgbq_demand_lookup(dboid, roleoid, true);
	if (d)
		d->seq++;
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->kind != PGBQ_KIND_TASK || s->dboid != dboid ||
			s->roleoid != roleoid || s->exit_reasons != 0)
			continue;
		if (s->state != PGBQ_SLOT_IDLE && s->state != PGBQ_SLOT_STARTING)
			continue;
		if (ready == 0)
		{
			/* only future work: one idle worker recomputes its wake-up */
			if (s->state == PGBQ_SLOT_IDLE && s->latch && idle_workers == 0)
			{
				SetLatch(s->latch);
				idle_workers++;
			}
			continue;
		}

		/*
		 * A worker woken for earlier work that has not looked for it yet is
		 * spoken for: counting it again would leave this work waiting for
		 * it to finish what it is about to claim.
		 */
		if (s->woken || idle_workers >= ready)
			continue;
		s->woken = true;
		if (s->state == PGBQ_SLOT_IDLE && s->latch)
			SetLatch(s->latch);
		idle_workers++;
	}
	if (ready == 0)
		idle_workers = 0;
	if (d == NULL)
	{
		/* Demand table full: a maintenance pass will rebuild it. */
		if (db)
			db->maintenance_requested = true;
		wake_launcher = true;
	}
	else
	{
		if (ready > idle_workers)
		{
			if (d->want == 0 && d->waiting_since == 0)
				d->waiting_since = GetCurrentTimestamp();
			d->want = Max(d->want, ready - idle_workers);
			d->want = Min(d->want, Max(pgbq_max_parallel, 1));
			d->retry_after = 0;
			wake_launcher = true;
		}
		if (earliest_future != 0 &&
			(d->wake_at == 0 || earliest_future < d->wake_at))
		{
			d->wake_at = earliest_future;
			wake_launcher = true;
		}
	}
	LWLockRelease(pgbq_shared->lock);
	if (wake_launcher)
		pgbq_wake_launcher();
}

/*
 * pgbq_request_maintenance
 *		Ask the launcher for a maintenance pass of a database.
 */
void
pgbq_request_maintenance(Oid dboid)
{
	PgbqDatabase *db;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	db = pgbq_database_lookup(dboid, true);
	if (db)
	{
		db->has_extension = true;
		db->maintenance_requested = true;
	}
	else
		pgbq_shared->rescan_requested = true;
	LWLockRelease(pgbq_shared->lock);
	pgbq_wake_launcher();
}

/*
 * pgbq_live_task_workers
 *		Number of task workers whose process exists.  With calibrate, slots
 *		whose process has vanished without cleaning up are freed first.
 */
int
pgbq_live_task_workers(bool calibrate)
{
	int			count = 0;
	int			i;

	LWLockAcquire(pgbq_shared->lock, calibrate ? LW_EXCLUSIVE : LW_SHARED);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_FREE || s->kind != PGBQ_KIND_TASK)
			continue;
		if (s->state == PGBQ_SLOT_STARTING)
			continue;			/* no process yet */
		if (calibrate && s->pid > 0 && kill(s->pid, 0) != 0 && errno == ESRCH)
		{
			if (s->state == PGBQ_SLOT_RUNNING)
			{
				PgbqDatabase *db = pgbq_database_lookup(s->dboid, true);

				if (db)
					db->maintenance_requested = true;
			}
			pgbq_slot_clear(s);
			continue;
		}
		count++;
	}
	LWLockRelease(pgbq_shared->lock);
	return count;
}

/*
 * pgbq_signal_cancel
 *		Interrupt the worker running a task, if any.  The signal is sent
 *		while holding the lock and after checking the slot still runs that
 *		task, so it cannot hit a later task of the same worker.
 */
bool
pgbq_signal_cancel(int64 task_id, Oid dboid)
{
	bool		found = false;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_RUNNING && s->kind == PGBQ_KIND_TASK &&
			s->dboid == dboid && s->task_id == task_id && s->pid > 0)
		{
			s->cancel_requested = true;
			kill(s->pid, SIGINT);
			found = true;
			break;
		}
	}
	LWLockRelease(pgbq_shared->lock);
	return found;
}

/*
 * pgbq_request_database_exit
 *		Ask every worker connected to a database to exit (DROP DATABASE,
 *		DROP EXTENSION) without handing over delayed work.  With forget, also
 *		drop the database's demand and entry, so the launcher starts nothing
 *		more there.  Returns the number of workers asked.
 */
int
pgbq_request_database_exit(Oid dboid, bool forget)
{
	int			i;
	int			n = 0;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_FREE && s->dboid == dboid)
		{
			s->exit_reasons |= PGBQ_EXIT_DROPPED;
			s->wake_at = 0;
			if (s->pid > 0)
				kill(s->pid, SIGTERM);
			n++;
		}
	}
	for (i = 0; forget && i < PGBQ_MAX_DEMANDS; i++)
	{
		if (pgbq_shared->demands[i].in_use && pgbq_shared->demands[i].dboid == dboid)
			pgbq_shared->demands[i].in_use = false;
	}
	for (i = 0; forget && i < PGBQ_MAX_DATABASES; i++)
	{
		if (pgbq_shared->databases[i].in_use && pgbq_shared->databases[i].dboid == dboid)
			pgbq_shared->databases[i].in_use = false;
	}
	LWLockRelease(pgbq_shared->lock);
	return n;
}

/*
 * pgbq_set_drop_in_progress
 *		Mark (or unmark) a database whose DROP EXTENSION is waiting for its
 *		workers to leave: the launcher starts no task worker there and
 *		workers leave instead of claiming.  The transaction that set the mark
 *		clears it when it ends (at commit, with the database's entry).
 */
void
pgbq_set_drop_in_progress(Oid dboid, bool on)
{
	PgbqDatabase *db;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	db = pgbq_database_lookup(dboid, on);
	if (db)
		db->drop_in_progress = on;
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_drop_in_progress
 *		Is a DROP EXTENSION waiting for this database's workers?  Caller
 *		holds the lock.
 */
bool
pgbq_drop_in_progress(Oid dboid)
{
	PgbqDatabase *db = pgbq_database_lookup(dboid, false);

	return db != NULL && db->drop_in_progress;
}

/*
 * pgbq_wake_idle_workers
 *		Something that held tasks back is gone (a topic was resumed): set
 *		the latch of every idle task worker, and ask the launcher for a
 *		maintenance pass in every database, which rebuilds the demand of
 *		roles whose workers left meanwhile.
 */
void
pgbq_wake_idle_workers(void)
{
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_IDLE && s->kind == PGBQ_KIND_TASK && s->latch)
			SetLatch(s->latch);
	}
	pgbq_shared->rescan_requested = true;
	LWLockRelease(pgbq_shared->lock);
	pgbq_wake_launcher();
}

/*
 * pgbq_others_wait
 *		Does another (database, role) pair wait for a worker while no slot
 *		is free for it?  Asked by an idle worker that found no work of its
 *		own: it then leaves at once instead of holding the slot until its
 *		idle timeout or an eviction (a hand-over costs one worker start, not
 *		a launcher round trip plus the wait for the eviction).
 */
bool
pgbq_others_wait(int slotno)
{
	PgbqSlot   *me = &pgbq_shared->slots[slotno];
	TimestampTz now = GetCurrentTimestamp();
	int			in_use = 0;
	bool		waiting = false;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	for (i = 0; i < PGBQ_MAX_DEMANDS && !waiting; i++)
	{
		PgbqDemand *d = &pgbq_shared->demands[i];

		/* a pair the launcher is not starting workers for does not count */
		if (d->in_use && d->want > 0 && d->retry_after <= now &&
			(d->dboid != me->dboid || d->roleoid != me->roleoid) &&
			!pgbq_drop_in_progress(d->dboid))
			waiting = true;
	}
	for (i = 0; waiting && i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state != PGBQ_SLOT_FREE && s->kind == PGBQ_KIND_TASK)
			in_use++;
	}
	LWLockRelease(pgbq_shared->lock);
	return waiting && in_use >= pgbq_max_parallel;
}

/*
 * pgbq_slot_yielding
 *		Was the slot asked to leave (by anyone)?  A worker asks after a
 *		task, before claiming the next one in the same commit: a worker
 *		asked to yield finishes its task and claims nothing more.
 */
bool
pgbq_slot_yielding(int slotno)
{
	bool		yielding;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	yielding = pgbq_shared->slots[slotno].exit_reasons != 0;
	LWLockRelease(pgbq_shared->lock);
	return yielding;
}
