/*-------------------------------------------------------------------------
 *
 * worker_bookkeeping.c
 *	  A task worker's writes about its tasks: the claim (alone or fused into
 *	  the previous task's commit), the finished mark, recording a failed or
 *	  cancelled attempt, giving a task back, and the demand it settles.  All
 *	  of it runs in the fixed baseline of pgbq_start_bookkeeping_xact /
 *	  pgbq_pin_bookkeeping_settings, as the task table's owner.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"
#include "task_rows.h"
#include "worker_int.h"

/*
 * A batch keeps the results of its tasks for its end up to this many bytes
 * in all; a task whose result would go over is marked finished at once.
 */
#define PGBQ_BATCH_DEFERRED_RESULT_BYTES	(8 * 1024 * 1024)

/* Pause between attempts to record a task's end after an error. */
#define PGBQ_BOOKKEEPING_RETRY_MS	1000

/* Pause after a claim failed with an error (logged) before the next try. */
#define PGBQ_CLAIM_ERROR_BACKOFF_MS	1000

/*
 * A claim skips at most this many tasks held back by a topic limit before
 * it gives up for now (each skipped topic is excluded from the next round).
 */
#define PGBQ_CLAIM_ROUNDS			32

static bool pgbq_first_claim = true;
static PgbqCatalog pgbq_cat;

/*
 * The bookkeeping statements, prepared once per task table (pgbq_worker_
 * plans).  The *_RESULT ones exist only with 1.3's objects (NULL before).
 * MARK and FINISH find the row by the row version known to be the task's
 * (the one the claim locked, the one the running mark wrote: a TID scan);
 * MARK_BY_ID and FINISH_BY_ID, by id, are the fallback when that version
 * is gone.
 */
typedef enum PgbqPlanId
{
	PGBQ_PLAN_CLAIM,
	PGBQ_PLAN_MARK,
	PGBQ_PLAN_MARK_BY_ID,
	PGBQ_PLAN_FINISH,
	PGBQ_PLAN_FINISH_BY_ID,
	PGBQ_PLAN_FINISH_RESULT,
	PGBQ_PLAN_FINISH_RESULT_BY_ID,
	PGBQ_PLAN_NEXT_ELIGIBLE,
	PGBQ_PLAN_FLOOR_CHECK,
	PGBQ_PLAN_FINISH_CLAIMED,
	PGBQ_PLAN_FINISH_CLAIMED_RESULT,
	PGBQ_PLAN_FINISH_MANY,
	PGBQ_PLAN_FINISH_MANY_RESULT,
	PGBQ_NPLANS
} PgbqPlanId;

static SPIPlanPtr pgbq_plans[PGBQ_NPLANS];

/*
 * The finished marks of a batch's unmarked tasks, written by one statement
 * at the batch's end (pgbq_batch_finish_deferred), in the batch's
 * transaction, so that each still commits with its task's effects.  The
 * arrays live in TopTransactionContext (an abort frees them);
 * pgbq_batch_ndeferred counts the entries, pgbq_batch_maxdeferred the room
 * (0: none allocated in this transaction), pgbq_batch_deferred_bytes the
 * size of the results they keep (bounded: see pgbq_batch_defer_finish).
 * Their claims' row locks keep the rows as they were until then: the
 * batch's own claims, which do not skip what their transaction locked,
 * leave them out (pgbq_claim_left_out).  Only the worker's own batch
 * loop touches them: pgbq_run_batch forgets them when the batch begins and
 * when it rolls back, pgbq_run_in_subxact forgets a task's entry when its
 * subtransaction rolls back.
 */
typedef struct PgbqDeferredFinish
{
	int64		id;
	TimestampTz started_at;
	TimestampTz closed_at;
	Datum		result;			/* jsonb, in TopTransactionContext */
	bool		has_result;
	bool		truncated;
} PgbqDeferredFinish;

static ArrayType *pgbq_claim_left_out(Oid roleoid, PgbqClaimKey *scan_from);

/* Held rows of other workers a claim leaves out, at most (see there). */
#define PGBQ_CLAIM_LEFT_OUT_HELD	16

static PgbqDeferredFinish *pgbq_batch_deferred = NULL;
static int	pgbq_batch_ndeferred = 0;
static int	pgbq_batch_maxdeferred = 0;
static Size pgbq_batch_deferred_bytes = 0;	/* their results' size */

/*
 * pgbq_plan_statement
 *		The text and parameter types of bookkeeping statement id for the
 *		task table of cat; NULL if these objects have no such statement
 *		(the *_RESULT ones before 1.3).
 */
