/*-------------------------------------------------------------------------
 *
 * claim_floor.c
 *	  A per-(database, role) key floor for the claim, in shared memory.
 *
 * The claim walks the claim index (owner, priority, next_run_at, id) from
 * its start.  Every task claimed since the last vacuum left an entry there
 * that points to a dead row version, and while any transaction in the
 * cluster holds back the xmin horizon none of them can be removed or
 * marked killed: each claim walks all of them, and a long transaction slows
 * the queue down more the longer it runs.  The floor lets the claim start
 * where the last one ended instead.
 *
 * Invariant: every committed claimable row (pending or retrying) of the
 * role has a claim key >= the floor, except rows held: locked by a claim
 * in a worker's open transaction and listed in that worker's slot (held[],
 * under pgbq_shared->lock, written by the worker alone).  It is kept by
 * three moves:
 *
 *	- lowering: a row becomes claimable (INSERT, or an UPDATE to pending or
 *	  retrying: retries, give-backs, released dependents, reschedules, an
 *	  administrator's UPDATE) only through the table's triggers, which note
 *	  the row's key (pg_background_queue_claimable BEFORE INSERT, and BEFORE
 *	  UPDATE in 1.3; pg_background_queue_task_changed AFTER UPDATE from 1.4);
 *	  once the transaction has committed, the floor is lowered to it (never
 *	  raised) and the floor's epoch bumped.
 *
 *	- advancing: a worker reads the floor and its epoch BEFORE the claim
 *	  query takes its snapshot, claims the first eligible row R from there,
 *	  and proposes as the new floor the first row still claimable in its
 *	  snapshot between the old floor and R that no slot lists as held (rows
 *	  delayed until later, rows of held-back topics, rows locked by a claim
 *	  not listed yet), or R itself (pgbq_floor_span_settled answers that
 *	  from the slots alone when it can: see there).  A row its snapshot
 *	  could not see committed after the epoch was read, so its lowering is
 *	  in the floor's ring of recent lowerings: the floor becomes the minimum
 *	  of the proposal and every lowering since the epoch read.  If the ring
 *	  no longer covers them all, the floor is left as it is.
 *
 *	- letting go (pgbq_floor_hold): a worker lists every row its claims lock
 *	  (after the claim query returned it, so a row not listed yet holds a
 *	  proposal back) and notes which it marked running or finished.  When its
 *	  transaction ends, or a subtransaction that locked or marked one rolls
 *	  back, it first takes the rows out of its list, then lowers the floor
 *	  to every one it lets go that may be claimable again: on commit the
 *	  rows it neither marked running nor finished (claimed and refused by a
 *	  topic limit, a batch's task given back), on rollback all of them.  Taken out first, a claim that reads the
 *	  list afterwards sees the row as claimable; a claim that read the list
 *	  before read its epoch before the lowering, which the ring then
 *	  covers.  A worker that dies rolls back through the same callback; a
 *	  crash of the server resets shared memory, floors included.
 *
 * Without the held rows, the floor stayed behind every claim in flight, and
 * every claim walked the rows locked by all the others: with batches (up
 * to tasks_per_commit rows locked per worker for the whole batch), most of
 * a claim's time.
 *
 * Rows that become claimable without the trigger firing at commit in this
 * server (a prepared transaction committed later, a disabled trigger) are
 * found by a claim from the very front, which one worker of the role runs
 * at least every PGBQ_FLOOR_FRONT_SCAN_MS; so the floor can delay such a
 * task by that much, never lose it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_enum.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "port/pg_bitutils.h"
#include "storage/lwlock.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "pgbq.h"

PG_FUNCTION_INFO_V1(pg_background_queue_claimable);
PG_FUNCTION_INFO_V1(pg_background_queue_task_changed);

/* The task states the triggers tell apart (pgbq_floor_row_state). */
#define PGBQ_STATE_PENDING		0
#define PGBQ_STATE_RETRYING		1
#define PGBQ_STATE_FINISHED		2
#define PGBQ_STATE_FAILED		3
#define PGBQ_STATE_CANCELLED	4
#define PGBQ_STATE_LABELS		5

