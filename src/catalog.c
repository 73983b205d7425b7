/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  Finding the extension's objects, running bookkeeping SQL with the
 *	  table owner's rights, and recording failed attempts.
 *
 * Bookkeeping statements run as the owner of pg_background_tasks (which
 * bypasses its row level security) inside a "privileged section": the
 * user id is switched with SECURITY_RESTRICTED_OPERATION and search_path
 * is pinned to pg_catalog, pg_temp, the same protection a SECURITY DEFINER
 * function with a SET clause gets.  Every statement also qualifies every
 * name, so nothing a user puts on its search_path can take part.
 *
 * The statements that change a task row's state, and the table of those
 * changes (who makes each, under which lock, in which transaction), are in
 * task_rows.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "commands/dbcommands.h"
#include "jit/jit.h"
#include "optimizer/cost.h"
#include "optimizer/optimizer.h"
#include "parser/parse_expr.h"
#include "parser/parser.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"

#include "compat.h"
#include "pgbq.h"
#include "task_rows.h"

/*
 * pgbq_extension_namespace
 *		Schema of an extension, read from pg_extension.
 */
static Oid
pgbq_extension_namespace(Oid extoid)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/*
 * pgbq_catalog_lookup
 *		Locate the extension, its schema, the task table and its owner.
 *		Must run inside a transaction.  Strings are allocated in the current
 *		memory context.  Returns false (with missing_ok) if not installed.
 */
bool
pgbq_catalog_lookup(PgbqCatalog *cat, bool missing_ok)
{
	HeapTuple	tup;
	char	   *nspname;

	memset(cat, 0, sizeof(PgbqCatalog));
	cat->extoid = get_extension_oid(PGBQ_EXTENSION_NAME, true);
	if (OidIsValid(cat->extoid))
		cat->nspoid = pgbq_extension_namespace(cat->extoid);
	if (OidIsValid(cat->nspoid))
		cat->table_oid = get_relname_relid("pg_background_tasks", cat->nspoid);
	if (!OidIsValid(cat->table_oid))
	{
		if (missing_ok)
			return false;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"%s\" is not installed in database \"%s\"",
						PGBQ_EXTENSION_NAME, get_database_name(MyDatabaseId)),
				 errhint("Run CREATE EXTENSION %s.", PGBQ_EXTENSION_NAME)));
	}
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(cat->table_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", cat->table_oid);
	cat->owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	/*
	 * Between installing a new library and ALTER EXTENSION ... UPDATE the
	 * SQL objects are older than the code: what needs 1.2's columns must
	 * then behave as before (or not be reachable, like new functions).
	 */
	cat->has_workflows = (get_attnum(cat->table_oid, "after") != InvalidAttrNumber);
	/* 1.3: without the trigger nothing lowers the claim floor */
	cat->has_claim_floor = OidIsValid(get_trigger_oid(cat->table_oid,
													  "pg_background_tasks_claimable",
													  true));
	cat->has_results = (get_attnum(cat->table_oid, "result") != InvalidAttrNumber);

	nspname = get_namespace_name(cat->nspoid);
	cat->qualified_schema = pstrdup(quote_identifier(nspname));
	cat->qualified_table = quote_qualified_identifier(nspname,
													  "pg_background_tasks");
	return true;
}

/*
 * pgbq_begin_privileged
 *		Switch to the table owner with a pinned search_path.  Returns the GUC
 *		nest level to pass to pgbq_end_privileged.  An error inside the
 *		section is cleaned up by transaction abort.
 */
