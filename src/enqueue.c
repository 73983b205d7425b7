/*-------------------------------------------------------------------------
 *
 * enqueue.c
 *	  SQL-callable user API: pg_background_enqueue, pg_background_enqueue_many,
 *	  pg_background_cancel, pg_background_retry, pg_background_reschedule,
 *	  pg_background_queue_purge.
 *
 * Enqueue validates everything before writing anything (NULL or empty SQL,
 * syntax errors with their position, transaction control, COPY to or from
 * the client, statements that cannot share a script, topic names, strict
 * topics, priorities, run_at, the role's ability to log in), then inserts
 * as the table owner inside a privileged section.  The caller's role
 * (current_user) is recorded as the owner; the task will run as it.
 *
 * Workers are woken at commit: a transaction callback announces the work
 * of the transaction, so work enqueued by a transaction that rolls back is
 * never announced (and never runs, since its rows never commit).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parser.h"
#include "storage/lwlock.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"
#include "task_rows.h"

PG_FUNCTION_INFO_V1(pg_background_enqueue);
PG_FUNCTION_INFO_V1(pg_background_enqueue_many);
PG_FUNCTION_INFO_V1(pg_background_cancel);
PG_FUNCTION_INFO_V1(pg_background_retry);
PG_FUNCTION_INFO_V1(pg_background_reschedule);
PG_FUNCTION_INFO_V1(pg_background_queue_purge);

/* Work announced at commit, per role (usually one). */
#define PGBQ_PENDING_ROLES 8

typedef struct PgbqPendingWork
{
	Oid			roleoid;
	int			ready;
	TimestampTz earliest_future;
} PgbqPendingWork;

static PgbqPendingWork pgbq_pending[PGBQ_PENDING_ROLES];
static int	pgbq_npending = 0;
static bool pgbq_pending_overflow = false;
static bool pgbq_callback_registered = false;

/* Cached insert plan of this backend. */
static SPIPlanPtr pgbq_insert_plan = NULL;
static SPIPlanPtr pgbq_insert_many_plan = NULL;
static Oid	pgbq_plan_table = InvalidOid;

/*
 * pgbq_check_preloaded
 *		Every entry point first checks that the library was preloaded.
 */
void
pgbq_check_preloaded(void)
{
	if (pgbq_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pg_background_queue must be loaded via shared_preload_libraries"),
				 errhint("Add shared_preload_libraries = 'pg_background_queue' to postgresql.conf "
						 "(or append pg_background_queue to the list already there) and restart the server.")));
}

/*
 * pgbq_xact_callback
 *		Announce the transaction's work after it committed; forget it
 *		otherwise.
 */
static void
pgbq_xact_callback(XactEvent event, void *arg)
{
	int			i;

	(void) arg;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (pgbq_shared != NULL)
			{
				for (i = 0; i < pgbq_npending; i++)
					pgbq_announce_work(MyDatabaseId, pgbq_pending[i].roleoid,
									   pgbq_pending[i].ready,
									   pgbq_pending[i].earliest_future);
				if (pgbq_pending_overflow)
					pgbq_request_maintenance(MyDatabaseId);
			}
			pgbq_npending = 0;
			pgbq_pending_overflow = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* A prepared transaction's work is found by maintenance. */
			pgbq_npending = 0;
			pgbq_pending_overflow = false;
			break;
		default:
			break;
	}
}

/*
 * pgbq_remember_work
 *		Note work to announce when the current transaction commits.
 */
void
pgbq_remember_work(Oid roleoid, int ready, TimestampTz future)
{
	PgbqPendingWork *w = NULL;
	int			i;

	if (!pgbq_callback_registered)
	{
		RegisterXactCallback(pgbq_xact_callback, NULL);
		pgbq_callback_registered = true;
	}
	for (i = 0; i < pgbq_npending; i++)
	{
		if (pgbq_pending[i].roleoid == roleoid)
			w = &pgbq_pending[i];
	}
	if (w == NULL)
	{
		if (pgbq_npending >= PGBQ_PENDING_ROLES)
		{
			pgbq_pending_overflow = true;
			return;
		}
		w = &pgbq_pending[pgbq_npending++];
		memset(w, 0, sizeof(*w));
		w->roleoid = roleoid;
	}
	w->ready = (int) Min((int64) w->ready + ready, PG_INT32_MAX);
	if (future != 0 && (w->earliest_future == 0 || future < w->earliest_future))
		w->earliest_future = future;
}