static char *
pgbq_plan_statement(const PgbqCatalog *cat, PgbqPlanId id, int *nargs,
					Oid *types)
{
	static const Oid claim_types[] = {OIDOID, TIMESTAMPTZOID, TEXTARRAYOID,
	INT4OID, TIMESTAMPTZOID, INT8OID, INT8ARRAYOID};
	static const Oid mark_types[] = {INT8OID, TIMESTAMPTZOID, INT4OID, TIDOID};
	static const Oid finish_types[] = {INT8OID, TIMESTAMPTZOID, INT4OID, TIDOID};
	static const Oid finish_result_types[] = {INT8OID, TIMESTAMPTZOID, INT4OID,
	JSONBOID, BOOLOID, TIDOID};
	static const Oid claimed_types[] = {INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	JSONBOID, BOOLOID};
	static const Oid next_types[] = {OIDOID, INT4OID, TIMESTAMPTZOID, INT8OID};
	static const Oid check_types[] = {OIDOID, INT4OID, TIMESTAMPTZOID, INT8OID,
	INT8ARRAYOID};
	static const Oid many_types[] = {INT8ARRAYOID, TIMESTAMPTZARRAYOID,
	TIMESTAMPTZARRAYOID, JSONBARRAYOID, BOOLARRAYOID};
	/* in PgbqPlanId's order */
	static const int nargs_of[PGBQ_NPLANS] = {7, 4, 3, 4, 3, 6, 5, 4, 5, 3, 5, 3, 5};
	bool		result = (id == PGBQ_PLAN_FINISH_RESULT ||
						  id == PGBQ_PLAN_FINISH_RESULT_BY_ID ||
						  id == PGBQ_PLAN_FINISH_CLAIMED_RESULT ||
						  id == PGBQ_PLAN_FINISH_MANY_RESULT);
	bool		by_tid = (id == PGBQ_PLAN_MARK || id == PGBQ_PLAN_FINISH ||
						  id == PGBQ_PLAN_FINISH_RESULT);
	const Oid  *t;
	char	   *sql;

	if (result && !cat->has_results)
		return NULL;
	switch (id)
	{
		case PGBQ_PLAN_CLAIM:
			/* from the claim floor ($4, $5, $6; see claim_floor.c) */
			sql = pgbq_sql_claim(cat);
			t = claim_types;
			break;
		case PGBQ_PLAN_MARK:
		case PGBQ_PLAN_MARK_BY_ID:
			sql = pgbq_sql_mark_running(cat, by_tid);
			t = mark_types;
			break;
		case PGBQ_PLAN_FINISH:
		case PGBQ_PLAN_FINISH_BY_ID:
		case PGBQ_PLAN_FINISH_RESULT:
		case PGBQ_PLAN_FINISH_RESULT_BY_ID:
			/* with the result: a task whose statements returned rows */
			sql = pgbq_sql_finish(cat, result, by_tid);
			t = result ? finish_result_types : finish_types;
			break;
		case PGBQ_PLAN_NEXT_ELIGIBLE:
			sql = pgbq_sql_claim_next(cat);
			t = next_types;
			break;
		case PGBQ_PLAN_FLOOR_CHECK:
			/* the first row still claimable between the floor and the claimed */
			sql = pgbq_sql_claim_check(cat);
			t = check_types;
			break;
		case PGBQ_PLAN_FINISH_CLAIMED:
		case PGBQ_PLAN_FINISH_CLAIMED_RESULT:
			/* the tasks of a batch after its first */
			sql = pgbq_sql_finish_claimed(cat, result);
			t = claimed_types;
			break;
		case PGBQ_PLAN_FINISH_MANY:
		case PGBQ_PLAN_FINISH_MANY_RESULT:
			/* their finished marks, written together at the batch's end */
			sql = pgbq_sql_finish_claimed_many(cat, result);
			t = many_types;
			break;
		default:
			elog(ERROR, "unknown bookkeeping statement %d", (int) id);
	}
	*nargs = nargs_of[id];
	memcpy(types, t, sizeof(Oid) * *nargs);
	return sql;
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
	SPIPlanPtr	prepared[PGBQ_NPLANS] = {0};
	Oid			save_userid;
	int			save_sec;
	int			nest;
	int			i;

	/*
	 * Lock the table by OID before using it by name, then check that it
	 * still exists: a DROP EXTENSION that commits while we wait for the lock
	 * must not send us to another table of the same name.
	 */
	if (OidIsValid(pgbq_cat.table_oid))
	{
		LockRelationOid(pgbq_cat.table_oid, RowShareLock);

		/*
		 * ALTER EXTENSION ... UPDATE to 1.3 keeps the table but adds the
		 * result column: prepare the plans again to fill it from then on.
		 */
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(pgbq_cat.table_oid)) &&
			(pgbq_cat.has_results ||
			 get_attnum(pgbq_cat.table_oid, "result") == InvalidAttrNumber))
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
	PG_TRY();
	{
		for (i = 0; i < PGBQ_NPLANS; i++)
		{
			Oid			types[8];
			int			nargs;
			char	   *sql = pgbq_plan_statement(&cat, (PgbqPlanId) i,
												  &nargs, types);
			SPIPlanPtr	plan;

			if (sql == NULL)
				continue;
			plan = SPI_prepare(sql, nargs, types);
			if (plan == NULL)
				elog(ERROR, "could not prepare \"%s\": %s", sql,
					 SPI_result_code_string(SPI_result));
			if (SPI_keepplan(plan) != 0)
				elog(ERROR, "could not keep plan");
			prepared[i] = plan;
		}
	}
	PG_CATCH();
	{
		/* kept plans are not freed by the abort */
		for (i = 0; i < PGBQ_NPLANS; i++)
			if (prepared[i])
				SPI_freeplan(prepared[i]);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pgbq_end_privileged(nest, save_userid, save_sec);

	for (i = 0; i < PGBQ_NPLANS; i++)
	{
		if (pgbq_plans[i])
			SPI_freeplan(pgbq_plans[i]);
		pgbq_plans[i] = prepared[i];
	}
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
void
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
 * pgbq_floor_first_unheld
 *		The floor check: the first row of role roleoid still claimable from
 *		start on that no slot lists as held, read in a snapshot taken now
 *		(after the claim).  Returns false if there is none.
 */
static bool
pgbq_floor_first_unheld(Oid roleoid, const PgbqClaimKey *start,
						PgbqClaimKey *first)
{
	Datum		args[5];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	int			rc;

	args[0] = ObjectIdGetDatum(roleoid);
	args[1] = Int32GetDatum(start->priority);
	args[2] = TimestampTzGetDatum(start->next_run_at);
	args[3] = Int64GetDatum(start->id);
	args[4] = PointerGetDatum(pgbq_floor_held_ids(MyDatabaseId, roleoid,
													  NULL, 0, -1, NULL, NULL));
	rc = SPI_execute_plan(pgbq_plans[PGBQ_PLAN_FLOOR_CHECK], args, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "claim floor check failed: %s", SPI_result_code_string(rc));
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	first->priority = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
	first->next_run_at = DatumGetTimestampTz(SPI_getbinval(tup, desc, 2, &isnull));
	first->id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	return true;
}

/*
 * pgbq_floor_propose
 *		After the first claim round found the row at key found (claimed or
 *		held back by a topic limit), starting at start: propose the first
 *		row still claimable in between that no worker holds (delayed, of a
 *		held-back topic, locked by a claim not listed yet), or found itself,
 *		as the role's new claim floor.  The check reads the first such row
 *		from start on, in a snapshot taken after the claim: one before found
 *		is the proposal.  When the slots show that no such row can lie in
 *		between (pgbq_floor_span_settled), found is proposed without it.
 */
static void
pgbq_floor_propose(Oid roleoid, const PgbqClaimKey *start, uint64 epoch,
				   const PgbqClaimKey *found)
{
	PgbqClaimKey proposal = *found;
	PgbqClaimKey first;

	if (!pgbq_floor_span_settled(MyDatabaseId, roleoid, start, found) &&
		pgbq_floor_first_unheld(roleoid, start, &first) &&
		pgbq_claim_key_cmp(&first, found) < 0)
		proposal = first;
	pgbq_floor_advance(MyDatabaseId, roleoid, pgbq_cat.table_oid, epoch,
					   &proposal);
}

/*
 * pgbq_mark_running
 *		Mark a task claimed in the current transaction running, counting
 *		its attempt (caller is inside SPI and a privileged section).
 */
static void
pgbq_mark_running(PgbqTask *task)
{
	Datum		args[4];
	bool		isnull;
	int			rc;

	args[0] = Int64GetDatum(task->id);
	args[1] = TimestampTzGetDatum(task->claimed_at);
	args[2] = Int32GetDatum(MyProcPid);
	args[3] = PointerGetDatum(&task->claimed_tid);

	/*
	 * The claim locked that version in this transaction, so it is the row's
	 * current one; by id only as a safeguard.
	 */
	rc = SPI_execute_plan(pgbq_plans[PGBQ_PLAN_MARK], args, NULL, false, 1);
	if (rc == SPI_OK_UPDATE_RETURNING && SPI_processed == 0)
		rc = SPI_execute_plan(pgbq_plans[PGBQ_PLAN_MARK_BY_ID], args, NULL,
							  false, 1);
	if (rc != SPI_OK_UPDATE_RETURNING || SPI_processed != 1)
		elog(ERROR, "could not mark task " INT64_FORMAT " running", task->id);
	task->running_tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0],
																	 SPI_tuptable->tupdesc,
																	 1, &isnull));
	pgbq_floor_hold_started(task->id);
	task->unmarked = false;
}