/* Their OIDs in the enum type typid, looked up once per type. */
typedef struct PgbqStateOids
{
	Oid			typid;
	Oid			label[PGBQ_STATE_LABELS];
} PgbqStateOids;

static PgbqStateOids pgbq_state_oids = {InvalidOid};

/* A claim from the front of the index at least this often per role. */
#define PGBQ_FLOOR_FRONT_SCAN_MS	1000

/* The widest id span pgbq_floor_span_settled answers (bits of a uint64). */
#define PGBQ_FLOOR_SPAN			64

/* Roles whose floor one transaction can lower before lowering them all. */
#define PGBQ_FLOOR_PENDING_ROLES	16

typedef struct PgbqFloorPending
{
	Oid			roleoid;
	Oid			table_oid;
	PgbqClaimKey key;
} PgbqFloorPending;

/* A row locked by a claim of this worker's open transaction. */
typedef struct PgbqFloorHeld
{
	PgbqClaimKey key;
	SubTransactionId locked_in;	/* the subtransaction that claimed it */
	SubTransactionId started_in;	/* marked running (or finished) in;
									 * Invalid: not */
} PgbqFloorHeld;

static PgbqFloorPending pgbq_floor_pending[PGBQ_FLOOR_PENDING_ROLES];
static int	pgbq_floor_npending = 0;
static bool pgbq_floor_overflow = false;
static bool pgbq_floor_callback_registered = false;

/* Rows held (see the top of the file); mirrored in held[] of the slot. */
static PgbqFloorHeld pgbq_floor_held[PGBQ_SLOT_HELD_CLAIMS];
static int	pgbq_floor_nheld = 0;
static int	pgbq_floor_held_slotno = -1;
static Oid	pgbq_floor_held_role = InvalidOid;
static Oid	pgbq_floor_held_table = InvalidOid;

static void pgbq_floor_xact_callback(XactEvent event, void *arg);
static void pgbq_floor_subxact_callback(SubXactEvent event,
										SubTransactionId mySubid,
										SubTransactionId parentSubid,
										void *arg);

/*
 * pgbq_floor_attnum
 *		Attribute number of a column of the task table.
 */
static AttrNumber
pgbq_floor_attnum(Relation rel, const char *name)
{
	AttrNumber	attnum = attnameAttNum(rel, name, false);

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "column \"%s\" of the task table is missing", name);
	return attnum;
}

/*
 * pgbq_claim_key_cmp
 *		Order of two claim keys: the claim index's order.
 */
int
pgbq_claim_key_cmp(const PgbqClaimKey *a, const PgbqClaimKey *b)
{
	if (a->priority != b->priority)
		return a->priority < b->priority ? -1 : 1;
	if (a->next_run_at != b->next_run_at)
		return a->next_run_at < b->next_run_at ? -1 : 1;
	if (a->id != b->id)
		return a->id < b->id ? -1 : 1;
	return 0;
}

/*
 * pgbq_claim_key_lowest
 *		A key below every row's (priorities are >= 0).
 */
void
pgbq_claim_key_lowest(PgbqClaimKey *key)
{
	key->priority = -1;
	TIMESTAMP_NOBEGIN(key->next_run_at);
	key->id = PG_INT64_MIN;
}

/*
 * pgbq_floor_lookup
 *		The floor entry of (database, role), created on demand; NULL if the
 *		table is full (that role then claims from the front, as before).
 *		Caller holds the shared lock exclusively.
 */
static PgbqFloor *
pgbq_floor_lookup(Oid dboid, Oid roleoid, bool create)
{
	PgbqFloor  *freeent = NULL;
	int			i;

	for (i = 0; i < PGBQ_MAX_DEMANDS; i++)
	{
		PgbqFloor  *f = &pgbq_shared->floors[i];

		if (f->in_use && f->dboid == dboid && f->roleoid == roleoid)
			return f;
		if (!f->in_use && freeent == NULL)
			freeent = f;
	}
	if (!create || freeent == NULL)
		return NULL;
	memset(freeent, 0, sizeof(PgbqFloor));
	freeent->in_use = true;
	freeent->dboid = dboid;
	freeent->roleoid = roleoid;
	return freeent;
}