/*
 * pgbq_must_run_alone
 *		Statements that cannot run inside a transaction block, hence not in
 *		a script of several statements (which runs as one implicit block).
 */
static const char *
pgbq_must_run_alone(Node *stmt)
{
	switch (nodeTag(stmt))
	{
		case T_VacuumStmt:
			if (((VacuumStmt *) stmt)->is_vacuumcmd)
				return "VACUUM";
			return NULL;
		case T_IndexStmt:
			return ((IndexStmt *) stmt)->concurrent ? "CREATE INDEX CONCURRENTLY" : NULL;
		case T_DropStmt:
			return ((DropStmt *) stmt)->concurrent ? "DROP INDEX CONCURRENTLY" : NULL;
		case T_CreatedbStmt:
			return "CREATE DATABASE";
		case T_DropdbStmt:
			return "DROP DATABASE";
		case T_AlterSystemStmt:
			return "ALTER SYSTEM";
		case T_CreateTableSpaceStmt:
			return "CREATE TABLESPACE";
		case T_DropTableSpaceStmt:
			return "DROP TABLESPACE";
		default:
			return NULL;
	}
}

/*
 * pgbq_validate_sql
 *		Reject SQL that cannot become a task.  Syntax errors are re-raised
 *		with the position inside the task's text (as an internal query, the
 *		way PL/pgSQL reports errors in dynamic SQL).
 */
static void
pgbq_validate_sql(const char *sql, int element)
{
	List	   *stmts = NIL;
	ListCell   *lc;
	MemoryContext ctx = CurrentMemoryContext;
	char		where[64] = "";

	if (element > 0)
		snprintf(where, sizeof(where), " (element %d of the array)", element);

	PG_TRY();
	{
		stmts = raw_parser(sql, RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(ctx);
		edata = CopyErrorData();
		FlushErrorState();
		if (edata->cursorpos > 0)
		{
			edata->internalpos = edata->cursorpos;
			edata->cursorpos = 0;
			edata->internalquery = pstrdup(sql);
		}
		if (element > 0)
			edata->message = psprintf("%s%s", edata->message, where);
		ReThrowError(edata);
	}
	PG_END_TRY();

	if (stmts == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("SQL statement of a task must not be empty%s", where),
				 errdetail("The text contains no statement, only white space or comments.")));

	foreach(lc, stmts)
	{
		Node	   *stmt = lfirst_node(RawStmt, lc)->stmt;
		const char *alone;

		if (IsA(stmt, TransactionStmt))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("transaction control statements are not allowed in a task%s", where),
					 errdetail("Each task runs in a transaction of its own, managed by the worker."),
					 errhint("A script of several statements already runs atomically; to commit inside a task, use CALL on a procedure that commits.")));
		if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->filename == NULL &&
			!((CopyStmt *) stmt)->is_program)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("COPY FROM STDIN and COPY TO STDOUT are not allowed in a task%s", where),
					 errdetail("A background task has no client to exchange data with.")));
		if (list_length(stmts) > 1 && (alone = pgbq_must_run_alone(stmt)) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
					 errmsg("%s cannot be combined with other statements in one task%s", alone, where),
					 errdetail("A task of several statements runs as one transaction block, and %s cannot run inside one.", alone),
					 errhint("Enqueue %s as a task of its own.", alone)));
	}
	list_free_deep(stmts);
}

/*
 * pgbq_check_topic_name
 *		Reject empty and overlong topic names (NULL, the default topic, is
 *		fine).  Shared by enqueue and pause/resume.
 */
void
pgbq_check_topic_name(const char *topic)
{
	if (topic == NULL)
		return;
	if (topic[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic must not be an empty string"),
				 errhint("Pass NULL for the default topic.")));
	if (strlen(topic) > PGBQ_TOPIC_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic name is too long"),
				 errdetail("Topic names are limited to %d bytes.", PGBQ_TOPIC_MAXLEN)));
}

/*
 * pgbq_validate_topic
 *		Reject empty, overlong and (with strict_topics) unconfigured topics.
 */