/*
 * pgbq_claim
 *		Claim the next eligible task of our role, in the current transaction
 *		(caller is inside SPI and a privileged section).  Returns NULL if
 *		none can start now; *wait_until is then the earliest time one might
 *		(0 if unknown), *blocked whether a limit held a task back.
 *
 *		The topics known to be held back (paused, full, rate-limited:
 *		pgbq_slot_held_back_topics) are left out from the first round, so
 *		that the claim locks no row of theirs only to be refused it (which
 *		would make other claims skip that row).  A topic refused by
 *		pgbq_slot_try_start all the same (it filled up meanwhile) is left
 *		out of the next round.
 *
 *		A claim in the batch of task batch leaves a task of the batch's
 *		topic unmarked (see below); any other task is marked running.
 */
static PgbqTask *
pgbq_claim(TimestampTz *wait_until, bool *blocked, const PgbqTask *batch)
{
	List	   *skipped;
	List	   *held;
	TimestampTz held_until;
	int			round;
	Oid			roleoid = pgbq_shared->slots[pgbq_slotno].roleoid;
	PgbqClaimKey start;
	PgbqClaimKey scan_from;
	uint64		epoch = 0;
	Datum		left_out;

	*wait_until = 0;
	*blocked = false;
	held = pgbq_slot_held_back_topics(pgbq_slotno, GetCurrentTimestamp(),
									  &held_until);
	skipped = list_copy(held);

	/*
	 * Read the floor before the claim query takes its snapshot (see
	 * claim_floor.c).  SQL objects older than 1.3 have no trigger to lower
	 * it: claim from the front, as before.
	 */
	if (pgbq_cat.has_claim_floor)
		pgbq_floor_read(MyDatabaseId, roleoid, pgbq_cat.table_oid, &start,
						&epoch);
	else
		pgbq_claim_key_lowest(&start);

	/*
	 * The same for every round: no task of the batch ends in between, and
	 * a row held then and let go since is one this claim may skip.  The
	 * scan starts past the rows just after the floor that workers hold or
	 * run (scan_from: see pgbq_floor_held_ids).
	 */
	scan_from = start;
	left_out = PointerGetDatum(pgbq_claim_left_out(roleoid, &scan_from));

	for (round = 0; round < PGBQ_CLAIM_ROUNDS; round++)
	{
		Datum		args[7];
		bool		isnull;
		int64		id;
		char	   *topic = NULL;
		char	   *prev_state;
		char	   *sql;
		bool		keyed;
		ItemPointerData tid;
		PgbqTopicPolicy policy;
		PgbqStartResult res;
		PgbqClaimKey found;
		TimestampTz now = GetCurrentTimestamp();
		TimestampTz retry_at;
		int			rc;

		args[0] = ObjectIdGetDatum(roleoid);
		args[1] = TimestampTzGetDatum(now);
		args[2] = pgbq_text_array(skipped);
		args[3] = Int32GetDatum(scan_from.priority);
		args[4] = TimestampTzGetDatum(scan_from.next_run_at);
		args[5] = Int64GetDatum(scan_from.id);
		args[6] = left_out;
		rc = SPI_execute_plan(pgbq_plans[PGBQ_PLAN_CLAIM], args, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "claim failed: %s", SPI_result_code_string(rc));
		if (SPI_processed == 0)
			break;
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
		topic = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		prev_state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
		/* read before the floor check replaces SPI_tuptable */
		sql = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 6);
		keyed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 7, &isnull));
		tid = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 8,
												 &isnull));

		found.priority = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc,
													 4, &isnull));
		found.next_run_at = DatumGetTimestampTz(SPI_getbinval(SPI_tuptable->vals[0],
															  SPI_tuptable->tupdesc,
															  5, &isnull));
		found.id = id;

		/*
		 * The row is locked until this transaction ends, whether it starts
		 * or is refused: list it as held, so that claims of others may move
		 * the floor past it (claim_floor.c).  Only the first round moves
		 * the floor.  It too may have left rows of held-back topics out,
		 * but the proposal is the first row still claimable between the
		 * floor and this one whatever its topic, so they stay above the
		 * floor.
		 */
		if (pgbq_cat.has_claim_floor)
		{
			pgbq_floor_hold(pgbq_slotno, roleoid, pgbq_cat.table_oid, &found);
			if (round == 0)
				pgbq_floor_propose(roleoid, &start, epoch, &found);
		}

		pgbq_topic_policy(topic, &policy);
		res = pgbq_slot_try_start(pgbq_slotno, id, topic, &policy, now, &retry_at);
		if (res == PGBQ_START_OK)
		{
			PgbqTask   *task;
			MemoryContext old;

			old = MemoryContextSwitchTo(pgbq_worker_ctx);
			task = palloc0(sizeof(PgbqTask));
			task->id = id;
			task->sql = pstrdup(sql);
			task->topic = topic ? pstrdup(topic) : NULL;
			strlcpy(task->prev_state, prev_state, sizeof(task->prev_state));
			task->table_oid = pgbq_cat.table_oid;
			task->capture = pgbq_cat.has_results;
			task->result.isnull = true;
			/* the start the rate limit counted, so spacing shows exactly */
			task->claimed_at = now;
			task->claimed_tid = tid;
			MemoryContextSwitchTo(old);

			/*
			 * In a batch, a task of the batch's topic is left pending: the
			 * batch's transaction is the only one that could see its
			 * running mark, and the finish counts the attempt instead (one
			 * row version less).  Not a task with a dedupe key: a keyed
			 * enqueue meanwhile must wait for the batch, as for a running
			 * task, instead of taking the pending row as its duplicate.
			 */
			if (batch != NULL && !keyed && pgbq_same_topic(topic, batch->topic))
				task->unmarked = true;
			else
				pgbq_mark_running(task);
			return task;
		}
		*blocked = true;
		if (res == PGBQ_START_RATE_LIMITED &&
			(*wait_until == 0 || retry_at < *wait_until))
			*wait_until = retry_at;
		skipped = lappend(skipped, topic ? topic : "");
	}

	/*
	 * Nothing can start now: when could something become eligible?  Every
	 * claimable row is at or above the floor the claim started from.
	 */
	{
		Datum		args[4];
		bool		isnull;
		Datum		d;
		int			rc;

		args[0] = ObjectIdGetDatum(roleoid);
		args[1] = Int32GetDatum(start.priority);
		args[2] = TimestampTzGetDatum(start.next_run_at);
		args[3] = Int64GetDatum(start.id);
		rc = SPI_execute_plan(pgbq_plans[PGBQ_PLAN_NEXT_ELIGIBLE], args, NULL, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not compute next eligible time");
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
						  &isnull);
		if (!isnull)
		{
			TimestampTz next = DatumGetTimestampTz(d);

			if (next > GetCurrentTimestamp())
			{
				if (*wait_until == 0 || next < *wait_until)
					*wait_until = next;
			}
			else if (held != NIL)
			{
				/*
				 * A task is due that this claim did not take: one of a
				 * topic left out (or one locked by another claim).
				 */
				*blocked = true;
				if (held_until != 0 &&
					(*wait_until == 0 || held_until < *wait_until))
					*wait_until = held_until;
				return NULL;
			}
		}
		if (held != NIL)
			pgbq_slot_forget_capacity_wait(pgbq_slotno);
	}
	return NULL;
}

