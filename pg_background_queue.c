/*-------------------------------------------------------------------------
 *
 * pg_background_queue.c
 *	  Module entry point: GUCs, shared memory hooks, the launcher's
 *	  registration, the utility hook and the reaction to DROP EXTENSION.
 *
 * The rest of the code lives in src/, one file per concern:
 *	guc.c		parameters and topic_config
 *	shmem.c		shared state: worker slots, demand, limits
 *	launcher.c	the launcher
 *	worker.c	task workers
 *	executor.c	running a task's SQL
 *	maintenance.c	orphan recovery, retention, demand rebuild
 *	enqueue.c	user API
 *	admin.c		administration functions and views
 *	catalog.c	extension lookup, privileged bookkeeping
 *	listeners.c	sessions listening on the notification channel
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"

#include "src/compat.h"
#include "src/pgbq.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static object_access_hook_type prev_object_access_hook = NULL;

/*
 * DROP EXTENSION in the current transaction: whether it happened, at which
 * subtransaction nesting level, whether the extension exists again at
 * commit (dropped and created in one transaction), and the database name
 * for the log (looked up while a transaction is still open).
 */
static bool pgbq_drop_pending = false;
static int	pgbq_drop_nest_level = 0;
static bool pgbq_drop_recreated = false;
static char pgbq_drop_dbname[NAMEDATALEN];
static bool pgbq_drop_callbacks_registered = false;
static bool pgbq_drop_nudged = false;	/* workers asked to leave before it */
static int	pgbq_drop_nudge_level = 0;

static shmem_request_hook_type prev_shmem_request_hook = NULL;

/*
 * pgbq_shmem_request
 *		Request our shared memory (15 and later).
 */
static void
pgbq_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	pgbq_require_shmem();
}

/*
 * pgbq_shmem_startup
 *		Create or attach to our shared state.
 */
static void
pgbq_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	pgbq_shmem_init();
}

/*
 * pgbq_end_nudge
 *		The drop that asked the database's workers to leave did not happen:
 *		let the launcher start workers there again, and a maintenance pass
 *		restore the demand.
 */
static void
pgbq_end_nudge(void)
{
	pgbq_drop_nudged = false;
	pgbq_set_drop_in_progress(MyDatabaseId, false);
	pgbq_request_maintenance(MyDatabaseId);
}

/*
 * pgbq_drop_xact_callback
 *		When a transaction that dropped the extension commits, ask this
 *		database's workers to exit (a running task is interrupted and its
 *		effects rolled back: its row is gone with the table) and forget the
 *		database's demand, so the launcher starts no new worker for it.
 */
static void
pgbq_drop_xact_callback(XactEvent event, void *arg)
{
	int			nworkers;

	(void) arg;
	if (pgbq_drop_nudged &&
		(event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		 event == XACT_EVENT_PREPARE ||
		 (event == XACT_EVENT_COMMIT && !pgbq_drop_pending)))
		pgbq_end_nudge();
	if (!pgbq_drop_pending)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			{
				char	   *dbname = get_database_name(MyDatabaseId);

				strlcpy(pgbq_drop_dbname, dbname ? dbname : "?",
						sizeof(pgbq_drop_dbname));
				pgbq_drop_recreated =
					OidIsValid(get_extension_oid(PGBQ_EXTENSION_NAME, true));
			}
			break;
		case XACT_EVENT_COMMIT:
			pgbq_drop_pending = false;
			pgbq_drop_nudged = false;	/* the mark goes with the entry */
			nworkers = pgbq_request_database_exit(MyDatabaseId, true);
			ereport(LOG,
					(errmsg("pg_background_queue: extension dropped in database \"%s\"; asked %d worker(s) of that database to exit",
							pgbq_drop_dbname, nworkers),
					 errdetail("Running tasks are interrupted and their effects rolled back; queued tasks were dropped with the table.")));
			/* created again in the same transaction: rebuild its demand */
			if (pgbq_drop_recreated)
				pgbq_request_maintenance(MyDatabaseId);
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* a prepared drop is noticed by each worker on its own */
			pgbq_drop_pending = false;
			break;
		default:
			break;
	}
}

/*
 * pgbq_drop_subxact_callback
 *		Forget a drop undone by ROLLBACK TO SAVEPOINT; a released savepoint
 *		hands the drop to its parent.
 */
static void
pgbq_drop_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	(void) mySubid;
	(void) parentSubid;
	(void) arg;
	if (pgbq_drop_nudged && level <= pgbq_drop_nudge_level)
	{
		if (event == SUBXACT_EVENT_ABORT_SUB)
			pgbq_end_nudge();
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
			pgbq_drop_nudge_level = level - 1;
	}
	if (pgbq_drop_pending && level <= pgbq_drop_nest_level)
	{
		if (event == SUBXACT_EVENT_ABORT_SUB)
			pgbq_drop_pending = false;
		else if (event == SUBXACT_EVENT_COMMIT_SUB)
			pgbq_drop_nest_level = level - 1;
	}
}

/*
 * pgbq_register_drop_callbacks
 *		Register the transaction callbacks above, once per backend.
 */
static void
pgbq_register_drop_callbacks(void)
{
	if (pgbq_drop_callbacks_registered)
		return;
	RegisterXactCallback(pgbq_drop_xact_callback, NULL);
	RegisterSubXactCallback(pgbq_drop_subxact_callback, NULL);
	pgbq_drop_callbacks_registered = true;
}

/*
 * pgbq_object_access
 *		Notice DROP EXTENSION pg_background_queue, however it is reached
 *		(DROP EXTENSION, DROP SCHEMA ... CASCADE, DROP OWNED), and act on it
 *		at commit.
 */