static void
pgbq_validate_topic(const char *topic)
{
	pgbq_check_topic_name(topic);
	if (topic != NULL && pgbq_strict_topics && !pgbq_topic_configured(topic))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("topic \"%s\" is not configured", topic),
				 errhint("Add it to pg_background_queue.topic_config, or turn off pg_background_queue.strict_topics.")));
}

/*
 * pgbq_validate_role
 *		Before PostgreSQL 17 a worker cannot connect as a role without LOGIN.
 */
static void
pgbq_validate_role(Oid roleoid)
{
	HeapTuple	tup;
	bool		canlogin;

	if (!PGBQ_REQUIRE_ROLE_LOGIN)
		return;
	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(roleoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for role %u", roleoid);
	canlogin = ((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin;
	ReleaseSysCache(tup);
	if (!canlogin)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("role \"%s\" cannot run background tasks because it cannot log in",
						GetUserNameFromId(roleoid, false)),
				 errdetail("Tasks run in a worker connected as the role that enqueued them."),
				 errhint("Grant the role LOGIN (ALTER ROLE ... LOGIN), or enqueue as a role that has it.")));
}

/*
 * pgbq_resolve_options
 *		Validate topic, priority and run_at; fill in the topic's default
 *		priority.  Returns the eligibility time (0: now).
 */
static TimestampTz
pgbq_resolve_options(FunctionCallInfo fcinfo, char **topic, int32 *priority)
{
	PgbqTopicPolicy policy;
	TimestampTz run_at = 0;

	*topic = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	pgbq_validate_topic(*topic);
	pgbq_topic_policy(*topic, &policy);

	if (PG_ARGISNULL(2))
		*priority = policy.priority;
	else
	{
		*priority = PG_GETARG_INT32(2);
		if (*priority < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("priority must not be negative"),
					 errdetail("Lower numbers run first; 0 is the highest priority.")));
	}
	if (!PG_ARGISNULL(3))
	{
		run_at = PG_GETARG_TIMESTAMPTZ(3);
		if (TIMESTAMP_NOT_FINITE(run_at))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("run_at must be a finite timestamp")));
	}
	pgbq_validate_role(GetUserId());
	return run_at;
}

/*
 * pgbq_prepare_insert
 *		(Re)prepare this backend's insert statements for the installed
 *		extension.  Inside SPI and a privileged section.
 */
static void
pgbq_prepare_insert(const PgbqCatalog *cat)
{
	Oid			types[5] = {TEXTOID, TEXTOID, OIDOID, INT4OID, TIMESTAMPTZOID};
	Oid			many_types[5] = {TEXTARRAYOID, TEXTOID, OIDOID, INT4OID, TIMESTAMPTZOID};
	SPIPlanPtr	plan;

	if (pgbq_insert_plan != NULL && pgbq_plan_table == cat->table_oid)
		return;
	if (pgbq_insert_plan)
	{
		SPI_freeplan(pgbq_insert_plan);
		SPI_freeplan(pgbq_insert_many_plan);
		pgbq_insert_plan = pgbq_insert_many_plan = NULL;
	}
	plan = SPI_prepare(pgbq_sql_insert(cat), 5, types);
	if (plan == NULL || SPI_keepplan(plan) != 0)
		elog(ERROR, "could not prepare enqueue statement");
	pgbq_insert_plan = plan;
	plan = SPI_prepare(pgbq_sql_insert_many(cat), 5, many_types);
	if (plan == NULL || SPI_keepplan(plan) != 0)
		elog(ERROR, "could not prepare enqueue statement");
	pgbq_insert_many_plan = plan;
	pgbq_plan_table = cat->table_oid;
}

/*
 * pgbq_insert_keyed
 *		pgbq_insert's path for tasks with dedupe keys: one statement per
 *		task, in input order (a key repeated in one call yields the first
 *		task's id).  Inside SPI and the privileged section.
 */