/*
 * pgbq_bookkeeping_claim
 *		Claim in the current transaction with SPI and privileges set up.
 *		Returns false (and no task) if the extension is gone.
 */
static bool
pgbq_bookkeeping_claim(PgbqTask **task, TimestampTz *wait_until, bool *blocked,
					   const PgbqTask *batch)
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
	*task = pgbq_claim(wait_until, blocked, batch);
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
	ok = pgbq_bookkeeping_claim(task, wait_until, blocked, NULL);
	CommitTransactionCommand();
	if (*task)
		pgbq_first_claim = false;
	return ok;
}

/*
 * pgbq_release_slot_task
 *		Our slot no longer runs the task.
 */
void
pgbq_release_slot_task(void)
{
	pgbq_slot_finish_task(pgbq_slotno);
}

/*
 * pgbq_recover_bookkeeping_error
 *		pgbq_recover_from_error for bookkeeping: the query cancel with which
 *		a shutdown interrupted a lock wait (see pgbq_watchdog_handler) is the
 *		worker leaving as asked, not an error to log.
 */
void
pgbq_recover_bookkeeping_error(MemoryContext ctx)
{
	ErrorData  *edata;

	if (!pgbq_got_sigterm)
	{
		pgbq_recover_from_error(ctx);
		return;
	}
	MemoryContextSwitchTo(ctx);
	edata = CopyErrorData();
	if (edata->sqlerrcode != ERRCODE_QUERY_CANCELED)
	{
		FreeErrorData(edata);
		pgbq_recover_from_error(ctx);
		return;
	}
	HOLD_INTERRUPTS();
	AbortOutOfAnyTransaction();
	FlushErrorState();
	RESUME_INTERRUPTS();
	elog(DEBUG1, "pg_background_queue: stopped waiting for a lock to shut down");
	FreeErrorData(edata);
	MemoryContextSwitchTo(ctx);
}

