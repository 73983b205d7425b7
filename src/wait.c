/*-------------------------------------------------------------------------
 *
 * wait.c
 *	  pg_background_wait: block in the server until tasks end.
 *
 * Every transition of a task to finished, failed or cancelled goes through
 * pgbq_notify_terminal (catalog.c), which calls pgbq_wait_note_end here;
 * dependents cancelled by a cascade end in the transaction of the task
 * whose end cascaded.  A transaction callback then broadcasts the shared
 * condition variable once that transaction has committed, when its changes
 * are visible to a new snapshot.  A waiter prepares to sleep on the
 * condition variable before it looks at the tasks, so a broadcast that
 * comes after the look cannot be missed.
 *
 * A commit that broadcasts nothing still wakes waiters within
 * PGBQ_WAIT_RECHECK_MS: COMMIT PREPARED of a transaction that ended tasks
 * (the callback of the PREPARE cannot broadcast what is not yet visible)
 * and changes made to the table by hand.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "compat.h"
#include "pgbq.h"

PG_FUNCTION_INFO_V1(pg_background_wait);

/* Look again after this long even if no broadcast came (see above). */
#define PGBQ_WAIT_RECHECK_MS	5000

/* At most this many unfinished ids are named in the timeout error. */
#define PGBQ_WAIT_MAX_NAMED		20

/* pg_background_queue's own SQLSTATE for a wait that ran out of time */
#define ERRCODE_PGBQ_WAIT_TIMEOUT	MAKE_SQLSTATE('P','B','Q','0','1')

static bool pgbq_wait_end_pending = false;
static bool pgbq_wait_callback_registered = false;

/*
 * pgbq_wait_xact_callback
 *		Wake the waiters after a commit that ended tasks.
 */
static void
pgbq_wait_xact_callback(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (pgbq_wait_end_pending && pgbq_shared != NULL)
				ConditionVariableBroadcast(&pgbq_shared->task_ended);
			pgbq_wait_end_pending = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			pgbq_wait_end_pending = false;
			break;
		default:
			break;
	}
}

/*
 * pgbq_wait_note_end
 *		The current transaction ends a task: wake the waiters at its commit.
 */
void
pgbq_wait_note_end(void)
{
	if (!pgbq_wait_callback_registered)
	{
		RegisterXactCallback(pgbq_wait_xact_callback, NULL);
		pgbq_wait_callback_registered = true;
	}
	pgbq_wait_end_pending = true;
}

/*
 * pgbq_wait_timeout_ms
 *		The timeout argument in milliseconds; -1 for none (NULL).
 */
static int64
pgbq_wait_timeout_ms(FunctionCallInfo fcinfo)
{
	Interval   *iv;
	double		usecs;

	if (PG_ARGISNULL(1))
		return -1;
	iv = PG_GETARG_INTERVAL_P(1);
	usecs = (double) iv->time +
		((double) iv->day + (double) iv->month * DAYS_PER_MONTH) * USECS_PER_DAY;
	if (usecs < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative"),
				 errhint("Pass NULL to wait without a time limit.")));
	if (usecs / 1000.0 > (double) PG_INT64_MAX / 2)
		return -1;
	return (int64) (usecs / 1000.0);
}

/*
 * pgbq_wait_ids
 *		The distinct ids of the array argument, in ascending order.
 */
static Datum
pgbq_wait_ids(FunctionCallInfo fcinfo, int *nids)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			kept = 0;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task ids must not be NULL")));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("array of task ids must be one-dimensional")));
	deconstruct_array(arr, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("task ids must not be NULL (element %d of the array)", i + 1)));
	*nids = n;
	for (int i = 0; i < n; i++)
	{
		bool		seen = false;

		for (int j = 0; j < kept && !seen; j++)
			seen = (DatumGetInt64(elems[j]) == DatumGetInt64(elems[i]));
		if (!seen)
			elems[kept++] = elems[i];
	}
	*nids = kept;
	return PointerGetDatum(construct_array(elems, kept, INT8OID, sizeof(int64),
										   true, TYPALIGN_DOUBLE));
}

/*
 * pgbq_wait_check
 *		Look at the tasks with a new snapshot (as the caller: RLS applies).
 *		If all of them have ended, put their rows into store and return
 *		true; otherwise return false with the unfinished ids in *unfinished.
 *		Unknown ids and other roles' ids are an error.
 */
