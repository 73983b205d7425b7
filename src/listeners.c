/*-------------------------------------------------------------------------
 *
 * listeners.c
 *	  Which sessions listen on the notification channel, so that the task
 *	  workers of a database where no session does skip their notifications.
 *
 * A NOTIFY costs a worker a transaction of its own (an xid, a commit
 * record, the cluster-wide notification lock, a wake-up of the WAL writer:
 * about a twentieth of a worker's CPU per task at high rates), and nobody
 * can receive it without a LISTEN in the same database.  The utility hook
 * (pg_background_queue.c) sees every LISTEN, UNLISTEN and DISCARD ALL of
 * every session, and calls pgbq_listener_utility before the statement runs:
 *
 *	- LISTEN pg_background_queue: this session's entry is set to its
 *	  database at once, before the LISTEN takes effect at commit (a LISTEN
 *	  that rolls back leaves the entry set: more notifications, never
 *	  fewer);
 *	- UNLISTEN pg_background_queue, UNLISTEN *, DISCARD ALL: the entry is
 *	  cleared when the transaction commits, unless a LISTEN came later in
 *	  it; a (sub)transaction that rolls back keeps it (again the safe way);
 *	- the session's exit clears it; a crash of the server resets them all.
 *
 * A worker drops its held notifications, instead of sending them, when no
 * entry names its database (pgbq_anyone_listens), checked after the commit
 * that ended the tasks.  Why nothing is lost: a listener sets its entry,
 * commits its LISTEN, and only then reads the tasks it waits for.  If the
 * worker saw no entry, its check came before the entry was set (the entry
 * is written before a full barrier, the check reads after one), so its
 * commit came before the listener's first look: that look sees the tasks
 * ended and does not wait.  LISTEN issued by C code that calls
 * Async_Listen directly, not through a statement, goes unseen; no known
 * client does that.
 *
 * Entries are indexed by the session's PGPROC number; the array covers
 * MaxBackends (client backends, autovacuum, background workers, WAL
 * senders).  A session beyond it (none is expected) sets overflow, and
 * from then on every worker notifies as it always did.
 *
 * Concurrency: an entry is written only by its own session, a plain Oid
 * store; count follows with an atomic add or subtract (a full barrier).
 * Workers read without a lock, after a barrier.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "compat.h"
#include "pgbq.h"

typedef struct PgbqListeners
{
	pg_atomic_uint32 count;		/* entries set */
	pg_atomic_uint32 overflow;	/* a session could not have an entry */
	int			size;			/* entries in dboid[] */
	Oid			dboid[FLEXIBLE_ARRAY_MEMBER];	/* by PGPROC number: the
												 * database the session
												 * listens in, or InvalidOid */
} PgbqListeners;

static PgbqListeners *pgbq_listeners = NULL;

/* This session's entry is set. */
static bool pgbq_listening = false;

/* An UNLISTEN (or DISCARD ALL) of the open transaction clears it at commit. */
static bool pgbq_unlisten_at_commit = false;

static bool pgbq_listener_callbacks = false;

/*
 * pgbq_listeners_shmem_size
 *		Bytes of the shared array.
 */
Size
pgbq_listeners_shmem_size(void)
{
	return add_size(offsetof(PgbqListeners, dboid),
					mul_size(sizeof(Oid), MaxBackends));
}

/*
 * pgbq_listeners_shmem_init
 *		Create or attach to the shared array (caller holds
 *		AddinShmemInitLock).
 */
void
pgbq_listeners_shmem_init(void)
{
	bool		found;

	pgbq_listeners = ShmemInitStruct("pg_background_queue listeners",
									 pgbq_listeners_shmem_size(), &found);
	if (!found)
	{
		memset(pgbq_listeners, 0, pgbq_listeners_shmem_size());
		pg_atomic_init_u32(&pgbq_listeners->count, 0);
		pg_atomic_init_u32(&pgbq_listeners->overflow, 0);
		pgbq_listeners->size = MaxBackends;
	}
}

/*
 * pgbq_listener_set
 *		Set (on) or clear this session's entry.
 */