/*
 * pgbq_guarded_claim
 *		pgbq_standalone_claim, surviving errors (a stray cancel signal, a
 *		serialization hiccup): the error is logged, the transaction and slot
 *		are cleaned up, and the worker backs off for a second.
 */
bool
pgbq_guarded_claim(PgbqTask **task, TimestampTz *wait_until, bool *blocked)
{
	volatile bool ok = true;
	MemoryContext ctx = CurrentMemoryContext;

	pgbq_begin_bookkeeping_tick(false);
	PG_TRY();
	{
		ok = pgbq_standalone_claim(task, wait_until, blocked);
	}
	PG_CATCH();
	{
		pgbq_stop_task_timers();
		pgbq_recover_bookkeeping_error(ctx);
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
	sql = pgbq_sql_give_back(&pgbq_cat, (int) MyProcPid);
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
void
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
void
pgbq_give_back_guarded(PgbqTask *task)
{
	MemoryContext ctx = CurrentMemoryContext;

	pgbq_begin_bookkeeping_tick(true);
	PG_TRY();
	{
		pgbq_give_back_standalone(task);
	}
	PG_CATCH();
	{
		pgbq_stop_task_timers();
		pgbq_recover_bookkeeping_error(ctx);
		QueryCancelPending = false;
	}
	PG_END_TRY();
	pgbq_stop_task_timers();
}

/*
 * pgbq_claimed_row_unchanged
 *		Is the row version the claim of an unmarked task locked still the
 *		task's row, untouched since (only locked, by this transaction)?  Not
 *		if the task's own statements updated or deleted it: its finish then
 *		runs at once and finds what a single task's finish finds.
 */
static bool
pgbq_claimed_row_unchanged(const PgbqTask *task)
{
	Relation	rel;
	Buffer		buf;
	Page		page;
	OffsetNumber off = ItemPointerGetOffsetNumberNoCheck(&task->claimed_tid);
	bool		unchanged = false;

	if (!ItemPointerIsValid(&task->claimed_tid))
		return false;
	rel = table_open(task->table_oid, AccessShareLock);
	buf = ReadBuffer(rel, ItemPointerGetBlockNumber(&task->claimed_tid));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	if (off >= FirstOffsetNumber && off <= PageGetMaxOffsetNumber(page))
	{
		ItemId		lp = PageGetItemId(page, off);

		if (ItemIdIsNormal(lp))
		{
			HeapTupleHeader htup = (HeapTupleHeader) PageGetItem(page, lp);

			/* our claim's lock, and nothing after it */
			unchanged = !(htup->t_infomask & HEAP_XMAX_INVALID) &&
				HEAP_XMAX_IS_LOCKED_ONLY(htup->t_infomask) &&
				!(htup->t_infomask & HEAP_XMAX_IS_MULTI) &&
				TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetRawXmax(htup));
		}
	}
	UnlockReleaseBuffer(buf);
	table_close(rel, AccessShareLock);
	return unchanged;
}

/*
 * pgbq_batch_defer_finish
 *		Keep the finished mark of a batch's unmarked task for the batch's
 *		end (see pgbq_batch_deferred): it ended now, started when claimed.
 *		Returns false, keeping nothing, if the mark must be written now: the
 *		task's statements changed its row, or its result would take the
 *		results kept over PGBQ_BATCH_DEFERRED_RESULT_BYTES.
 */
static bool
pgbq_batch_defer_finish(const PgbqTask *task)
{
	MemoryContext old;
	PgbqDeferredFinish *entry;
	bool		has_result = task->capture && !task->result.isnull;
	Size		result_bytes = 0;

	if (has_result)
	{
		result_bytes = VARSIZE_ANY(DatumGetPointer(task->result.value));
		if (pgbq_batch_deferred_bytes + result_bytes > PGBQ_BATCH_DEFERRED_RESULT_BYTES)
			return false;
	}
	if (!pgbq_claimed_row_unchanged(task))
		return false;

	old = MemoryContextSwitchTo(TopTransactionContext);

	if (pgbq_batch_ndeferred >= pgbq_batch_maxdeferred)
	{
		int			room = Max(64, pgbq_batch_maxdeferred * 2);

		if (pgbq_batch_maxdeferred == 0)
			pgbq_batch_deferred = palloc(room * sizeof(PgbqDeferredFinish));
		else
			pgbq_batch_deferred = repalloc(pgbq_batch_deferred,
										   room * sizeof(PgbqDeferredFinish));
		pgbq_batch_maxdeferred = room;
	}
	entry = &pgbq_batch_deferred[pgbq_batch_ndeferred];
	entry->id = task->id;
	entry->started_at = task->claimed_at;
	entry->closed_at = GetCurrentTimestamp();
	entry->has_result = has_result;
	entry->result = has_result ?
		datumCopy(task->result.value, false, -1) : (Datum) 0;
	entry->truncated = has_result && task->result.truncated;
	pgbq_batch_ndeferred++;
	pgbq_batch_deferred_bytes += result_bytes;
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * pgbq_claim_left_out
 *		The ids the claims of this transaction leave out, as an int8[]: the
 *		tasks whose finished marks the batch keeps (none outside a batch),
 *		whose rows still look claimable to the batch's own transaction (its
 *		claims skip no row it locked itself), and the rows that workers of
 *		the role list as held (claim_floor.c), read before the claim takes
 *		its snapshot.  A held row is locked by another claim, or was until
 *		a commit the snapshot may not see yet; FOR UPDATE in READ COMMITTED
 *		would then lock its newest version (now running) before finding it
 *		no longer claimable, and keep that lock to the end of this
 *		transaction: the worker running it would wait for this commit to
 *		mark it finished.  Not when workers hold more than
 *		PGBQ_CLAIM_LEFT_OUT_HELD rows (batches): the claim compares every
 *		row it reads with every id, and their claims, committed together at
 *		a batch's end, seldom meet that case.  Moves *scan_from (the floor
 *		the claim read) past the ids just after it that workers hold or run.
 */