static int64 *
pgbq_insert_keyed(const PgbqCatalog *cat, bool many, Datum sqls, Datum *args,
				  char *nulls, char **keys, Datum after, bool has_after,
				  MemoryContext ctx, uint64 *nids, uint64 *ninserted,
				  bool *runnable)
{
	Datum	   *elems;
	int			nelems;
	int			i;
	int64	   *ids;

	if (many)
		deconstruct_array(DatumGetArrayTypeP(sqls), TEXTOID, -1, false,
						  TYPALIGN_INT, &elems, NULL, &nelems);
	else
	{
		elems = &sqls;
		nelems = 1;
	}
	ids = MemoryContextAlloc(ctx, sizeof(int64) * (nelems + 1));
	*ninserted = 0;
	for (i = 0; i < nelems; i++)
	{
		int			rc;
		bool		isnull;

		args[0] = elems[i];
		if (keys[i] != NULL || has_after)
		{
			bool		inserted;
			const char *state = "pending";
			char	   *errors = NULL;

			if (has_after)
				state = pgbq_prerequisites(cat->qualified_table, after,
										   DatumGetObjectId(args[2]), &errors);
			ids[i] = pgbq_insert_workflow(cat->qualified_table,
										  cat->qualified_schema, args, nulls,
										  keys[i], state, after, has_after,
										  errors, &inserted);
			if (inserted)
			{
				(*ninserted)++;
				if (strcmp(state, "pending") != 0)
					*runnable = false;
			}
			continue;
		}
		rc = SPI_execute_plan(pgbq_insert_plan, args, nulls, false, 0);
		if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
			elog(ERROR, "could not enqueue: %s", SPI_result_code_string(rc));
		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		(*ninserted)++;
	}
	*nids = nelems;
	return ids;
}

/*
 * pgbq_insert
 *		Insert one task or an array of them as the table owner; returns the
 *		ids (in input order) in *ids.  With keys (one dedupe key or NULL
 *		per task, NULL for none at all), tasks with a key are inserted one
 *		by one, or found queued (pgbq_insert_deduped); *ninserted counts
 *		the tasks really written.
 */
static int64 *
pgbq_insert(bool many, Datum sqls, const char *topic, int32 priority,
			TimestampTz run_at, char **keys, Datum after, bool has_after,
			uint64 *nids, uint64 *ninserted, bool *runnable)
{
	PgbqCatalog cat;
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Datum		args[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			rc;
	uint64		i;
	int64	   *ids;
	MemoryContext ctx = CurrentMemoryContext;

	pgbq_catalog_lookup(&cat, false);
	args[0] = sqls;
	if (topic)
		args[1] = CStringGetTextDatum(topic);
	else
		nulls[1] = 'n';
	args[2] = ObjectIdGetDatum(GetUserId());
	args[3] = Int32GetDatum(priority);
	if (run_at != 0)
		args[4] = TimestampTzGetDatum(run_at);
	else
		nulls[4] = 'n';

	nest = pgbq_begin_privileged(cat.owner, &save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	pgbq_prepare_insert(&cat);
	*runnable = true;
	if (keys != NULL || has_after)
	{
		char	   *nokey = NULL;

		ids = pgbq_insert_keyed(&cat, many, sqls, args, nulls,
								keys ? keys : &nokey, after, has_after, ctx,
								nids, ninserted, runnable);
		SPI_finish();
		pgbq_end_privileged(nest, save_userid, save_sec);
		return ids;
	}
	rc = SPI_execute_plan(many ? pgbq_insert_many_plan : pgbq_insert_plan,
						  args, nulls, false, 0);
	if (rc != SPI_OK_INSERT_RETURNING && rc != SPI_OK_SELECT)
		elog(ERROR, "could not enqueue: %s", SPI_result_code_string(rc));
	*nids = SPI_processed;
	*ninserted = SPI_processed;
	ids = MemoryContextAlloc(ctx, sizeof(int64) * (SPI_processed + 1));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	pgbq_end_privileged(nest, save_userid, save_sec);
	return ids;
}

/*
 * pgbq_note_enqueued
 *		Remember n new tasks of the current role for the commit callback.
 */
static void
pgbq_note_enqueued(uint64 n, TimestampTz run_at)
{
	TimestampTz now = GetCurrentTimestamp();

	if (run_at != 0 && run_at > now)
		pgbq_remember_work(GetUserId(), 0, run_at);
	else
		pgbq_remember_work(GetUserId(), (int) Min(n, (uint64) PG_INT32_MAX), 0);
}

/*
 * pg_background_enqueue
 *		Queue one task; returns its id.
 */
Datum
pg_background_enqueue(PG_FUNCTION_ARGS)
{
	char	   *sql;
	char	   *topic;
	int32		priority;
	TimestampTz run_at;
	uint64		n;
	uint64		ninserted;
	int64	   *ids;
	char	   *key = NULL;
	bool		has_after = false;
	bool		runnable;

	pgbq_check_preloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("SQL statement of a task must not be NULL")));
	sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	run_at = pgbq_resolve_options(fcinfo, &topic, &priority);
	pgbq_validate_sql(sql, 0);
	/* 1.2 passes a dedupe key; the 1.1 definition does not */
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
	{
		key = text_to_cstring(PG_GETARG_TEXT_PP(4));
		pgbq_validate_dedupe_key(key, 0);
	}
	/* and prerequisites */
	if (PG_NARGS() > 5 && !PG_ARGISNULL(5))
		has_after = pgbq_after_arg(PG_GETARG_ARRAYTYPE_P(5));

	ids = pgbq_insert(false, PG_GETARG_DATUM(0), topic, priority, run_at,
					  key ? &key : NULL,
					  has_after ? PointerGetDatum(PG_GETARG_ARRAYTYPE_P(5)) : (Datum) 0,
					  has_after, &n, &ninserted, &runnable);
	if (n != 1)
		elog(ERROR, "enqueue inserted " UINT64_FORMAT " rows", n);
	if (ninserted > 0 && runnable)
		pgbq_note_enqueued(1, run_at);
	PG_RETURN_INT64(ids[0]);
}