static void
pgbq_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				   int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (access != OAT_DROP || classId != ExtensionRelationId ||
		pgbq_shared == NULL ||
		objectId != get_extension_oid(PGBQ_EXTENSION_NAME, true))
		return;
	pgbq_register_drop_callbacks();
	if (!pgbq_drop_pending)
	{
		pgbq_drop_pending = true;
		pgbq_drop_nest_level = GetCurrentTransactionNestLevel();
	}
}

/*
 * pgbq_drop_names_us
 *		Does this DROP EXTENSION name pg_background_queue?
 */
static bool
pgbq_drop_names_us(DropStmt *stmt)
{
	ListCell   *lc;

	if (stmt->removeType != OBJECT_EXTENSION)
		return false;
	foreach(lc, stmt->objects)
	{
		if (IsA(lfirst(lc), String) &&
			strcmp(strVal(lfirst(lc)), PGBQ_EXTENSION_NAME) == 0)
			return true;
	}
	return false;
}

/*
 * pgbq_make_way_for_drop
 *		Before DROP EXTENSION pg_background_queue, lock the task table: the
 *		drop would lock the table's id sequence first, and an enqueue locks
 *		the table, then the sequence, so the two could deadlock.  If the
 *		lock is not free (typically a running task that enqueued work in its
 *		own transaction holds it), ask the database's workers to leave
 *		first: their tasks are interrupted and given back, their locks
 *		released, and no worker starts or claims there until this
 *		transaction ends.  Should the drop then fail, the workers come back
 *		(pgbq_end_nudge).
 */
static void
pgbq_make_way_for_drop(void)
{
	PgbqCatalog cat;
	int			nworkers;

	if (!pgbq_catalog_lookup(&cat, true))
		return;
	if (ConditionalLockRelationOid(cat.table_oid, AccessExclusiveLock))
		return;
	pgbq_register_drop_callbacks();
	if (!pgbq_drop_nudged)
	{
		pgbq_drop_nudged = true;
		pgbq_drop_nudge_level = GetCurrentTransactionNestLevel();
	}
	pgbq_set_drop_in_progress(MyDatabaseId, true);
	nworkers = pgbq_request_database_exit(MyDatabaseId, false);
	ereport(LOG,
			(errmsg("pg_background_queue: DROP EXTENSION waits for a lock on the task table; asked %d worker(s) of database \"%s\" to exit",
					nworkers, get_database_name(MyDatabaseId))));
	LockRelationOid(cat.table_oid, AccessExclusiveLock);
}

/*
 * pgbq_next_process_utility
 *		Run a utility statement through the next hook or PostgreSQL.
 */
static void
pgbq_next_process_utility(PlannedStmt *pstmt, const char *queryString,
						  bool readOnlyTree, ProcessUtilityContext context,
						  ParamListInfo params, QueryEnvironment *queryEnv,
						  DestReceiver *dest, QueryCompletion *qc)
{
	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
}

/*
 * pgbq_process_utility
 *		Note LISTEN and UNLISTEN on the notification channel (listeners.c).
 *		Before DROP DATABASE, ask our workers connected to it to leave, so
 *		that the drop does not fail with "being accessed by other users".
 *		Before DROP EXTENSION pg_background_queue, make sure no worker's
 *		lock keeps it waiting.  Both only when the caller owns the object
 *		(PostgreSQL checks that later): a role that may not drop it must
 *		not be able to interrupt other roles' tasks by trying.
 */
static void
pgbq_process_utility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	Oid			dropped_db = InvalidOid;

	pgbq_listener_utility(parsetree);
	if (pgbq_shared != NULL && parsetree != NULL && IsA(parsetree, DropdbStmt))
	{
		Oid			dboid = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);

		/* only for a drop that may go ahead: others must not disturb us */
		if (OidIsValid(dboid) && pgbq_database_ownercheck(dboid))
		{
			(void) pgbq_request_database_exit(dboid, true);
			dropped_db = dboid;
		}
	}
	else if (pgbq_shared != NULL && parsetree != NULL &&
			 IsA(parsetree, DropStmt) &&
			 pgbq_drop_names_us((DropStmt *) parsetree))
	{
		Oid			extoid = get_extension_oid(PGBQ_EXTENSION_NAME, true);

		if (OidIsValid(extoid) && pgbq_extension_ownercheck(extoid))
			pgbq_make_way_for_drop();
	}
	if (!OidIsValid(dropped_db))
	{
		pgbq_next_process_utility(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
		return;
	}

	/*
	 * The DROP DATABASE may still fail (another session is connected, a
	 * replication slot uses it): its workers have left and its wake-ups
	 * and maintenance were forgotten.  A maintenance pass restores them: it
	 * rebuilds the database's demand, delayed wake-ups included.
	 */
	PG_TRY();
	{
		pgbq_next_process_utility(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		pgbq_request_maintenance(dropped_db);
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * _PG_init
 *		Define GUCs; when preloaded, also set up shared memory and register
 *		the launcher.
 */
void
_PG_init(void)
{
	pgbq_guc_init();

	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = pgbq_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = pgbq_shmem_startup;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = pgbq_process_utility;
	prev_object_access_hook = object_access_hook;
	object_access_hook = pgbq_object_access;

	/*
	 * pg_upgrade starts the old and the new cluster in binary-upgrade mode
	 * (postmaster -b): the old one's files are about to be copied and the
	 * new one's catalogs are being restored, so no task may run in either.
	 * Tasks stay as they are and run once the upgraded cluster starts.
	 */
	if (IsBinaryUpgrade)
		return;

	pgbq_register_launcher();
}