static ArrayType *
pgbq_claim_left_out(Oid roleoid, PgbqClaimKey *scan_from)
{
	int64	   *ids = palloc(Max(1, pgbq_batch_ndeferred) * sizeof(int64));
	PgbqClaimKey floor = *scan_from;
	int64		settled_to;
	ArrayType  *left_out;
	int			i;

	for (i = 0; i < pgbq_batch_ndeferred; i++)
		ids[i] = pgbq_batch_deferred[i].id;
	left_out = pgbq_floor_held_ids(MyDatabaseId, roleoid, ids,
								   pgbq_batch_ndeferred, PGBQ_CLAIM_LEFT_OUT_HELD,
								   &floor, &settled_to);
	scan_from->id = settled_to;
	return left_out;
}

/*
 * pgbq_batch_ran
 *		Did a task of the batch this backend is running (none, outside a
 *		task worker) run task_id, whose finished mark waits for the batch's
 *		end?  Its row still looks pending to the batch's transaction: the
 *		extension's functions take it as finished (pg_background_cancel,
 *		_retry and _reschedule leave it alone, pg_background_wait returns
 *		it at once).
 */
bool
pgbq_batch_ran(int64 task_id)
{
	int			i;

	for (i = 0; i < pgbq_batch_ndeferred; i++)
		if (pgbq_batch_deferred[i].id == task_id)
			return true;
	return false;
}

/*
 * pgbq_batch_deferred_count
 *		How many finished marks the batch keeps for its end.
 */
int
pgbq_batch_deferred_count(void)
{
	return pgbq_batch_ndeferred;
}

/*
 * pgbq_batch_forget_deferred
 *		Keep only the first keep finished marks (the rest belonged to a
 *		subtransaction that rolled back); 0 forgets them all, as when the
 *		batch begins or rolls back (their memory went with the transaction).
 */
void
pgbq_batch_forget_deferred(int keep)
{
	int			i;

	Assert(keep >= 0 && keep <= pgbq_batch_ndeferred);
	for (i = keep; i < pgbq_batch_ndeferred; i++)
		if (pgbq_batch_deferred[i].has_result)
			pgbq_batch_deferred_bytes -=
				VARSIZE_ANY(DatumGetPointer(pgbq_batch_deferred[i].result));
	pgbq_batch_ndeferred = keep;
	if (keep == 0)
	{
		pgbq_batch_deferred = NULL;
		pgbq_batch_maxdeferred = 0;
		pgbq_batch_deferred_bytes = 0;
	}
}

/*
 * pgbq_batch_finish_deferred
 *		Just before the batch of first commits: write the finished marks
 *		kept for its end, in one statement, in the bookkeeping baseline.  A
 *		row a later task of the batch changed (say, cancelled) is marked
 *		finished all the same: the task ran, and its effects commit now; one
 *		a later task deleted stays deleted.
 */