/*
 * pgbq_floor_reset
 *		Forget the floor (the claim starts from the front again) and make
 *		every advance in flight fail.
 */
static void
pgbq_floor_reset(PgbqFloor *f, Oid table_oid)
{
	f->table_oid = table_oid;
	f->valid = false;
	f->epoch += PGBQ_FLOOR_RING + 1;
}

/*
 * pgbq_floor_read
 *		Where the next claim of (database, role) in table_oid starts, and the
 *		floor's epoch to hand back to pgbq_floor_advance.  Call before the
 *		claim query takes its snapshot.  Returns the lowest key when there
 *		is no floor, or when a claim from the front is due.
 */
void
pgbq_floor_read(Oid dboid, Oid roleoid, Oid table_oid, PgbqClaimKey *key,
				uint64 *epoch)
{
	PgbqFloor  *f;
	TimestampTz now = GetCurrentTimestamp();

	pgbq_claim_key_lowest(key);
	*epoch = 0;
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	f = pgbq_floor_lookup(dboid, roleoid, true);
	if (f)
	{
		if (f->table_oid != table_oid)
			pgbq_floor_reset(f, table_oid);
		*epoch = f->epoch;
		if (TimestampDifferenceExceeds(f->last_front_scan, now,
									   PGBQ_FLOOR_FRONT_SCAN_MS))
			f->last_front_scan = now;
		else if (f->valid)
			*key = f->floor;
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_floor_advance
 *		Propose a new floor for (database, role): the first row that was
 *		still claimable in the claim's snapshot from where it started.
 */
void
pgbq_floor_advance(Oid dboid, Oid roleoid, Oid table_oid, uint64 epoch,
				   const PgbqClaimKey *proposal)
{
	PgbqFloor  *f;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	f = pgbq_floor_lookup(dboid, roleoid, false);
	if (f && f->table_oid == table_oid && f->epoch >= epoch &&
		f->epoch - epoch <= PGBQ_FLOOR_RING)
	{
		PgbqClaimKey key = *proposal;
		uint64		e;

		/* lowerings committed after the epoch was read */
		for (e = epoch + 1; e <= f->epoch; e++)
		{
			const PgbqClaimKey *low = &f->ring[e % PGBQ_FLOOR_RING];

			if (pgbq_claim_key_cmp(low, &key) < 0)
				key = *low;
		}
		f->floor = key;
		f->valid = true;
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_floor_lower
 *		A row with this key became claimable and committed: lower the floor
 *		of (database, role) to it.  Every lowering goes into the ring, even
 *		one above the floor (an advance in flight may be past it).
 */
static void
pgbq_floor_lower(Oid dboid, Oid roleoid, Oid table_oid, const PgbqClaimKey *key)
{
	PgbqFloor  *f;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	f = pgbq_floor_lookup(dboid, roleoid, false);
	if (f)
	{
		if (f->table_oid != table_oid)
			pgbq_floor_reset(f, table_oid);
		else
		{
			f->epoch++;
			f->ring[f->epoch % PGBQ_FLOOR_RING] = *key;
			if (f->valid && pgbq_claim_key_cmp(key, &f->floor) < 0)
				f->floor = *key;
		}
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_floor_register_callbacks
 *		Register the transaction callbacks, once per process.
 */
static void
pgbq_floor_register_callbacks(void)
{
	if (pgbq_floor_callback_registered)
		return;
	RegisterXactCallback(pgbq_floor_xact_callback, NULL);
	RegisterSubXactCallback(pgbq_floor_subxact_callback, NULL);
	pgbq_floor_callback_registered = true;
}

/*
 * pgbq_floor_publish_held
 *		Copy the ids of the rows held, from entry from on, to our slot's
 *		list, and a row just committed started (if not 0) to its
 *		started_id, in one critical section: such a row goes from the one
 *		list to the other without a moment in neither.  Nothing if the slot
 *		is no longer ours (the worker is on its way out: its list was
 *		emptied).
 */
static void
pgbq_floor_publish_held(int from, int64 started)
{
	PgbqSlot   *s;
	int			i;

	if (pgbq_floor_held_slotno < 0)
		return;
	s = &pgbq_shared->slots[pgbq_floor_held_slotno];
	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	if (s->pid == MyProcPid)
	{
		for (i = from; i < pgbq_floor_nheld; i++)
			s->held[i] = pgbq_floor_held[i].key.id;
		s->nheld = pgbq_floor_nheld;
		if (started != 0)
			s->started_id = started;
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_floor_hold
 *		A claim of this worker (slot slotno) locked the claimable row with
 *		this key, in the current transaction: list it, so that the claims
 *		of other workers may propose floors past it.  Not listed beyond
 *		PGBQ_SLOT_HELD_CLAIMS rows: such a row holds the floor back until
 *		the transaction ends.
 */
void
pgbq_floor_hold(int slotno, Oid roleoid, Oid table_oid,
				const PgbqClaimKey *key)
{
	PgbqFloorHeld *h;

	if (pgbq_shared == NULL || pgbq_floor_nheld >= PGBQ_SLOT_HELD_CLAIMS)
		return;
	/* one worker claims for one role from one table in a transaction */
	if (pgbq_floor_nheld > 0 &&
		(slotno != pgbq_floor_held_slotno || roleoid != pgbq_floor_held_role ||
		 table_oid != pgbq_floor_held_table))
		return;
	pgbq_floor_register_callbacks();
	pgbq_floor_held_slotno = slotno;
	pgbq_floor_held_role = roleoid;
	pgbq_floor_held_table = table_oid;
	h = &pgbq_floor_held[pgbq_floor_nheld++];
	h->key = *key;
	h->locked_in = GetCurrentSubTransactionId();
	h->started_in = InvalidSubTransactionId;
	pgbq_floor_publish_held(pgbq_floor_nheld - 1, 0);
}

/*
 * pgbq_floor_hold_started
 *		The held row id was marked running (or, a batch's task never marked
 *		running, finished) in the current subtransaction: if that commits,
 *		the row is not claimable any more.
 */
void
pgbq_floor_hold_started(int64 id)
{
	int			i;

	for (i = 0; i < pgbq_floor_nheld; i++)
		if (pgbq_floor_held[i].key.id == id &&
			pgbq_floor_held[i].started_in == InvalidSubTransactionId)
			pgbq_floor_held[i].started_in = GetCurrentSubTransactionId();
}

/*
 * pgbq_floor_slot_of
 *		Whether slot s is a task worker of (database, role), whose held and
 *		started rows count for that pair's floor.  Caller holds the lock.
 */
static inline bool
pgbq_floor_slot_of(const PgbqSlot *s, Oid dboid, Oid roleoid)
{
	return s->state != PGBQ_SLOT_FREE && s->kind == PGBQ_KIND_TASK &&
		s->dboid == dboid && s->roleoid == roleoid;
}

/*
 * pgbq_floor_hold_unstarted
 *		The held row id, marked running in this transaction, failed an
 *		attempt in it and is retrying (a task of a batch): claimable again
 *		once this commits, so not a started row (see pgbq_floor_span_settled);
 *		its commit lowers the floor to it like a row never marked.
 */
void
pgbq_floor_hold_unstarted(int64 id)
{
	int			i;

	for (i = 0; i < pgbq_floor_nheld; i++)
		if (pgbq_floor_held[i].key.id == id)
			pgbq_floor_held[i].started_in = InvalidSubTransactionId;
}

/*
 * pgbq_floor_span_bit
 *		The bit of id in a mask of the PGBQ_FLOOR_SPAN ids from start on, or
 *		0 outside them.  Unsigned arithmetic: start may be the lowest key's
 *		PG_INT64_MIN.
 */
static inline uint64
pgbq_floor_span_bit(int64 start, int64 id)
{
	uint64		d = (uint64) id - (uint64) start;

	if (id < start || d >= PGBQ_FLOOR_SPAN)
		return 0;
	return UINT64CONST(1) << d;
}

/*
 * pgbq_floor_span_settled
 *		Whether the floor check after a claim (pgbq_floor_propose) would
 *		propose found itself: whether no row of (database, role) with a
 *		claim key in [start, found) is claimable and not held.  Answered
 *		from the slots alone, and only when that is certain: start and found
 *		share priority and next_run_at and lie at most PGBQ_FLOOR_SPAN ids
 *		apart, so that the only keys in between are those of the ids in
 *		between, and a worker of the role lists every one of those ids as
 *		held (what the check leaves out) or as its started_id.  Otherwise
 *		(false) the caller runs the check.
 *
 *		A started_id is a row that a worker's committed transaction marked
 *		running or finished; the worker clears it, under the same lock,
 *		before any transaction of its own that could make the row claimable
 *		again commits (a give-back, a failed attempt: pgbq_slot_finish_task
 *		runs before their commit; a batch's task that failed in the batch's
 *		transaction is no started row: pgbq_floor_hold_unstarted).  A row
 *		rolled back to claimable was never a started_id (only commits set
 *		it).  What no worker announces is an administrator's UPDATE of a
 *		running row back to pending with its old next_run_at: a floor
 *		proposed past it meanwhile is caught by the front scan
 *		(PGBQ_FLOOR_FRONT_SCAN_MS), as for a disabled trigger.
 *
 *		With workers claiming consecutive ids, the rows between the floor
 *		and the next claimable row are those the other workers claimed just
 *		before, held or running: the usual claim skips the check's index
 *		scan (about a tenth of a worker's CPU per task at 8 workers).
 */
bool
pgbq_floor_span_settled(Oid dboid, Oid roleoid, const PgbqClaimKey *start,
						const PgbqClaimKey *found)
{
	uint64		seen = 0;
	uint64		want;
	uint64		span = (uint64) found->id - (uint64) start->id;
	int			i;

	if (start->priority != found->priority ||
		start->next_run_at != found->next_run_at ||
		found->id < start->id || span > PGBQ_FLOOR_SPAN)
		return false;
	if (span == 0)
		return true;			/* nothing lies in [found, found) */
	StaticAssertStmt(PGBQ_FLOOR_SPAN <= 64, "the span's ids are bits of a uint64");
	want = (span == 64) ? ~UINT64CONST(0) : (UINT64CONST(1) << span) - 1;
	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	for (i = 0; i < pgbq_shared->nslots && (seen & want) != want; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];
		int			j;

		if (!pgbq_floor_slot_of(s, dboid, roleoid))
			continue;
		for (j = 0; j < s->nheld; j++)
			seen |= pgbq_floor_span_bit(start->id, s->held[j]);
		if (s->started_id != 0)
			seen |= pgbq_floor_span_bit(start->id, s->started_id);
	}
	LWLockRelease(pgbq_shared->lock);
	return (seen & want) == want;
}

/*
 * pgbq_floor_held_ids
 *		The ids every worker of (database, role) lists as held, for the
 *		claim's floor proposal to pass, and for the claim itself to leave
 *		out; after the nextra ids extra.  If more than max_held (>= 0) are
 *		held, none of them: just the extra ids.
 *
 *		With from (a claim's floor), also *settled_to: the first id at or
 *		after from->id that no worker of the role lists as held or as its
 *		started_id, looking at most PGBQ_FLOOR_SPAN ids ahead.  No row of
 *		the role with from's priority and next_run_at and an id in between
 *		is claimable and unheld, by the argument of pgbq_floor_span_settled
 *		(the same exception included), so the claim may start its scan
 *		there instead of walking those rows: its index entries and heap
 *		tuples are the ones every other worker's claim is reading and
 *		writing.  A row let go after this look is claimed by a later claim
 *		(its commit lowers the floor), as when it is let go just after the
 *		claim's snapshot.
 */
ArrayType *
pgbq_floor_held_ids(Oid dboid, Oid roleoid, const int64 *extra, int nextra,
					int max_held, const PgbqClaimKey *from, int64 *settled_to)
{
	Datum	   *ids;
	int			n = 0;
	int			i;
	uint64		seen = 0;

	ids = palloc(sizeof(Datum) *
				 (pgbq_shared->nslots * PGBQ_SLOT_HELD_CLAIMS + nextra));
	for (i = 0; i < nextra; i++)
		ids[n++] = Int64GetDatum(extra[i]);
	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];
		int			j;

		if (!pgbq_floor_slot_of(s, dboid, roleoid))
			continue;
		for (j = 0; j < s->nheld; j++)
		{
			ids[n++] = Int64GetDatum(s->held[j]);
			if (from != NULL)
				seen |= pgbq_floor_span_bit(from->id, s->held[j]);
		}
		if (from != NULL && s->started_id != 0)
			seen |= pgbq_floor_span_bit(from->id, s->started_id);
	}
	LWLockRelease(pgbq_shared->lock);
	if (from != NULL)
		*settled_to = from->id + (~seen == 0 ? PGBQ_FLOOR_SPAN :
								  pg_rightmost_one_pos64(~seen));
	if (max_held >= 0 && n - nextra > max_held)
		n = nextra;
	return construct_array(ids, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
						   TYPALIGN_DOUBLE);
}

/*
 * pgbq_floor_let_go
 *		Take held rows out of the slot's list, then lower the floor to those
 *		that may be claimable again (in this order: see the top of the
 *		file).  At the end of the transaction (sub is Invalid) every row
 *		goes: on commit the rows neither marked running nor finished are
 *		lowered to, on rollback all of them.  When subtransaction sub rolls back, the rows
 *		it locked go and are lowered to, and the running marks it made are
 *		forgotten.
 */
static void
pgbq_floor_let_go(bool committed, SubTransactionId sub)
{
	PgbqClaimKey low;
	bool		lower = false;
	int			kept = 0;
	int64		started = 0;
	int			i;

	for (i = 0; i < pgbq_floor_nheld; i++)
	{
		PgbqFloorHeld *h = &pgbq_floor_held[i];
		bool		goes;
		bool		claimable;

		if (sub != InvalidSubTransactionId)
		{
			if (h->started_in != InvalidSubTransactionId && h->started_in >= sub)
				h->started_in = InvalidSubTransactionId;
			/* subtransaction ids grow: >= sub is sub or one inside it */
			goes = (h->locked_in >= sub);
			claimable = goes;
		}
		else
		{
			goes = true;
			claimable = !committed || h->started_in == InvalidSubTransactionId;
			if (!claimable)
				started = h->key.id;
		}
		if (claimable && (!lower || pgbq_claim_key_cmp(&h->key, &low) < 0))
		{
			low = h->key;
			lower = true;
		}
		if (!goes)
			pgbq_floor_held[kept++] = *h;
	}
	if (kept == pgbq_floor_nheld)
		return;
	pgbq_floor_nheld = kept;
	pgbq_floor_publish_held(0, started);	/* the kept ones may have moved */
	if (lower)
		pgbq_floor_lower(MyDatabaseId, pgbq_floor_held_role,
						 pgbq_floor_held_table, &low);
}

/*
 * pgbq_floor_subxact_callback
 *		A subtransaction rolled back: let go of the rows it locked.
 */
static void
pgbq_floor_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							SubTransactionId parentSubid, void *arg)
{
	(void) parentSubid;
	(void) arg;
	if (event == SUBXACT_EVENT_ABORT_SUB && pgbq_floor_nheld > 0 &&
		pgbq_shared != NULL)
		pgbq_floor_let_go(false, mySubid);
}

/*
 * pgbq_floor_reset_database
 *		Forget every floor of a database (more roles lowered in one
 *		transaction than we keep track of).
 */
static void
pgbq_floor_reset_database(Oid dboid)
{
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < PGBQ_MAX_DEMANDS; i++)
	{
		PgbqFloor  *f = &pgbq_shared->floors[i];

		if (f->in_use && f->dboid == dboid)
			pgbq_floor_reset(f, f->table_oid);
	}
	LWLockRelease(pgbq_shared->lock);
}

/*
 * pgbq_floor_xact_callback
 *		Lower the floors once the transaction's rows are visible: after the
 *		commit, never before (a claim in between would advance past them).
 *		A prepared transaction commits later, elsewhere: its rows wait for
 *		a claim from the front.
 */
static void
pgbq_floor_xact_callback(XactEvent event, void *arg)
{
	int			i;

	(void) arg;
	if (pgbq_floor_nheld > 0 && pgbq_shared != NULL &&
		(event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		 event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE))
		pgbq_floor_let_go(event == XACT_EVENT_COMMIT, InvalidSubTransactionId);
	if (event == XACT_EVENT_COMMIT && pgbq_shared != NULL)
	{
		if (pgbq_floor_overflow)
			pgbq_floor_reset_database(MyDatabaseId);
		else
			for (i = 0; i < pgbq_floor_npending; i++)
				pgbq_floor_lower(MyDatabaseId, pgbq_floor_pending[i].roleoid,
								 pgbq_floor_pending[i].table_oid,
								 &pgbq_floor_pending[i].key);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PREPARE)
	{
		pgbq_floor_npending = 0;
		pgbq_floor_overflow = false;
	}
}

/*
 * pgbq_floor_note
 *		Remember a claimable row's key for the floor lowering at commit.
 */
static void
pgbq_floor_note(Oid roleoid, Oid table_oid, const PgbqClaimKey *key)
{
	int			i;

	pgbq_floor_register_callbacks();
	for (i = 0; i < pgbq_floor_npending; i++)
	{
		PgbqFloorPending *p = &pgbq_floor_pending[i];

		if (p->roleoid == roleoid && p->table_oid == table_oid)
		{
			if (pgbq_claim_key_cmp(key, &p->key) < 0)
				p->key = *key;
			return;
		}
	}
	if (pgbq_floor_npending >= PGBQ_FLOOR_PENDING_ROLES)
	{
		pgbq_floor_overflow = true;
		return;
	}
	pgbq_floor_pending[pgbq_floor_npending].roleoid = roleoid;
	pgbq_floor_pending[pgbq_floor_npending].table_oid = table_oid;
	pgbq_floor_pending[pgbq_floor_npending].key = *key;
	pgbq_floor_npending++;
}

/*
 * pgbq_floor_state_oids_load
 *		Look up the OIDs of the task state labels of enum type typid (cached
 *		until the type changes: a new extension, a new type).  A label the
 *		type lacks stays InvalidOid.
 */
static void
pgbq_floor_state_oids_load(Oid typid)
{
	static const char *const labels[PGBQ_STATE_LABELS] = {
		"pending", "retrying", "finished", "failed", "cancelled"
	};
	int			i;

	if (pgbq_state_oids.typid == typid)
		return;
	for (i = 0; i < PGBQ_STATE_LABELS; i++)
		pgbq_state_oids.label[i] = GetSysCacheOid2(ENUMTYPOIDNAME,
												   Anum_pg_enum_oid,
												   ObjectIdGetDatum(typid),
												   CStringGetDatum(labels[i]));
	pgbq_state_oids.typid = typid;
}

/*
 * pgbq_floor_row_state
 *		The state of a row of the task table, as an index into the labels
 *		of pgbq_floor_state_oids_load, or -1 for any other state.
 */
static int
pgbq_floor_row_state(Relation rel, HeapTuple tuple)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	AttrNumber	attnum = pgbq_floor_attnum(rel, "state");
	Datum		d;
	bool		isnull;
	int			i;

	d = heap_getattr(tuple, attnum, tupdesc, &isnull);
	if (isnull)
		return -1;
	pgbq_floor_state_oids_load(TupleDescAttr(tupdesc, attnum - 1)->atttypid);
	for (i = 0; i < PGBQ_STATE_LABELS; i++)
		if (OidIsValid(pgbq_state_oids.label[i]) &&
			pgbq_state_oids.label[i] == DatumGetObjectId(d))
			return i;
	return -1;
}

/*
 * pgbq_floor_note_row
 *		Note the key of a row of the task table whose state (state, from
 *		pgbq_floor_row_state) after the statement is claimable (pending or
 *		retrying), for the lowering at commit.
 */
static void
pgbq_floor_note_row(Relation rel, HeapTuple tuple, int state)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	PgbqClaimKey key;
	Datum		d;
	bool		isnull;
	Oid			roleoid;

	/* without the preload no worker claims here: nothing to lower */
	if (pgbq_shared == NULL)
		return;
	if (state != PGBQ_STATE_PENDING && state != PGBQ_STATE_RETRYING)
		return;

	/* a NULL is left to the NOT NULL checks, which reject the row */
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "owner"), tupdesc, &isnull);
	if (isnull)
		return;
	roleoid = DatumGetObjectId(d);
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "priority"), tupdesc, &isnull);
	if (isnull)
		return;
	key.priority = DatumGetInt32(d);
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "next_run_at"), tupdesc, &isnull);
	if (isnull)
		return;
	key.next_run_at = DatumGetTimestampTz(d);
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "id"), tupdesc, &isnull);
	if (isnull)
		return;
	key.id = DatumGetInt64(d);
	pgbq_floor_note(roleoid, RelationGetRelid(rel), &key);
}