static bool
pgbq_wait_check(const char *query, Datum ids, int nids, Tuplestorestate *store,
				StringInfo unfinished)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1];
	int			rc;
	const int	id_att = 1;
	const int	state_att = 2;
	int			nopen = 0;
	uint64		i;

	args[0] = ids;
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* not read-only: at READ COMMITTED, a snapshot of its own */
	rc = SPI_execute_with_args(query, 1, argtypes, args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read tasks: %s", SPI_result_code_string(rc));
	if (SPI_processed < (uint64) nids)
	{
		ArrayType  *arr = DatumGetArrayTypeP(ids);
		Datum	   *elems;
		int			n;
		StringInfoData missing;
		int			nmissing = 0;

		deconstruct_array(arr, INT8OID, sizeof(int64), true, TYPALIGN_DOUBLE,
						  &elems, NULL, &n);
		initStringInfo(&missing);
		for (int k = 0; k < n; k++)
		{
			bool		found = false;

			for (i = 0; i < SPI_processed && !found; i++)
			{
				bool		isnull;

				found = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													SPI_tuptable->tupdesc,
													id_att, &isnull)) ==
					DatumGetInt64(elems[k]);
			}
			if (!found)
				appendStringInfo(&missing, "%s" INT64_FORMAT,
								 nmissing++ ? ", " : "", DatumGetInt64(elems[k]));
		}
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("task(s) %s do not exist or are not yours", missing.data),
				 errhint("Only tasks of roles whose privileges you have are visible, until retention prunes them.")));
	}
	resetStringInfo(unfinished);
	for (i = 0; i < SPI_processed; i++)
	{
		char	   *state = SPI_getvalue(SPI_tuptable->vals[i],
										 SPI_tuptable->tupdesc, state_att);
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc,
													 id_att, &isnull));

		/* a task the caller's own batch ran counts as ended (row as is) */
		if (strcmp(state, "finished") != 0 && strcmp(state, "failed") != 0 &&
			strcmp(state, "cancelled") != 0 && !pgbq_batch_ran(id))
		{
			if (nopen < PGBQ_WAIT_MAX_NAMED)
				appendStringInfo(unfinished, "%s" INT64_FORMAT, nopen ? ", " : "",
								 id);
			nopen++;
		}
	}
	if (nopen > PGBQ_WAIT_MAX_NAMED)
		appendStringInfo(unfinished, " and %d more", nopen - PGBQ_WAIT_MAX_NAMED);
	if (nopen == 0)
	{
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			HeapTupleHeader row;
			HeapTupleData tuple;

			row = DatumGetHeapTupleHeader(SPI_getbinval(SPI_tuptable->vals[i],
														SPI_tuptable->tupdesc,
														3, &isnull));
			tuple.t_len = HeapTupleHeaderGetDatumLength(row);
			ItemPointerSetInvalid(&tuple.t_self);
			tuple.t_tableOid = InvalidOid;
			tuple.t_data = row;
			tuplestore_puttuple(store, &tuple);
		}
	}
	SPI_finish();
	return nopen == 0;
}

/*
 * pg_background_wait
 *		Return the rows of the listed tasks once every one of them is
 *		finished, failed or cancelled.  Sleeps on the shared condition
 *		variable in between (interruptible: a cancel ends it); at the
 *		timeout, an error (SQLSTATE PBQ01) naming the unfinished tasks.
 */
Datum
pg_background_wait(PG_FUNCTION_ARGS)
{
	PgbqCatalog cat;
	TupleDesc	tupdesc;
	Tuplestorestate *store;
	Datum		ids;
	int			nids;
	int64		timeout_ms;
	TimestampTz deadline = 0;
	char	   *query;
	StringInfoData unfinished;

	pgbq_check_preloaded();
	ids = pgbq_wait_ids(fcinfo, &nids);
	timeout_ms = pgbq_wait_timeout_ms(fcinfo);
	store = pgbq_materialize(fcinfo, &tupdesc);
	if (nids == 0)
		PG_RETURN_NULL();
	(void) pgbq_catalog_lookup(&cat, false);
	/* the whole row: the table's row type, dropped columns included */
	query = psprintf("SELECT t.id, t.state::text, t FROM %s t "
					 "WHERE t.id = ANY ($1) ORDER BY t.id",
					 cat.qualified_table);
	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	initStringInfo(&unfinished);

	ConditionVariablePrepareToSleep(&pgbq_shared->task_ended);
	for (;;)
	{
		long		sleep_ms = PGBQ_WAIT_RECHECK_MS;

		CHECK_FOR_INTERRUPTS();
		if (pgbq_wait_check(query, ids, nids, store, &unfinished))
			break;
		if (IsolationUsesXactSnapshot())
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
					 errmsg("pg_background_wait cannot wait in a REPEATABLE READ or SERIALIZABLE transaction"),
					 errdetail("Task(s) %s have not ended, and the transaction's snapshot would never show them end.",
							   unfinished.data),
					 errhint("Wait outside a transaction block or in a READ COMMITTED transaction.")));
		if (timeout_ms >= 0)
		{
			long		left = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
															   deadline);

			if (left <= 0)
				ereport(ERROR,
						(errcode(ERRCODE_PGBQ_WAIT_TIMEOUT),
						 errmsg("timed out waiting for task(s) %s", unfinished.data),
						 errdetail("The tasks are still queued or running; the wait ends, not the tasks.")));
			sleep_ms = Min(sleep_ms, left);
		}
		(void) ConditionVariableTimedSleep(&pgbq_shared->task_ended, sleep_ms,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	PG_RETURN_NULL();
}