void
pgbq_batch_finish_deferred(PgbqTask *first)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	int			gucnest;
	int			n = pgbq_batch_ndeferred;
	Datum	   *ids;
	Datum	   *ends;
	Datum	   *starts;
	Datum	   *results;
	bool	   *result_nulls;
	Datum	   *cuts;
	Datum		args[5];
	int			dims[1];
	int			lbs[1] = {1};
	bool		any_result = false;
	SPIPlanPtr	plan;
	int			rc;
	int			i;

	if (n == 0)
		return;
	ids = palloc(n * sizeof(Datum));
	ends = palloc(n * sizeof(Datum));
	starts = palloc(n * sizeof(Datum));
	results = palloc(n * sizeof(Datum));
	result_nulls = palloc(n * sizeof(bool));
	cuts = palloc(n * sizeof(Datum));
	for (i = 0; i < n; i++)
	{
		PgbqDeferredFinish *entry = &pgbq_batch_deferred[i];

		ids[i] = Int64GetDatum(entry->id);
		ends[i] = TimestampTzGetDatum(entry->closed_at);
		starts[i] = TimestampTzGetDatum(entry->started_at);
		results[i] = entry->result;
		result_nulls[i] = !entry->has_result;
		cuts[i] = BoolGetDatum(entry->truncated);
		any_result |= entry->has_result;
	}
	dims[0] = n;
	args[0] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL,
											  TYPALIGN_DOUBLE));
	args[1] = PointerGetDatum(construct_array(ends, n, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	args[2] = PointerGetDatum(construct_array(starts, n, TIMESTAMPTZOID, 8,
											  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	plan = pgbq_plans[PGBQ_PLAN_FINISH_MANY];
	if (any_result && pgbq_plans[PGBQ_PLAN_FINISH_MANY_RESULT])
	{
		plan = pgbq_plans[PGBQ_PLAN_FINISH_MANY_RESULT];
		args[3] = PointerGetDatum(construct_md_array(results, result_nulls, 1,
													 dims, lbs, JSONBOID, -1,
													 false, TYPALIGN_INT));
		args[4] = PointerGetDatum(construct_array(cuts, n, BOOLOID, 1, true,
												  TYPALIGN_CHAR));
	}

	gucnest = NewGUCNestLevel();
	pgbq_pin_bookkeeping_settings();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (!pgbq_task_table_alive(first))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" was dropped while a batch ran",
						PGBQ_EXTENSION_NAME)));
	nest = pgbq_begin_privileged(pgbq_cat.owner, &save_userid, &save_sec);
	rc = SPI_execute_plan(plan, args, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not mark the tasks of a batch finished: %s",
			 SPI_result_code_string(rc));
	pgbq_end_privileged(nest, save_userid, save_sec);
	SPI_finish();
	PopActiveSnapshot();
	AtEOXact_GUC(true, gucnest);
	pgbq_batch_forget_deferred(0);
}

/*
 * pgbq_finish_and_claim_next
 *		In the task's transaction: mark it finished, release the slot and
 *		claim the next task (returned, or NULL).  A task of a batch
 *		(in_batch) is only marked finished, in its subtransaction: the slot
 *		stays taken for the batch's next task, which worker.c claims after
 *		releasing the subtransaction.
 */
PgbqTask *
pgbq_finish_and_claim_next(PgbqTask *task, bool in_batch)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Datum		args[6];
	bool		result;
	PgbqPlanId	plan;
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
	result = task->capture && !task->result.isnull &&
		pgbq_plans[PGBQ_PLAN_FINISH_RESULT] != NULL;
	if (result)
	{
		args[3] = task->result.value;
		args[4] = BoolGetDatum(task->result.truncated);
	}
	if (task->unmarked)
	{
		/* a batch's task, still pending: the finish counts the attempt */
		plan = result ? PGBQ_PLAN_FINISH_CLAIMED_RESULT : PGBQ_PLAN_FINISH_CLAIMED;
		args[2] = TimestampTzGetDatum(task->claimed_at);
	}
	else if (ItemPointerIsValid(&task->running_tid))
	{
		/* by the version the running mark wrote, found with a TID scan */
		plan = result ? PGBQ_PLAN_FINISH_RESULT : PGBQ_PLAN_FINISH;
		args[result ? 5 : 3] = PointerGetDatum(&task->running_tid);
	}
	else
		plan = result ? PGBQ_PLAN_FINISH_RESULT_BY_ID : PGBQ_PLAN_FINISH_BY_ID;
	if (!in_batch || !task->unmarked || !pgbq_batch_defer_finish(task))
	{
		rc = SPI_execute_plan(pgbq_plans[plan], args, NULL, false, 0);

		/*
		 * That version is gone when the task's statements updated the row
		 * themselves: look for it by id, as for any other change.
		 */
		if (rc == SPI_OK_UPDATE && SPI_processed == 0 &&
			(plan == PGBQ_PLAN_FINISH || plan == PGBQ_PLAN_FINISH_RESULT))
			rc = SPI_execute_plan(pgbq_plans[result ? PGBQ_PLAN_FINISH_RESULT_BY_ID :
											 PGBQ_PLAN_FINISH_BY_ID],
								  args, NULL, false, 0);
		if (rc != SPI_OK_UPDATE || SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("task " INT64_FORMAT " is no longer running; its effects are rolled back",
							task->id)));
	}
	/* an unmarked task's row is no longer claimable once this commits */
	pgbq_floor_hold_started(task->id);
	pgbq_notify_terminal(task->id, "finished");

	/*
	 * Claim the next task in this commit only at READ COMMITTED: at a
	 * higher level (the role's default, or the task's choice) the claim
	 * would run on the task's snapshot, see rows claimed since as still
	 * pending and fail to lock them with a serialization error.  The loop
	 * claims in a transaction of its own instead.  The slot keeps its
	 * capacity through the claim (pgbq_slot_hand_over): freed first, it
	 * would wake workers waiting for it, and one of them locking the next
	 * task (to find the topic full) would make this claim skip it, out of
	 * priority order.
	 */
	if (!in_batch && !pgbq_got_sigterm && !IsolationUsesXactSnapshot() &&
		!pgbq_slot_yielding(pgbq_slotno))
	{
		pgbq_slot_hand_over(pgbq_slotno);
		next = pgbq_claim(&wait_until, &blocked, NULL);
		if (next == NULL)
			pgbq_release_slot_task();
	}
	else if (!in_batch)
		pgbq_release_slot_task();
	pgbq_end_privileged(nest, save_userid, save_sec);
	SPI_finish();
	PopActiveSnapshot();
	return next;
}

