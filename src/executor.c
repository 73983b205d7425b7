/*-------------------------------------------------------------------------
 *
 * executor.c
 *	  Running a task's SQL text in a worker the way a client's simple query
 *	  would run, and resetting session state between tasks.
 *
 * Statements run as top-level portals, exactly as exec_simple_query does:
 * a single statement may be one that cannot run inside a transaction block
 * (VACUUM, CREATE INDEX CONCURRENTLY, a procedure that COMMITs), and a
 * script of several statements runs in one implicit transaction block, so
 * it is all or nothing.  The caller has started a transaction and commits
 * it after marking the task finished, so for transactional statements the
 * effects and the finished mark commit together.
 *
 * statement_timeout applies to each statement, as in a client session; the
 * task's topic timeout (worker.c) covers the whole attempt.
 *
 * With a PgbqResult to fill, a DestReceiver of ours collects the rows of
 * every statement that returns rows (a SELECT, even of no rows, RETURNING,
 * SHOW, EXPLAIN, ...) as the text of a JSON array of objects, each made by
 * row_to_json (duplicate column names: jsonb keeps the last); the next such
 * statement starts over, so the last one's rows are what the task keeps.
 * Statements that return no rows never reach rStartup and cost nothing.
 * Once the text would exceed pg_background_queue.max_result_size the
 * array stops growing at a row boundary and is marked truncated.  A script
 * may SET the parameter (it is superuser-only); the value when a statement
 * starts applies to it, and 0 keeps nothing.
 *
 * Parse and plan trees live in the caller's memory context, not in a
 * transaction context, because statements such as VACUUM commit and start
 * transactions while we still walk the list.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/async.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/portal.h"
#include "utils/ps_status.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "compat.h"
#include "pgbq.h"

/* Our DestReceiver: collects a statement's rows as JSON text. */
typedef struct PgbqResultReceiver
{
	DestReceiver pub;
	MemoryContext ctx;			/* where the text lives (the caller's) */
	StringInfoData buf;			/* "[{...},{...}" so far; data NULL: none */
	TupleDesc	tupdesc;		/* blessed copy of the statement's row type */
	int			limit;			/* max_result_size when the statement began */
	bool		truncated;
} PgbqResultReceiver;

/*
 * pgbq_result_startup
 *		A statement is about to return rows: forget an earlier statement's
 *		and start an empty array.
 */
static void
pgbq_result_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	PgbqResultReceiver *r = (PgbqResultReceiver *) self;
	MemoryContext old = MemoryContextSwitchTo(r->ctx);

	(void) operation;
	if (r->buf.data != NULL)
		pfree(r->buf.data);
	initStringInfo(&r->buf);
	appendStringInfoChar(&r->buf, '[');
	r->tupdesc = BlessTupleDesc(CreateTupleDescCopy(typeinfo));
	r->limit = pgbq_max_result_size;
	r->truncated = false;
	if (r->limit <= 0)
	{
		/* set to 0 by the task's script: keep nothing, skip the rows */
		pfree(r->buf.data);
		r->buf.data = NULL;
		r->truncated = true;
	}
	MemoryContextSwitchTo(old);
}

/*
 * pgbq_result_receive
 *		Append one row as a JSON object, unless the array is full.
 */
