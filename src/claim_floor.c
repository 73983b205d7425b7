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
 * role has a claim key >= the floor.  It is kept by two moves:
 *
 *	- lowering: a row becomes claimable (INSERT, or an UPDATE to pending or
 *	  retrying: retries, give-backs, released dependents, reschedules, an
 *	  administrator's UPDATE) only through the table's claimable trigger,
 *	  which notes the row's key; once the transaction has committed, the
 *	  floor is lowered to it (never raised) and the floor's epoch bumped.
 *
 *	- advancing: a worker reads the floor and its epoch BEFORE the claim
 *	  query takes its snapshot, claims the first eligible row R from there,
 *	  and proposes as the new floor the first row still claimable in its
 *	  snapshot between the old floor and R (rows delayed until later, rows
 *	  locked by another claim), or R itself.  A row its snapshot could not
 *	  see committed after the epoch was read, so its lowering is in the
 *	  floor's ring of recent lowerings: the floor becomes the minimum of the
 *	  proposal and every lowering since the epoch read.  If the ring no
 *	  longer covers them all, the floor is left as it is.
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
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_relation.h"
#include "storage/lwlock.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "pgbq.h"

PG_FUNCTION_INFO_V1(pg_background_queue_claimable);

/* A claim from the front of the index at least this often per role. */
#define PGBQ_FLOOR_FRONT_SCAN_MS	1000

/* Roles whose floor one transaction can lower before lowering them all. */
#define PGBQ_FLOOR_PENDING_ROLES	16

typedef struct PgbqFloorPending
{
	Oid			roleoid;
	Oid			table_oid;
	PgbqClaimKey key;
} PgbqFloorPending;

static PgbqFloorPending pgbq_floor_pending[PGBQ_FLOOR_PENDING_ROLES];
static int	pgbq_floor_npending = 0;
static bool pgbq_floor_overflow = false;
static bool pgbq_floor_callback_registered = false;

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

	if (!pgbq_floor_callback_registered)
	{
		RegisterXactCallback(pgbq_floor_xact_callback, NULL);
		pgbq_floor_callback_registered = true;
	}
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
 * pg_background_queue_claimable
 *		BEFORE INSERT OR UPDATE row trigger of the task table, fired (WHEN)
 *		for rows that are claimable after the statement: note the row's
 *		claim key so that the claim floor is lowered to it at commit.
 */
Datum
pg_background_queue_claimable(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	tupdesc;
	Relation	rel;
	PgbqClaimKey key;
	Datum		d;
	bool		isnull;
	Oid			roleoid;

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
	rel = trigdata->tg_relation;
	tupdesc = RelationGetDescr(rel);

	/* without the preload no worker claims here: nothing to lower */
	if (pgbq_shared == NULL)
		return PointerGetDatum(tuple);

	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "owner"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(tuple);	/* the NOT NULL check rejects it */
	roleoid = DatumGetObjectId(d);
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "priority"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(tuple);
	key.priority = DatumGetInt32(d);
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "next_run_at"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(tuple);
	key.next_run_at = DatumGetTimestampTz(d);
	d = heap_getattr(tuple, pgbq_floor_attnum(rel, "id"), tupdesc, &isnull);
	if (isnull)
		return PointerGetDatum(tuple);
	key.id = DatumGetInt64(d);
	pgbq_floor_note(roleoid, RelationGetRelid(rel), &key);
	return PointerGetDatum(tuple);
}