/*
 * pgbq_record_end
 *		After the task's transaction was rolled back: in a new transaction,
 *		give the task back (shutdown), or record the failed or cancelled
 *		attempt and, with claim_next, claim the next task (returned).
 */
PgbqTask *
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
		if (claim_next && !pgbq_got_sigterm && !pgbq_slot_yielding(pgbq_slotno))
			(void) pgbq_bookkeeping_claim(&next, &wait_until, &blocked, NULL);
	}
	CommitTransactionCommand();
	pgbq_current_task = NULL;
	if (shutdown)
		pgbq_reannounce();
	return next;
}

/*
 * pgbq_record_end_in_batch
 *		In a batch's transaction, after the task's subtransaction rolled
 *		back: give the task back (shutdown) or record its failed or
 *		cancelled attempt; both commit with the batch.  The slot stays taken
 *		(see pgbq_finish_and_claim_next).  If the extension was dropped
 *		meanwhile, an error aborts the batch.
 */
void
pgbq_record_end_in_batch(PgbqTask *task, bool cancelled, bool shutdown,
						 const char *sqlstate, const char *message,
						 const char *detail)
{
	int			nest;
	bool		alive;

	nest = NewGUCNestLevel();
	pgbq_pin_bookkeeping_settings();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	alive = pgbq_task_table_alive(task);
	SPI_finish();
	if (!alive)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" was dropped while task " INT64_FORMAT " ran",
						PGBQ_EXTENSION_NAME, task->id)));
	/* the failure is recorded from the running mark, attempt counted */
	if (task->unmarked && !shutdown)
		pgbq_batch_mark_running(task);
	if (shutdown)
	{
		/* an unmarked task is pending already: its lock goes at the commit */
		if (!task->unmarked)
			pgbq_give_back(task);
	}
	else
		pgbq_record_attempt_failure(&pgbq_cat, task->id, task->topic,
									cancelled, sqlstate, message, detail);
	PopActiveSnapshot();
	AtEOXact_GUC(true, nest);
}

/*
 * pgbq_batch_claim
 *		In the transaction of first's batch: claim the next task, in the
 *		bookkeeping baseline; one of the batch's topic is left unmarked
 *		(pgbq_claim).  NULL if none can start now or the extension is gone.
 */
PgbqTask *
pgbq_batch_claim(const PgbqTask *first)
{
	PgbqTask   *task = NULL;
	TimestampTz wait_until = 0;
	bool		blocked = false;
	int			nest;

	nest = NewGUCNestLevel();
	pgbq_pin_bookkeeping_settings();
	(void) pgbq_bookkeeping_claim(&task, &wait_until, &blocked, first);
	AtEOXact_GUC(true, nest);
	return task;
}

/*
 * pgbq_batch_mark_running
 *		In a batch's transaction: mark a task claimed unmarked running after
 *		all (its SQL may not join the batch: it runs after the commit).
 */
void
pgbq_batch_mark_running(PgbqTask *task)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	int			gucnest;

	gucnest = NewGUCNestLevel();
	pgbq_pin_bookkeeping_settings();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	nest = pgbq_begin_privileged(pgbq_cat.owner, &save_userid, &save_sec);
	pgbq_mark_running(task);
	pgbq_end_privileged(nest, save_userid, save_sec);
	SPI_finish();
	PopActiveSnapshot();
	AtEOXact_GUC(true, gucnest);
}

/*
 * pgbq_record_end_guarded
 *		pgbq_record_end, surviving errors: an error is logged and the
 *		recording tried again after PGBQ_BOOKKEEPING_RETRY_MS, so the task
 *		ends with its own outcome instead of a dead worker and an
 *		"interrupted" attempt.  On shutdown the worker stops trying and
 *		leaves: the row, still running in its name, goes to orphan recovery.
 */
PgbqTask *
pgbq_record_end_guarded(PgbqTask *task, bool cancelled, bool shutdown,
						const char *sqlstate, const char *message,
						const char *detail)
{
	MemoryContext ctx = CurrentMemoryContext;

	for (;;)
	{
		PgbqTask   *volatile next = NULL;
		volatile bool done = false;

		pgbq_begin_bookkeeping_tick(true);
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
			pgbq_recover_bookkeeping_error(ctx);
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
 * pgbq_settle_demand
 *		No task could be claimed: forget the launcher's outstanding demand
 *		for our (database, role), unless new work was announced since seq
 *		was read.  Returns false in that case (try again at once).
 */
bool
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
uint64
pgbq_demand_seq(void)
{
	PgbqSlot   *me = &pgbq_shared->slots[pgbq_slotno];
	PgbqDemand *d;
	uint64		seq = 0;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	me->woken = false;
	me->asleep = false;
	d = pgbq_demand_lookup(me->dboid, me->roleoid, false);
	if (d)
		seq = d->seq;
	LWLockRelease(pgbq_shared->lock);
	return seq;
}