static bool
pgbq_result_receive(TupleTableSlot *slot, DestReceiver *self)
{
	PgbqResultReceiver *r = (PgbqResultReceiver *) self;
	MemoryContext old;
	HeapTuple	tuple;
	Datum		json;
	text	   *t;
	int			len;

	if (r->truncated)
		return true;
	old = MemoryContextSwitchTo(r->ctx);
	tuple = ExecCopySlotHeapTuple(slot);
	json = DirectFunctionCall1(row_to_json,
							   heap_copy_tuple_as_datum(tuple, r->tupdesc));
	t = DatumGetTextPP(json);
	len = VARSIZE_ANY_EXHDR(t);
	/* the separator and the closing bracket count too */
	if ((int64) r->buf.len + len + 2 > r->limit)
		r->truncated = true;
	else
	{
		if (r->buf.len > 1)
			appendStringInfoChar(&r->buf, ',');
		appendBinaryStringInfo(&r->buf, VARDATA_ANY(t), len);
	}
	pfree(DatumGetPointer(json));
	heap_freetuple(tuple);
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * pgbq_result_shutdown
 *		Nothing to do at the end of a statement: the text is kept.
 */
static void
pgbq_result_shutdown(DestReceiver *self)
{
	(void) self;
}

/*
 * pgbq_result_destroy
 *		The receiver is ours and static; nothing to free.
 */
static void
pgbq_result_destroy(DestReceiver *self)
{
	(void) self;
}

/*
 * pgbq_execute_sql
 *		Run every statement of sql; errors propagate to the caller.  With
 *		result, store the rows of the last statement that returned rows
 *		there (in the caller's memory context), unless max_result_size is 0.
 */
void
pgbq_execute_sql(const char *sql, PgbqResult *result)
{
	PgbqResultReceiver capture;
	MemoryContext ctx = CurrentMemoryContext;
	List	   *parsetree_list;
	ListCell   *lc;
	bool		use_implicit_block;

	if (result != NULL)
	{
		result->isnull = true;
		result->truncated = false;
		result->value = (Datum) 0;
		if (pgbq_max_result_size <= 0)
			result = NULL;
	}
	memset(&capture, 0, sizeof(capture));
	if (result != NULL)
	{
		capture.pub.receiveSlot = pgbq_result_receive;
		capture.pub.rStartup = pgbq_result_startup;
		capture.pub.rShutdown = pgbq_result_shutdown;
		capture.pub.rDestroy = pgbq_result_destroy;
		capture.pub.mydest = DestNone;
		capture.ctx = ctx;
	}

	parsetree_list = pg_parse_query(sql);
	use_implicit_block = (list_length(parsetree_list) > 1);
	if (use_implicit_block)
		BeginImplicitTransactionBlock();

	foreach(lc, parsetree_list)
	{
		RawStmt    *parsetree = lfirst_node(RawStmt, lc);
		bool		snapshot_set = false;
		CommandTag	commandTag;
		QueryCompletion qc;
		List	   *querytree_list;
		List	   *plantree_list;
		Portal		portal;
		DestReceiver *receiver;
		int16		format = 0;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(ctx);

		/*
		 * statement_timeout (the role's or database's default, or SET by an
		 * earlier statement of the script) covers each statement, as for a
		 * client's simple query.
		 */
		if (StatementTimeout > 0)
			enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);

		commandTag = CreateCommandTag(parsetree->stmt);
		set_ps_display(GetCommandTagName(commandTag));

		if (analyze_requires_snapshot(parsetree))
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			snapshot_set = true;
		}
		querytree_list = pg_analyze_and_rewrite_fixedparams(parsetree, sql,
															NULL, 0, NULL);
		plantree_list = pg_plan_queries(querytree_list, sql,
										CURSOR_OPT_PARALLEL_OK, NULL);
		if (snapshot_set)
			PopActiveSnapshot();

		CHECK_FOR_INTERRUPTS();

		portal = CreatePortal("", true, true);
		portal->visible = false;
		PortalDefineQuery(portal, NULL, sql, commandTag, plantree_list, NULL);
		PortalStart(portal, NULL, 0, InvalidSnapshot);
		PortalSetResultFormat(portal, 1, &format);

		receiver = result ? &capture.pub : CreateDestReceiver(DestNone);
		(void) pgbq_portal_run(portal, FETCH_ALL, true, receiver, receiver, &qc);
		receiver->rDestroy(receiver);
		PortalDrop(portal, false);
		disable_timeout(STATEMENT_TIMEOUT, false);

		/* Later statements of the script see this one's effects. */
		if (lnext(parsetree_list, lc) != NULL)
			CommandCounterIncrement();
	}

	if (use_implicit_block)
		EndImplicitTransactionBlock();
	MemoryContextSwitchTo(ctx);
	if (result != NULL && capture.buf.data != NULL)
	{
		appendStringInfoChar(&capture.buf, ']');
		result->value = DirectFunctionCall1(jsonb_in,
											CStringGetDatum(capture.buf.data));
		result->isnull = false;
		result->truncated = capture.truncated;
		pfree(capture.buf.data);
	}
	set_ps_display("idle");
}