/*
 * pgbq_dedupe_keys_arg
 *		enqueue_many's dedupe_keys: one key (or NULL) per statement.
 */
static char **
pgbq_dedupe_keys_arg(ArrayType *karr, int nelems)
{
	Datum	   *kelems;
	bool	   *knulls;
	int			nkeys;
	int			i;
	char	  **keys;

	if (ARR_NDIM(karr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("array of dedupe keys must be one-dimensional")));
	deconstruct_array(karr, TEXTOID, -1, false, TYPALIGN_INT,
					  &kelems, &knulls, &nkeys);
	if (nkeys != nelems)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("array of dedupe keys has %d elements, array of SQL statements %d",
						nkeys, nelems),
				 errhint("Pass one key or NULL per statement.")));
	keys = palloc0(sizeof(char *) * (nelems + 1));
	for (i = 0; i < nelems; i++)
	{
		if (knulls[i])
			continue;
		keys[i] = TextDatumGetCString(kelems[i]);
		pgbq_validate_dedupe_key(keys[i], i + 1);
	}
	return keys;
}

/*
 * pg_background_enqueue_many
 *		Queue an array of tasks in one statement; returns their ids in input
 *		order.
 */
Datum
pg_background_enqueue_many(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *elemnulls;
	int			nelems;
	int			i;
	char	   *topic;
	int32		priority;
	TimestampTz run_at;
	uint64		n = 0;
	uint64		ninserted = 0;
	int64	   *ids = NULL;
	char	  **keys = NULL;
	Tuplestorestate *tupstore;
	TupleDesc	tupdesc;
	MemoryContext oldcontext;

	pgbq_check_preloaded();
	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("array of SQL statements must not be NULL")));
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("array of SQL statements must be one-dimensional")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &elemnulls, &nelems);
	run_at = pgbq_resolve_options(fcinfo, &topic, &priority);
	for (i = 0; i < nelems; i++)
	{
		char	   *sql;

		if (elemnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("SQL statement of a task must not be NULL (element %d of the array)",
							i + 1)));
		sql = TextDatumGetCString(elems[i]);
		pgbq_validate_sql(sql, i + 1);
		pfree(sql);
	}
	/* 1.2 passes dedupe keys; the 1.1 definition does not */
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
		keys = pgbq_dedupe_keys_arg(PG_GETARG_ARRAYTYPE_P(4), nelems);
	if (nelems > 0)
	{
		bool		runnable;

		ids = pgbq_insert(true, PointerGetDatum(arr), topic, priority, run_at,
						  keys, (Datum) 0, false, &n, &ninserted, &runnable);
		if (n != (uint64) nelems)
			elog(ERROR, "enqueue inserted " UINT64_FORMAT " rows for %d statements",
				 n, nelems);
		if (ninserted > 0)
			pgbq_note_enqueued(ninserted, run_at);
	}

	oldcontext = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	tupdesc = CreateTemplateTupleDesc(1);
	TupleDescInitEntry(tupdesc, (AttrNumber) 1, "id", INT8OID, -1, 0);
	tupstore = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = tupstore;
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(oldcontext);
	for (i = 0; i < (int) n; i++)
	{
		Datum		v = Int64GetDatum(ids[i]);
		bool		isnull = false;

		tuplestore_putvalues(tupstore, tupdesc, &v, &isnull);
	}
	return (Datum) 0;
}