int
pgbq_begin_privileged(Oid owner, Oid *save_userid, int *save_sec_context)
{
	int			nestlevel;

	GetUserIdAndSecContext(save_userid, save_sec_context);
	SetUserIdAndSecContext(owner, *save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * The settings every bookkeeping statement runs with, whatever a task left
 * in its session or its role's and database's defaults say: no timeout can
 * cut a claim or a finish short, no planner switch or parallel/JIT setting
 * changes how the claim runs, replication-role triggers and row level
 * security behave as for the owner, and literals parse the same way.  A
 * name this server does not know (renamed or newer parameters) is skipped.
 * Values are written as GetConfigOption shows them, so an unchanged value
 * costs one lookup and no assignment.
 *
 * Each also names its C variable and the value it holds when pinned: the
 * variable is read first, directly, and only a setting whose variable
 * differs is looked up by name and assigned (looking all of them up by name
 * cost about 5% of a batch's CPU, though a task rarely changes any).
 */
typedef struct PgbqPinnedSetting
{
	const char *name;
	const char *value;			/* as GetConfigOption shows it */
	const void *var;			/* its variable; NULL: the server has none */
	bool		is_bool;		/* the variable is a bool, else an int/enum */
	int			pinned;			/* the variable's value when pinned */
} PgbqPinnedSetting;

/* A planner switch, pinned on; its variable bears the parameter's name. */
#define PGBQ_PIN_PLANNER_SWITCH(var) {#var, "on", &var, true, true}

static const PgbqPinnedSetting pgbq_bookkeeping_settings[] = {
	{"statement_timeout", "0", &StatementTimeout, false, 0},
	{"lock_timeout", "0", &LockTimeout, false, 0},
	{"idle_in_transaction_session_timeout", "0",
	&IdleInTransactionSessionTimeout, false, 0},
	{"transaction_timeout", "0", PGBQ_TRANSACTION_TIMEOUT_VAR, false, 0},
	{"session_replication_role", "origin", &SessionReplicationRole, false,
	SESSION_REPLICATION_ROLE_ORIGIN},
	{"row_security", "on", &row_security, true, true},
	{"standard_conforming_strings", "on", &standard_conforming_strings, true,
	true},
	{"transform_null_equals", "off", &Transform_null_equals, true, false},
	{"plan_cache_mode", "auto", &plan_cache_mode, false, PLAN_CACHE_MODE_AUTO},
	{"jit", "off", &jit_enabled, true, false},
	{"max_parallel_workers_per_gather", "0", &max_parallel_workers_per_gather,
	false, 0},
	{"force_parallel_mode", "off", PGBQ_FORCE_PARALLEL_MODE_VAR, false, 0},
	{"debug_parallel_query", "off", PGBQ_DEBUG_PARALLEL_QUERY_VAR, false, 0},
	PGBQ_PIN_PLANNER_SWITCH(enable_bitmapscan),
	PGBQ_PIN_PLANNER_SWITCH(enable_hashagg),
	PGBQ_PIN_PLANNER_SWITCH(enable_hashjoin),
	PGBQ_PIN_PLANNER_SWITCH(enable_incremental_sort),
	PGBQ_PIN_PLANNER_SWITCH(enable_indexonlyscan),
	PGBQ_PIN_PLANNER_SWITCH(enable_indexscan),
	PGBQ_PIN_PLANNER_SWITCH(enable_material),
	PGBQ_PIN_PLANNER_SWITCH(enable_memoize),
	PGBQ_PIN_PLANNER_SWITCH(enable_mergejoin),
	PGBQ_PIN_PLANNER_SWITCH(enable_nestloop),
	PGBQ_PIN_PLANNER_SWITCH(enable_seqscan),
	PGBQ_PIN_PLANNER_SWITCH(enable_sort),
	PGBQ_PIN_PLANNER_SWITCH(enable_tidscan),
};

/*
 * Whether the variables may be trusted (see pgbq_pin_bookkeeping_settings):
 * unknown until the first pinning by name checks them.
 */
typedef enum PgbqPinCheck
{
	PGBQ_PIN_UNCHECKED,
	PGBQ_PIN_VARIABLES,
	PGBQ_PIN_NAMES_ONLY
} PgbqPinCheck;

static PgbqPinCheck pgbq_pin_check = PGBQ_PIN_UNCHECKED;

/*
 * pgbq_pinned_variable_holds
 *		Whether a pinned setting's variable holds its pinned value (true for
 *		a setting this server lacks).
 */
static bool
pgbq_pinned_variable_holds(const PgbqPinnedSetting *p)
{
	if (p->var == NULL)
		return true;
	if (p->is_bool)
		return *(const bool *) p->var == (bool) p->pinned;
	return *(const int *) p->var == p->pinned;
}

/*
 * pgbq_pin_bookkeeping_settings
 *		Inside a GUC nest level (see pgbq_start_bookkeeping_xact and
 *		pgbq_begin_privileged): set pgbq_bookkeeping_settings where they
 *		differ, until the nest level or the transaction ends.  Also makes
 *		the transaction writable again: a task may have made its own
 *		transaction read-only, and bookkeeping writes.
 *
 *		A setting whose variable holds its pinned value is not looked up by
 *		name.  The first pinning in a process checks the table: right after
 *		it, every variable must hold its pinned value.  If one does not (a
 *		mistake in the table, a server that keeps a setting elsewhere), the
 *		process looks every setting up by name from then on.
 */
void
pgbq_pin_bookkeeping_settings(void)
{
	size_t		i;

	XactReadOnly = false;
	for (i = 0; i < lengthof(pgbq_bookkeeping_settings); i++)
	{
		const PgbqPinnedSetting *p = &pgbq_bookkeeping_settings[i];
		const char *current;

		if (pgbq_pin_check == PGBQ_PIN_VARIABLES &&
			pgbq_pinned_variable_holds(p))
			continue;
		current = GetConfigOption(p->name, true, false);
		if (current == NULL || strcmp(current, p->value) == 0)
			continue;
		(void) set_config_option(p->name, p->value, PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	}
	if (pgbq_pin_check == PGBQ_PIN_UNCHECKED)
	{
		pgbq_pin_check = PGBQ_PIN_VARIABLES;
		for (i = 0; i < lengthof(pgbq_bookkeeping_settings); i++)
		{
			if (!pgbq_pinned_variable_holds(&pgbq_bookkeeping_settings[i]))
			{
				pgbq_pin_check = PGBQ_PIN_NAMES_ONLY;
				elog(WARNING, "pg_background_queue: the variable of setting \"%s\" does not hold its pinned value; settings are looked up by name",
					 pgbq_bookkeeping_settings[i].name);
				break;
			}
		}
	}
}

/*
 * pgbq_start_bookkeeping_xact
 *		Start a transaction of a worker's own (claim, record a task's end,
 *		give a task back, maintenance): READ COMMITTED, READ WRITE, not
 *		DEFERRABLE, with the pinned settings, however the session's
 *		default_transaction_* were left (StartTransaction copies them).  The
 *		settings are undone when the transaction ends.
 */
void
pgbq_start_bookkeeping_xact(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	/* before the transaction's first snapshot, so they take effect */
	XactIsoLevel = XACT_READ_COMMITTED;
	XactDeferrable = false;
	(void) NewGUCNestLevel();
	pgbq_pin_bookkeeping_settings();
}

/*
 * pgbq_end_privileged
 *		Leave a privileged section.
 */
void
pgbq_end_privileged(int nestlevel, Oid save_userid, int save_sec_context)
{
	AtEOXact_GUC(true, nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
}

/*
 * pgbq_state_retry_decision
 *		What a failed attempt leads to: "cancelled", "retrying" (with the
 *		delay 2^attempts seconds) or "failed" once retry_count retries have
 *		been used.
 */
const char *
pgbq_state_retry_decision(int attempts, const PgbqTopicPolicy *policy,
						  bool cancelled, int *delay_sec)
{
	*delay_sec = 0;
	if (cancelled)
		return "cancelled";
	if (attempts <= policy->retry_count)
	{
		*delay_sec = 1 << Min(Max(attempts, 1), 24);
		return "retrying";
	}
	return "failed";
}

/*
 * Notifications of a task worker are sent after the commit that carries
 * them, in a transaction of their own.  PostgreSQL serializes every
 * committing transaction that has notifications behind one lock held
 * through its commit record's WAL flush; sent from the task's durable
 * commit, that lock would serialize all workers' flushes and defeat group
 * commit.  A transaction with nothing but notifications commits without
 * waiting for its flush and holds the lock only briefly.
 *
 * Workers of one database share those transactions (pgbq_shared->notify):
 * a worker whose database has a flusher at work leaves its notifications
 * in the shared buffer instead; otherwise it becomes the flusher and sends
 * its own and everyone's in rounds, taking the database's entries out of
 * the buffer in each.  Invariant: an entry of database D is in the buffer
 * only while a worker of D holds the flusher role for D; the flusher gives
 * the role up in the same critical section as its last take, so nothing
 * is left behind without a flusher (an exit gives it up too: the next
 * worker of D to flush becomes the flusher and takes what is left).  Under
 * load this sends one transaction for the ends of several workers' tasks
 * instead of one per task; a lone worker sends its own at once, as before.
 */
#define PGBQ_NOTIFY_ROUNDS		4	/* transactions a flusher sends at most */
#define PGBQ_NOTIFY_SHARE_MAX	8	/* more held than this: sent alone */

static bool pgbq_notify_deferred = false;
static PgbqSharedNotify *pgbq_pending = NULL;
static int	pgbq_npending = 0;
static int	pgbq_maxpending = 0;

static void pgbq_notify_at_exit(int code, Datum arg);

/*
 * pgbq_send_notify
 *		Queue one NOTIFY in the current transaction.
 */
static void
pgbq_send_notify(int64 task_id, const char *state)
{
	char		payload[64];

	snprintf(payload, sizeof(payload), INT64_FORMAT " %s", task_id, state);
	Async_Notify(PGBQ_NOTIFY_CHANNEL, payload);
}

/*
 * pgbq_defer_notifications
 *		From now on this process (a task worker) holds its notifications
 *		until pgbq_flush_notifications().
 */
void
pgbq_defer_notifications(void)
{
	if (!pgbq_notify_deferred)
		before_shmem_exit(pgbq_notify_at_exit, (Datum) 0);
	pgbq_notify_deferred = true;
}

/*
 * pgbq_forget_notifications
 *		The transaction that would have carried the held notifications
 *		aborted: drop them.
 */
void
pgbq_forget_notifications(void)
{
	pgbq_npending = 0;
}

/*
 * pgbq_held_notifications
 *		How many notifications are held now; with pgbq_forget_notifications_
 *		since, a subtransaction that rolls back drops only its own.
 */
int
pgbq_held_notifications(void)
{
	return pgbq_npending;
}

/*
 * pgbq_forget_notifications_since
 *		Drop the notifications held after pgbq_held_notifications() returned
 *		n (the subtransaction that would have carried them rolled back).
 */
void
pgbq_forget_notifications_since(int n)
{
	if (n < pgbq_npending)
		pgbq_npending = n;
}

/*
 * pgbq_send_held
 *		Send the held notifications in a short transaction of their own.  A
 *		failure (say, a full notification queue because a listener stopped
 *		reading) loses them with a WARNING: the tasks' outcomes are
 *		committed, and listeners poll as a fallback.
 *
 *		That transaction commits without waiting for its WAL flush
 *		(synchronous_commit off): notifications do not survive a crash
 *		whatever the commit waits for (the queue is emptied at restart),
 *		listeners see them as soon as the commit is in the commit log, and
 *		the task's own outcome was flushed by the commit before.  A second
 *		flush per task would otherwise halve the throughput of durable
 *		commits.
 */
static void
pgbq_send_held(void)
{
	MemoryContext oldcontext = CurrentMemoryContext;

	PG_TRY();
	{
		StartTransactionCommand();
		(void) set_config_option("synchronous_commit", "off",
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
		for (int i = 0; i < pgbq_npending; i++)
			pgbq_send_notify(pgbq_pending[i].task_id, pgbq_pending[i].state);
		pgbq_npending = 0;
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		ereport(WARNING,
				(errmsg("pg_background_queue could not send %d notification(s): %s",
						pgbq_npending, edata->message)));
		pgbq_npending = 0;
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcontext);
}

/*
 * pgbq_notify_reserve
 *		Room in pgbq_pending for n more (allocated outside any spinlock:
 *		pgbq_notify_take fills it under one).
 */
static void
pgbq_notify_reserve(int n)
{
	int			need = pgbq_npending + n;

	if (need <= pgbq_maxpending)
		return;
	if (pgbq_pending == NULL)
		pgbq_pending = MemoryContextAlloc(TopMemoryContext,
										  need * sizeof(PgbqSharedNotify));
	else
		pgbq_pending = repalloc(pgbq_pending, need * sizeof(PgbqSharedNotify));
	pgbq_maxpending = need;
}

/*
 * pgbq_notify_become_flusher
 *		Take the flusher role for this database unless another process
 *		holds it (*other set) or every role is taken.  Caller holds the
 *		mutex.
 */
static bool
pgbq_notify_become_flusher(PgbqNotifyBuffer *nb, bool *other)
{
	int			free = -1;

	*other = false;
	for (int i = 0; i < PGBQ_NOTIFY_FLUSHERS; i++)
	{
		if (nb->flushing_db[i] == MyDatabaseId)
		{
			*other = true;
			return false;
		}
		if (free < 0 && nb->flushing_db[i] == InvalidOid)
			free = i;
	}
	if (free < 0)
		return false;
	nb->flushing_db[free] = MyDatabaseId;
	nb->flushing_pid[free] = MyProcPid;
	return true;
}

/*
 * pgbq_notify_stop_flushing
 *		Give up this process's flusher role.  Caller holds the mutex.
 */
static void
pgbq_notify_stop_flushing(PgbqNotifyBuffer *nb)
{
	for (int i = 0; i < PGBQ_NOTIFY_FLUSHERS; i++)
	{
		if (nb->flushing_pid[i] == MyProcPid)
		{
			nb->flushing_db[i] = InvalidOid;
			nb->flushing_pid[i] = 0;
		}
	}
}

/*
 * pgbq_notify_take
 *		Move this database's entries from the shared buffer to the held
 *		ones (room reserved by the caller).  Caller holds the mutex.
 */
static void
pgbq_notify_take(PgbqNotifyBuffer *nb)
{
	int			kept = 0;

	for (int i = 0; i < nb->count; i++)
	{
		if (nb->entries[i].dboid == MyDatabaseId)
			pgbq_pending[pgbq_npending++] = nb->entries[i];
		else
			nb->entries[kept++] = nb->entries[i];
	}
	nb->count = kept;
}

/*
 * pgbq_notify_at_exit
 *		before_shmem_exit callback: a worker leaving while it flushes (an
 *		error it could not survive, a shutdown) gives the role up, so that
 *		the next worker of its database takes what is left in the buffer.
 */
static void
pgbq_notify_at_exit(int code, Datum arg)
{
	(void) code;
	(void) arg;
	if (pgbq_shared == NULL)
		return;
	SpinLockAcquire(&pgbq_shared->notify.mutex);
	pgbq_notify_stop_flushing(&pgbq_shared->notify);
	SpinLockRelease(&pgbq_shared->notify.mutex);
}

/*
 * pgbq_flush_notifications
 *		After the commit that carried them, see that the held notifications
 *		are sent: left to the database's flusher if one is at work (and the
 *		shared buffer has room), else sent by this worker as the flusher,
 *		together with the entries others left, in at most
 *		PGBQ_NOTIFY_ROUNDS transactions (see the comment above
 *		PGBQ_NOTIFY_ROUNDS).  Many held at once (a batch's end) are sent
 *		alone.
 */
void
pgbq_flush_notifications(void)
{
	PgbqNotifyBuffer *nb;
	bool		other;

	if (pgbq_npending == 0)
		return;
	Assert(!IsTransactionState());
	/* no session of ours can receive them (see listeners.c) */
	if (!pgbq_anyone_listens(MyDatabaseId))
	{
		pgbq_npending = 0;
		return;
	}
	if (pgbq_shared == NULL || pgbq_npending > PGBQ_NOTIFY_SHARE_MAX)
	{
		pgbq_send_held();
		return;
	}
	nb = &pgbq_shared->notify;
	pgbq_notify_reserve(PGBQ_NOTIFY_BUFFER);
	SpinLockAcquire(&nb->mutex);
	if (!pgbq_notify_become_flusher(nb, &other))
	{
		bool		left = false;

		/* a flusher of this database is at work: leave them to it */
		if (other && nb->count + pgbq_npending <= PGBQ_NOTIFY_BUFFER)
		{
			memcpy(&nb->entries[nb->count], pgbq_pending,
				   pgbq_npending * sizeof(PgbqSharedNotify));
			nb->count += pgbq_npending;
			left = true;
		}
		SpinLockRelease(&nb->mutex);
		if (left)
			pgbq_npending = 0;
		else
			pgbq_send_held();
		return;
	}
	for (int round = 0;; round++)
	{
		bool		done;

		/* the mutex is held here */
		pgbq_notify_take(nb);
		done = (pgbq_npending == 0 || round == PGBQ_NOTIFY_ROUNDS - 1);
		if (done)
			pgbq_notify_stop_flushing(nb);
		SpinLockRelease(&nb->mutex);
		if (pgbq_npending > 0)
			pgbq_send_held();
		if (done)
			break;
		SpinLockAcquire(&nb->mutex);
	}
}

/*
 * pgbq_notify_terminal
 *		Tell listeners that a task reached a terminal state: at the commit of
 *		the current transaction, or, in a task worker, just after it.
 */
void
pgbq_notify_terminal(int64 task_id, const char *state)
{
	pgbq_wait_note_end();
	if (!pgbq_notify)
		return;
	if (!pgbq_notify_deferred)
	{
		pgbq_send_notify(task_id, state);
		return;
	}
	if (pgbq_npending == pgbq_maxpending)
		pgbq_notify_reserve(Max(8, pgbq_maxpending));	/* doubles the room */
	pgbq_pending[pgbq_npending].dboid = MyDatabaseId;
	pgbq_pending[pgbq_npending].task_id = task_id;
	strlcpy(pgbq_pending[pgbq_npending].state, state,
			sizeof(pgbq_pending[pgbq_npending].state));
	pgbq_npending++;
}

/*
 * pgbq_record_attempt_failure
 *		Record a failed (or cancelled, or interrupted) attempt of a task in
 *		the current transaction: next state per the topic's retry policy,
 *		the error in `errors` and appended to error_history.  The attempt
 *		itself was already counted when it started.
 */
void
pgbq_record_attempt_failure(const PgbqCatalog *cat, int64 task_id,
							const char *topic, bool cancelled,
							const char *sqlstate, const char *message,
							const char *detail)
{
	PgbqTopicPolicy policy;
	Oid			save_userid;
	int			save_sec;
	int			nest;
	int			attempts;
	int			delay;
	const char *state;
	char	   *sql;
	Datum		args[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[6] = {INT8OID, TEXTOID, INT4OID, TEXTOID, TEXTOID, TEXTOID};
	bool		isnull;
	int			rc;

	pgbq_topic_policy(topic, &policy);
	nest = pgbq_begin_privileged(cat->owner, &save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	sql = pgbq_sql_lock_running(cat);
	args[0] = Int64GetDatum(task_id);
	rc = SPI_execute_with_args(sql, 1, types, args, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read task " INT64_FORMAT ": %s", task_id,
			 SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		/* Already accounted for (e.g. by a concurrent recovery). */
		SPI_finish();
		pgbq_end_privileged(nest, save_userid, save_sec);
		return;
	}
	attempts = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 1, &isnull));
	state = pgbq_state_retry_decision(attempts, &policy, cancelled, &delay);

	sql = pgbq_sql_record_failure(cat);
	args[1] = CStringGetTextDatum(state);
	args[2] = Int32GetDatum(delay);
	args[3] = CStringGetTextDatum(message ? message : "unknown error");
	args[4] = CStringGetTextDatum(sqlstate ? sqlstate : "XX000");
	if (detail)
		args[5] = CStringGetTextDatum(detail);
	else
		nulls[5] = 'n';
	rc = SPI_execute_with_args(sql, 6, types, args, nulls, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not record failure of task " INT64_FORMAT ": %s",
			 task_id, SPI_result_code_string(rc));
	SPI_finish();
	pgbq_end_privileged(nest, save_userid, save_sec);

	if (strcmp(state, "retrying") != 0)
		pgbq_notify_terminal(task_id, state);
	else
		pgbq_floor_hold_unstarted(task_id);
}

/*
 * pgbq_recover_from_error
 *		Inside a PG_CATCH of a worker's own loop: report the error to the log,
 *		abort whatever transaction was open and return to ctx, so the worker
 *		can go on.
 */
void
pgbq_recover_from_error(MemoryContext ctx)
{
	MemoryContextSwitchTo(ctx);
	HOLD_INTERRUPTS();
	EmitErrorReport();
	AbortOutOfAnyTransaction();
	FlushErrorState();
	RESUME_INTERRUPTS();
}