/*
 * pgbq_sql_batchable
 *		May this task join a batch of tasks committed together (worker.c)?
 *		Only a single plain SELECT, INSERT, UPDATE, DELETE or MERGE: a
 *		utility statement may refuse to run in a transaction block (VACUUM,
 *		CREATE INDEX CONCURRENTLY), commit (CALL, DO) or change the
 *		transaction (SET TRANSACTION), and a script of several statements
 *		is its own implicit transaction block.  SQL that does not parse is
 *		not batchable either; it fails when it runs alone.  Needs no
 *		transaction: only the raw parser runs.
 */
bool
pgbq_sql_batchable(const char *sql)
{
	MemoryContext ctx = CurrentMemoryContext;
	MemoryContext parse_ctx;
	volatile bool batchable = false;

	/* the parse tree is thrown away with its context */
	parse_ctx = AllocSetContextCreate(ctx, "pg_background_queue batch check",
									  ALLOCSET_SMALL_SIZES);
	MemoryContextSwitchTo(parse_ctx);
	PG_TRY();
	{
		List	   *stmts = raw_parser(sql, RAW_PARSE_DEFAULT);

		if (list_length(stmts) == 1)
		{
			Node	   *stmt = linitial_node(RawStmt, stmts)->stmt;

			switch (nodeTag(stmt))
			{
				case T_SelectStmt:
				case T_InsertStmt:
				case T_UpdateStmt:
				case T_DeleteStmt:
				case T_MergeStmt:
					/* SELECT ... INTO creates a table: a utility */
					batchable = !(IsA(stmt, SelectStmt) &&
								  ((SelectStmt *) stmt)->intoClause != NULL);
					break;
				default:
					break;
			}
		}
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(ctx);
		FlushErrorState();
		batchable = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(ctx);
	MemoryContextDelete(parse_ctx);
	return batchable;
}

/*
 * pgbq_fire_deferred_triggers
 *		Run the deferred triggers the task queued (deferred foreign keys and
 *		unique constraints, constraint triggers) now, as SET CONSTRAINTS ALL
 *		IMMEDIATE would: a task of a batch must fail in its own
 *		subtransaction, not at the batch's commit.
 */
void
pgbq_fire_deferred_triggers(void)
{
	ConstraintsSetStmt *stmt = makeNode(ConstraintsSetStmt);

	stmt->constraints = NIL;
	stmt->deferred = false;
	PushActiveSnapshot(GetTransactionSnapshot());
	AfterTriggerSetState(stmt);
	PopActiveSnapshot();
	pfree(stmt);
}

/*
 * pgbq_reset_session
 *		Undo whatever session state the previous task left behind: what
 *		DISCARD ALL does, minus the plan cache reset (our own cached plans
 *		are not the task's business).  Resetting session_authorization also
 *		drops any SET ROLE.  Runs inside a transaction.
 */
void
pgbq_reset_session(void)
{
	PortalHashTableDeleteAll();
	SetPGVariable("session_authorization", NIL, false);
	ResetAllOptions();
	DropAllPreparedStatements();
	Async_UnlistenAll();
	LockReleaseAll(USER_LOCKMETHOD, true);
	ResetTempTableNamespace();
	ResetSequenceCaches();
}