/*
 * pgbq_update_own_task
 *		Run an UPDATE on one task the caller may manage (a task of a role it
 *		has USAGE of, or any task for superusers) as the table owner.
 *		Returns the owner of the updated row, or InvalidOid.  With
 *		found_running, also tells whether the task is running now: read with
 *		a new snapshot, since a claim that committed while the UPDATE waited
 *		for the row is not visible to the statement's own.
 */
static Oid
pgbq_update_own_task(const PgbqCatalog *cat, const char *set_and_where,
					 int64 id, bool *found_running)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Oid			types[2] = {INT8OID, OIDOID};
	Datum		args[2];
	Oid			owner = InvalidOid;
	int			rc;
	bool		isnull;

	/* a task this batch ran: finished, though its row does not show it yet */
	if (pgbq_batch_ran(id))
	{
		if (found_running != NULL)
			*found_running = false;
		return InvalidOid;
	}
	args[0] = Int64GetDatum(id);
	args[1] = ObjectIdGetDatum(GetUserId());
	nest = pgbq_begin_privileged(cat->owner, &save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args(pgbq_sql_update_own_task(cat, set_and_where),
							   2, types, args, NULL, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "task update failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
	else if (found_running != NULL)
	{
		rc = SPI_execute_with_args(pgbq_sql_own_task_running(cat),
								   2, types, args, NULL, false, 1);
		*found_running = (rc == SPI_OK_SELECT && SPI_processed == 1);
	}
	SPI_finish();
	pgbq_end_privileged(nest, save_userid, save_sec);
	return owner;
}

/*
 * pgbq_cancel_in_batch
 *		Is the task running in a batch of a topic with tasks_per_commit > 1
 *		(worker.c), in a worker of a role the caller may manage?  Then ask
 *		that worker to cancel it and return true.  The row cannot tell: a
 *		task claimed in a batch's transaction looks pending, and its row is
 *		locked, until the batch commits; the UPDATE of pg_background_cancel
 *		would wait for that instead of interrupting the task.
 */
static bool
pgbq_cancel_in_batch(int64 id)
{
	Oid			roleoid = InvalidOid;
	char		topic[NAMEDATALEN];
	bool		topic_isnull = true;
	PgbqTopicPolicy policy;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_RUNNING && s->kind == PGBQ_KIND_TASK &&
			s->dboid == MyDatabaseId && s->task_id == id && s->pid > 0)
		{
			roleoid = s->roleoid;
			topic_isnull = s->topic_isnull;
			strlcpy(topic, s->topic, sizeof(topic));
			break;
		}
	}
	LWLockRelease(pgbq_shared->lock);
	if (!OidIsValid(roleoid))
		return false;
	pgbq_topic_policy(topic_isnull ? NULL : topic, &policy);
	if (policy.tasks_per_commit <= 1)
		return false;
	if (!superuser() && !has_privs_of_role(GetUserId(), roleoid))
		return false;
	return pgbq_signal_cancel(id, MyDatabaseId);
}

/*
 * pg_background_cancel
 *		Cancel a pending or retrying task, or interrupt a running one (its
 *		worker then records it as cancelled).  Cancelled tasks are never
 *		retried.  Returns false for tasks that are already over, or that
 *		the caller may not manage.
 */
Datum
pg_background_cancel(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	PgbqCatalog cat;
	bool		running = false;
	Oid			owner;

	pgbq_check_preloaded();
	pgbq_catalog_lookup(&cat, false);
	if (pgbq_cancel_in_batch(id))
		PG_RETURN_BOOL(true);
	owner = pgbq_update_own_task(&cat,
								 pgbq_sql_cancel(GetUserNameFromId(GetUserId(), false)),
								 id, &running);
	if (OidIsValid(owner))
	{
		pgbq_notify_terminal(id, "cancelled");
		PG_RETURN_BOOL(true);
	}
	if (running)
		PG_RETURN_BOOL(pgbq_signal_cancel(id, MyDatabaseId));
	PG_RETURN_BOOL(false);
}

