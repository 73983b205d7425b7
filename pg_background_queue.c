/*-------------------------------------------------------------------------
 *
 * pg_background_queue.c
 *	  Module entry point: GUCs, shared memory hooks, the launcher's
 *	  registration and the utility hook.
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
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"

#include "src/compat.h"
#include "src/pgbq.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

#ifdef PGBQ_HAVE_SHMEM_REQUEST_HOOK
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
#endif

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
 * pgbq_process_utility
 *		Before DROP DATABASE, ask our workers connected to it to leave, so
 *		that the drop does not fail with "being accessed by other users".
 */
static void
pgbq_process_utility(PGBQ_UTILITY_HOOK_ARGS)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (pgbq_shared != NULL && parsetree != NULL && IsA(parsetree, DropdbStmt))
	{
		Oid			dboid = get_database_oid(((DropdbStmt *) parsetree)->dbname, true);

		if (OidIsValid(dboid))
			pgbq_request_database_exit(dboid);
	}
	if (prev_ProcessUtility)
		prev_ProcessUtility(PGBQ_UTILITY_HOOK_PASS);
	else
		standard_ProcessUtility(PGBQ_UTILITY_HOOK_PASS);
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

#ifdef PGBQ_HAVE_SHMEM_REQUEST_HOOK
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = pgbq_shmem_request;
#else
	pgbq_require_shmem();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = pgbq_shmem_startup;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = pgbq_process_utility;

	pgbq_register_launcher();
}