static void
pgbq_listener_set(bool on)
{
	int			procno = PGBQ_MY_PROCNO;

	if (pgbq_listeners == NULL || on == pgbq_listening)
		return;
	if (procno < 0 || procno >= pgbq_listeners->size)
	{
		if (on)
			pg_atomic_write_u32(&pgbq_listeners->overflow, 1);
		pg_memory_barrier();
		return;
	}
	if (on)
	{
		pgbq_listeners->dboid[procno] = MyDatabaseId;
		(void) pg_atomic_fetch_add_u32(&pgbq_listeners->count, 1);
	}
	else
	{
		pgbq_listeners->dboid[procno] = InvalidOid;
		(void) pg_atomic_fetch_sub_u32(&pgbq_listeners->count, 1);
	}
	pgbq_listening = on;
}

/*
 * pgbq_listener_at_exit
 *		before_shmem_exit callback: the session no longer listens.
 */
static void
pgbq_listener_at_exit(int code, Datum arg)
{
	(void) code;
	(void) arg;
	pgbq_listener_set(false);
}

/*
 * pgbq_listener_xact_callback
 *		Apply an UNLISTEN at commit; forget it on abort.
 */
static void
pgbq_listener_xact_callback(XactEvent event, void *arg)
{
	(void) arg;
	if (!pgbq_unlisten_at_commit)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
		pgbq_listener_set(false);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		pgbq_unlisten_at_commit = false;
}

/*
 * pgbq_listener_subxact_callback
 *		A subtransaction that rolls back may have held the UNLISTEN: keep
 *		listening (the safe side).
 */
static void
pgbq_listener_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							   SubTransactionId parentSubid, void *arg)
{
	(void) mySubid;
	(void) parentSubid;
	(void) arg;
	if (event == SUBXACT_EVENT_ABORT_SUB)
		pgbq_unlisten_at_commit = false;
}

/*
 * pgbq_listener_utility
 *		Called by the utility hook before a statement runs: note LISTEN,
 *		UNLISTEN and DISCARD ALL on the notification channel (see the top of
 *		the file).
 */
void
pgbq_listener_utility(Node *parsetree)
{
	bool		listen;

	if (pgbq_listeners == NULL || parsetree == NULL)
		return;
	if (IsA(parsetree, ListenStmt))
	{
		if (strcmp(((ListenStmt *) parsetree)->conditionname,
				   PGBQ_NOTIFY_CHANNEL) != 0)
			return;
		listen = true;
	}
	else if (IsA(parsetree, UnlistenStmt))
	{
		const char *name = ((UnlistenStmt *) parsetree)->conditionname;

		if (name != NULL && strcmp(name, PGBQ_NOTIFY_CHANNEL) != 0)
			return;
		listen = false;
	}
	else if (IsA(parsetree, DiscardStmt) &&
			 ((DiscardStmt *) parsetree)->target == DISCARD_ALL)
		listen = false;
	else
		return;

	if (!pgbq_listener_callbacks)
	{
		before_shmem_exit(pgbq_listener_at_exit, (Datum) 0);
		RegisterXactCallback(pgbq_listener_xact_callback, NULL);
		RegisterSubXactCallback(pgbq_listener_subxact_callback, NULL);
		pgbq_listener_callbacks = true;
	}
	if (listen)
	{
		pgbq_unlisten_at_commit = false;
		pgbq_listener_set(true);
	}
	else if (pgbq_listening)
		pgbq_unlisten_at_commit = true;
}

/*
 * pgbq_anyone_listens
 *		May a session of database dboid listen on the notification channel?
 *		Call after the commit whose notifications are in question.
 */
bool
pgbq_anyone_listens(Oid dboid)
{
	if (pgbq_listeners == NULL)
		return true;
	pg_memory_barrier();
	if (pg_atomic_read_u32(&pgbq_listeners->overflow) != 0)
		return true;
	if (pg_atomic_read_u32(&pgbq_listeners->count) == 0)
		return false;
	for (int i = 0; i < pgbq_listeners->size; i++)
	{
		if (((volatile Oid *) pgbq_listeners->dboid)[i] == dboid)
			return true;
	}
	return false;
}