/*
 * pg_background_queue_claimable
 *		Row trigger of the task table that notes every row claimable after
 *		the statement, so that the claim floor is lowered to its key at
 *		commit.  1.4 fires it BEFORE INSERT, for every row (the state is
 *		checked here: a WHEN clause is compiled again by every statement);
 *		1.3 fired it BEFORE INSERT OR UPDATE WHEN the new state is claimable.
 *		UPDATEs are seen by pg_background_queue_task_changed from 1.4 on.
 */
Datum
pg_background_queue_claimable(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		  TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("pg_background_queue_claimable must be fired as a BEFORE INSERT OR UPDATE row trigger")));
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	pgbq_floor_note_row(trigdata->tg_relation, tuple,
						pgbq_floor_row_state(trigdata->tg_relation, tuple));
	return PointerGetDatum(tuple);
}

/*
 * pg_background_queue_task_changed
 *		AFTER UPDATE row trigger of the task table (1.4), fired for every
 *		row, without a WHEN clause.  It replaces two triggers of 1.3 whose
 *		cost every statement of the workers paid although neither fired for
 *		them: a BEFORE trigger locks the row before the UPDATE writes it
 *		(one more WAL record), and every WHEN clause is read and planned
 *		again for each statement.  What they did:
 *
 *		- a row claimable after the UPDATE (a retry, a give-back, a released
 *		  dependent, a reschedule, an administrator's UPDATE): note its key
 *		  for the claim floor (pg_background_queue_claimable for 1.3);
 *		- a task with dependents that ended (finished, failed or cancelled,
 *		  and was not before): release or cancel its waiting dependents with
 *		  _pg_background_queue_after_end, the trigger function of 1.2 and
 *		  1.3, called here with this trigger's data (so with the same OLD
 *		  and NEW, at the same point: the end of the statement).
 */
Datum
pg_background_queue_task_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	int			new_state;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("pg_background_queue_task_changed must be fired as an AFTER UPDATE row trigger")));
	rel = trigdata->tg_relation;
	new_state = pgbq_floor_row_state(rel, trigdata->tg_newtuple);
	pgbq_floor_note_row(rel, trigdata->tg_newtuple, new_state);

	if ((new_state == PGBQ_STATE_FINISHED || new_state == PGBQ_STATE_FAILED ||
		 new_state == PGBQ_STATE_CANCELLED) &&
		pgbq_floor_row_state(rel, trigdata->tg_trigtuple) != new_state)
	{
		Datum		d;
		bool		isnull;

		d = heap_getattr(trigdata->tg_trigtuple,
						 pgbq_floor_attnum(rel, "has_dependents"),
						 RelationGetDescr(rel), &isnull);
		if (!isnull && DatumGetBool(d))
			pgbq_release_dependents(trigdata);
	}
	return PointerGetDatum(NULL);
}