/*
 * pg_background_retry
 *		Put a failed or cancelled task back in the queue with a fresh retry
 *		budget (its error history is kept).
 */
Datum
pg_background_retry(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	PgbqCatalog cat;
	Oid			owner;

	pgbq_check_preloaded();
	pgbq_catalog_lookup(&cat, false);
	if (!cat.has_workflows)
	{
		/* 1.1's objects (library updated, ALTER EXTENSION UPDATE not yet) */
		owner = pgbq_update_own_task(&cat, pgbq_sql_retry_1_1(),
									 id, NULL);
		if (!OidIsValid(owner))
			PG_RETURN_BOOL(false);
		pgbq_remember_work(owner, 1, 0);
		PG_RETURN_BOOL(true);
	}
	pgbq_lock_prerequisites(&cat, id, GetUserId());
	owner = pgbq_update_own_task(&cat, pgbq_sql_retry(&cat),
								 id, NULL);
	if (!OidIsValid(owner))
		PG_RETURN_BOOL(false);
	pgbq_remember_work(owner, 1, 0);
	PG_RETURN_BOOL(true);
}

/*
 * pg_background_reschedule
 *		Change the priority and/or start time of a pending, retrying or
 *		waiting task the caller may manage, validated as at enqueue.  A
 *		waiting task keeps its new run_at for when it is released.  Returns
 *		false for any other task.
 */
Datum
pg_background_reschedule(PG_FUNCTION_ARGS)
{
	int64		id;
	PgbqCatalog cat;
	Oid			owner;
	int32		priority = 0;
	TimestampTz run_at = 0;
	char	   *set;

	pgbq_check_preloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("task id must not be NULL")));
	if (PG_ARGISNULL(1) && PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("nothing to reschedule"),
				 errhint("Pass a new priority, a new run_at, or both.")));
	id = PG_GETARG_INT64(0);
	if (!PG_ARGISNULL(1))
	{
		priority = PG_GETARG_INT32(1);
		if (priority < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("priority must not be negative"),
					 errdetail("Lower numbers run first; 0 is the highest priority.")));
	}
	if (!PG_ARGISNULL(2))
	{
		run_at = PG_GETARG_TIMESTAMPTZ(2);
		if (TIMESTAMP_NOT_FINITE(run_at))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("run_at must be a finite timestamp")));
	}
	set = pgbq_sql_reschedule(PG_ARGISNULL(1) ? NULL : &priority,
							  PG_ARGISNULL(2) ? NULL : &run_at);
	pgbq_catalog_lookup(&cat, false);
	owner = pgbq_update_own_task(&cat, set, id, NULL);
	if (!OidIsValid(owner))
		PG_RETURN_BOOL(false);
	if (!PG_ARGISNULL(2) && PG_GETARG_TIMESTAMPTZ(2) > GetCurrentTimestamp())
		pgbq_remember_work(owner, 0, PG_GETARG_TIMESTAMPTZ(2));
	else
		pgbq_remember_work(owner, 1, 0);
	PG_RETURN_BOOL(true);
}

/*
 * pg_background_queue_purge
 *		Delete the caller's terminal tasks closed before now() - older_than
 *		(superusers: everyone's), folding them into the statistics table.
 */
Datum
pg_background_queue_purge(PG_FUNCTION_ARGS)
{
	Interval   *older_than = PG_GETARG_INTERVAL_P(0);
	PgbqCatalog cat;
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Oid			types[2] = {INTERVALOID, OIDOID};
	Datum		args[2];
	char		nulls[2] = {' ', ' '};
	int			rc;
	bool		isnull;
	int64		n;

	pgbq_check_preloaded();
	if (older_than->month < 0 || older_than->day < 0 || older_than->time < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("older_than must not be negative")));
	pgbq_catalog_lookup(&cat, false);
	args[0] = PointerGetDatum(older_than);
	args[1] = ObjectIdGetDatum(GetUserId());
	if (superuser())
		nulls[1] = 'n';
	nest = pgbq_begin_privileged(cat.owner, &save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args(pgbq_sql_purge(&cat),
							   2, types, args, nulls, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "purge failed: %s", SPI_result_code_string(rc));
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	pgbq_end_privileged(nest, save_userid, save_sec);
	PG_RETURN_INT64(n);
}
