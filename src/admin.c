/*-------------------------------------------------------------------------
 *
 * admin.c
 *	  Administration functions and the functions behind the views:
 *	  pg_background_queue_ensure_workers, _active_workers_count,
 *	  _calibrate_workers_count, the worker list read from shared memory,
 *	  and the effective topic configuration.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"

PG_FUNCTION_INFO_V1(pg_background_queue_ensure_workers);
PG_FUNCTION_INFO_V1(pg_background_queue_active_workers_count);
PG_FUNCTION_INFO_V1(pg_background_queue_calibrate_workers_count);
PG_FUNCTION_INFO_V1(pg_background_queue_workers);
PG_FUNCTION_INFO_V1(pg_background_queue_configured_topics);
PG_FUNCTION_INFO_V1(pg_background_queue_topic_config);
PG_FUNCTION_INFO_V1(_pg_background_queue_assert_preloaded);

/*
 * pgbq_admin_check
 *		The library must be preloaded for any of these to mean anything.
 */
static void
pgbq_admin_check(void)
{
	if (pgbq_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_background_queue must be loaded via shared_preload_libraries"),
				 errhint("Add shared_preload_libraries = 'pg_background_queue' to postgresql.conf "
						 "(or append pg_background_queue to the list already there) and restart the server.")));
}

/*
 * _pg_background_queue_assert_preloaded
 *		Called by the install script so that CREATE EXTENSION fails clearly
 *		when the library is not preloaded.
 */
Datum
_pg_background_queue_assert_preloaded(PG_FUNCTION_ARGS)
{
	(void) fcinfo;
	pgbq_admin_check();
	PG_RETURN_VOID();
}

/*
 * pg_background_queue_ensure_workers
 *		Recover this database's orphaned tasks and start workers for every
 *		role with eligible tasks (through a maintenance pass), and make sure
 *		the launcher looks at everything now.
 */
Datum
pg_background_queue_ensure_workers(PG_FUNCTION_ARGS)
{
	(void) fcinfo;
	pgbq_admin_check();
	pgbq_request_maintenance(MyDatabaseId);
	PG_RETURN_VOID();
}

/*
 * pg_background_queue_active_workers_count
 *		Live task workers in the cluster, counted from the slots.
 */
Datum
pg_background_queue_active_workers_count(PG_FUNCTION_ARGS)
{
	(void) fcinfo;
	pgbq_admin_check();
	PG_RETURN_INT32(pgbq_live_task_workers(false));
}

/*
 * pg_background_queue_calibrate_workers_count
 *		Free slots whose process is gone, then return the live count.
 */
Datum
pg_background_queue_calibrate_workers_count(PG_FUNCTION_ARGS)
{
	int			n;

	(void) fcinfo;
	pgbq_admin_check();
	n = pgbq_live_task_workers(true);
	pgbq_wake_launcher();
	PG_RETURN_INT32(n);
}

/*
 * pgbq_materialize
 *		Set up a materialized set-returning call (portable form of
 *		InitMaterializedSRF, which only exists from 15 on).
 */
Tuplestorestate *
pgbq_materialize(FunctionCallInfo fcinfo, TupleDesc *tupdesc)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;
	Tuplestorestate *store;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	if (rsinfo->expectedDesc != NULL)
		*tupdesc = CreateTupleDescCopy(rsinfo->expectedDesc);
	else if (get_call_result_type(fcinfo, NULL, tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	store = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = store;
	rsinfo->setDesc = *tupdesc;
	MemoryContextSwitchTo(old);
	return store;
}

/*
 * pg_background_queue_workers
 *		One row per live worker.  Non-superusers see the workers of roles
 *		they have the privileges of.
 */
Datum
pg_background_queue_workers(PG_FUNCTION_ARGS)
{
	Tuplestorestate *store;
	TupleDesc	tupdesc;
	PgbqSlot   *copy;
	int			nslots;
	int			i;
	bool		su = superuser();

	pgbq_admin_check();
	store = pgbq_materialize(fcinfo, &tupdesc);

	nslots = pgbq_shared->nslots;
	copy = palloc(sizeof(PgbqSlot) * nslots);
	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	memcpy(copy, pgbq_shared->slots, sizeof(PgbqSlot) * nslots);
	LWLockRelease(pgbq_shared->lock);

	for (i = 0; i < nslots; i++)
	{
		PgbqSlot   *s = &copy[i];
		Datum		values[9];
		bool		nulls[9] = {0};
		const char *state;

		if (s->state == PGBQ_SLOT_FREE || s->state == PGBQ_SLOT_STARTING || s->pid == 0)
			continue;
		if (!su && (s->kind != PGBQ_KIND_TASK ||
					!has_privs_of_role(GetUserId(), s->roleoid)))
			continue;
		if (s->kind == PGBQ_KIND_MAINTENANCE)
			state = "maintenance";
		else
			state = (s->state == PGBQ_SLOT_RUNNING) ? "running" : "idle";
		values[0] = Int32GetDatum(s->pid);
		values[1] = ObjectIdGetDatum(s->dboid);
		values[2] = ObjectIdGetDatum(s->roleoid);
		nulls[2] = !OidIsValid(s->roleoid);
		values[3] = CStringGetTextDatum(state);
		if (s->state == PGBQ_SLOT_RUNNING)
		{
			values[4] = Int64GetDatum(s->task_id);
			if (s->topic_isnull)
				nulls[5] = true;
			else
				values[5] = CStringGetTextDatum(s->topic);
			values[6] = TimestampTzGetDatum(s->task_started_at);
		}
		else
			nulls[4] = nulls[5] = nulls[6] = true;
		values[7] = TimestampTzGetDatum(s->backend_start);
		values[8] = Int64GetDatum((int64) s->tasks_done);
		tuplestore_putvalues(store, tupdesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * pg_background_queue_configured_topics
 *		Topics named in topic_config, plus NULL for the default topic.
 */
Datum
pg_background_queue_configured_topics(PG_FUNCTION_ARGS)
{
	Tuplestorestate *store;
	TupleDesc	tupdesc;
	int			i;
	Datum		value;
	bool		isnull = true;

	store = pgbq_materialize(fcinfo, &tupdesc);
	value = (Datum) 0;
	tuplestore_putvalues(store, tupdesc, &value, &isnull);
	isnull = false;
	for (i = 0; i < pgbq_configured_topic_count(); i++)
	{
		value = CStringGetTextDatum(pgbq_configured_topic_name(i));
		tuplestore_putvalues(store, tupdesc, &value, &isnull);
	}
	return (Datum) 0;
}

/*
 * pg_background_queue_topic_config
 *		Effective configuration of one topic (NULL: the default topic).
 */
Datum
pg_background_queue_topic_config(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	PgbqTopicPolicy policy;
	Datum		values[6];
	bool		nulls[6] = {0};
	char	   *topic = NULL;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (!PG_ARGISNULL(0))
		topic = text_to_cstring(PG_GETARG_TEXT_PP(0));
	pgbq_topic_policy(topic, &policy);
	values[0] = BoolGetDatum(policy.configured);
	if (policy.max_parallel >= 0)
		values[1] = Int32GetDatum(Min(policy.max_parallel, pgbq_max_parallel));
	else
		values[1] = Int32GetDatum(pgbq_max_parallel);
	values[2] = Int32GetDatum(policy.retry_count);
	values[3] = Float8GetDatum(policy.delay_in_sec);
	values[4] = Int32GetDatum(policy.priority);
	values[5] = Int32GetDatum(policy.timeout_in_sec);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
