/*-------------------------------------------------------------------------
 *
 * maintenance.c
 *	  The maintenance pass of one database, run by a short-lived worker
 *	  that the launcher starts at server start, periodically, and when a
 *	  worker died holding a task:
 *
 *	1. orphan recovery: every task marked running whose worker is not
 *	   alive (crash, immediate shutdown, FATAL) gets its interrupted attempt
 *	   accounted for, and is retried or failed per its topic's policy;
 *	2. tasks of roles that were dropped (or, before PostgreSQL 17, can no
 *	   longer log in) fail with a clear error instead of waiting forever;
 *	3. retention: terminal tasks older than retention_in_sec are deleted
 *	   in batches and folded into pg_background_queue_stats;
 *	4. demand rebuild: the launcher learns which roles have eligible or
 *	   delayed tasks, so nothing stays queued without a worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "pgbq.h"
#include "task_rows.h"

#define PGBQ_PRUNE_BATCH 10000

/* Name of our database, for messages written outside a transaction. */
static char pgbq_maintenance_dbname[NAMEDATALEN];

/*
 * pgbq_live_workers_of_db
 *		Arrays of (pid, task id) of the workers of this database that hold a
 *		task right now.
 */
static void
pgbq_live_workers_of_db(Datum *pids, Datum *tasks)
{
	Datum	   *p = palloc(sizeof(Datum) * (pgbq_shared->nslots + 1));
	Datum	   *t = palloc(sizeof(Datum) * (pgbq_shared->nslots + 1));
	int			n = 0;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_RUNNING && s->dboid == MyDatabaseId && s->pid > 0)
		{
			p[n] = Int32GetDatum(s->pid);
			t[n] = Int64GetDatum(s->task_id);
			n++;
		}
	}
	LWLockRelease(pgbq_shared->lock);
	*pids = PointerGetDatum(construct_array(p, n, INT4OID, 4, true, TYPALIGN_INT));
	*tasks = PointerGetDatum(construct_array(t, n, INT8OID, 8, FLOAT8PASSBYVAL,
											 TYPALIGN_DOUBLE));
}

/*
 * pgbq_held_by_live_worker
 *		Does a worker of this database hold this task right now?
 */
static bool
pgbq_held_by_live_worker(int64 task_id, int32 pid)
{
	bool		held = false;
	int			i;

	LWLockAcquire(pgbq_shared->lock, LW_SHARED);
	for (i = 0; i < pgbq_shared->nslots; i++)
	{
		PgbqSlot   *s = &pgbq_shared->slots[i];

		if (s->state == PGBQ_SLOT_RUNNING && s->dboid == MyDatabaseId &&
			s->pid == pid && s->task_id == task_id)
		{
			held = true;
			break;
		}
	}
	LWLockRelease(pgbq_shared->lock);
	return held;
}

/*
 * pgbq_recover_orphans
 *		Account for running tasks whose worker is gone.  Rows locked by a
 *		live worker's transaction are skipped (SKIP LOCKED): they are being
 *		finished right now.  The list of live workers is read before the
 *		query's snapshot, so a task claimed in between (the query may also
 *		have waited for a lock on the table, e.g. behind a DROP EXTENSION
 *		that was then rolled back) looks orphaned: every candidate, now
 *		locked by us, is checked again against the live workers.
 */
static int
pgbq_recover_orphans(const PgbqCatalog *cat)
{
	Datum		args[2];
	Oid			types[2] = {INT4ARRAYOID, INT8ARRAYOID};
	char	   *sql;
	int			rc;
	uint64		i;
	uint64		n;
	int64	   *ids;
	char	  **topics;

	pgbq_live_workers_of_db(&args[0], &args[1]);
	sql = pgbq_sql_orphan_scan(cat);
	rc = SPI_execute_with_args(sql, 2, types, args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "orphan scan failed: %s", SPI_result_code_string(rc));
	ids = palloc(sizeof(int64) * (SPI_processed + 1));
	topics = palloc(sizeof(char *) * (SPI_processed + 1));
	n = 0;
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		bool		pid_isnull;
		int64		id;
		int32		pid;

		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
										 SPI_tuptable->tupdesc, 1, &isnull));
		pid = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 3, &pid_isnull));
		if (!pid_isnull && pgbq_held_by_live_worker(id, pid))
			continue;
		ids[n] = id;
		topics[n] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		n++;
	}
	for (i = 0; i < n; i++)
		pgbq_record_attempt_failure(cat, ids[i], topics[i], false, "57P02",
									"attempt interrupted: the worker running it exited "
									"(server crash, immediate shutdown or worker termination)",
									NULL);
	return (int) n;
}

/*
 * pgbq_fail_unrunnable_roles
 *		Fail queued tasks whose owner no longer exists (or cannot log in,
 *		where workers need LOGIN).
 */
static void
pgbq_fail_unrunnable_roles(const PgbqCatalog *cat)
{
	char	   *sql;
	int			rc;

	sql = pgbq_sql_fail_unrunnable_roles(cat);
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not fail tasks of dropped roles: %s",
			 SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		uint64		i;

		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			pgbq_notify_terminal(DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc,
															 1, &isnull)),
								 "failed");
		}
	}
}

/*
 * pgbq_rebuild_demand
 *		Tell the launcher about every role with queued tasks.
 */
static void
pgbq_rebuild_demand(const PgbqCatalog *cat)
{
	char	   *sql;
	int			rc;
	uint64		i;

	sql = psprintf("SELECT owner::pg_catalog.oid, "
				   "  count(*) FILTER (WHERE next_run_at <= now())::int4, "
				   "  min(next_run_at) FILTER (WHERE next_run_at > now()) "
				   "FROM %s WHERE state IN ('pending', 'retrying') GROUP BY owner",
				   cat->qualified_table);
	rc = SPI_execute(sql, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "demand scan failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			owner;
		int			ready;
		Datum		d;
		TimestampTz future = 0;

		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
											   SPI_tuptable->tupdesc, 1, &isnull));
		ready = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 2, &isnull));
		d = SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull)
			future = DatumGetTimestampTz(d);
		pgbq_announce_work(MyDatabaseId, owner, ready, future);
	}
}

/*
 * pgbq_prune_batch
 *		Delete one batch of expired terminal tasks; returns rows deleted.
 */
static int64
pgbq_prune_batch(const PgbqCatalog *cat)
{
	char	   *sql;
	int			rc;
	bool		isnull;
	Datum		args[1];
	Oid			types[1] = {INT4OID};

	sql = pgbq_sql_prune(cat, PGBQ_PRUNE_BATCH);
	args[0] = Int32GetDatum(pgbq_retention_in_sec);
	rc = SPI_execute_with_args(sql, 1, types, args, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "retention failed: %s", SPI_result_code_string(rc));
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * pgbq_maintenance_step
 *		Run one step in a transaction of its own, as the table owner.
 *		Returns false if the extension is not installed here.
 */
static bool
pgbq_maintenance_step(int step, int64 *result)
{
	PgbqCatalog cat;
	Oid			save_userid;
	int			save_sec;
	int			nest;
	bool		installed;

	*result = 0;
	pgbq_start_bookkeeping_xact();
	PushActiveSnapshot(GetTransactionSnapshot());
	installed = pgbq_catalog_lookup(&cat, true);
	if (installed)
	{
		/* for the log, outside any transaction */
		char	   *dbname = get_database_name(MyDatabaseId);

		strlcpy(pgbq_maintenance_dbname, dbname ? dbname : "?",
				sizeof(pgbq_maintenance_dbname));
		nest = pgbq_begin_privileged(cat.owner, &save_userid, &save_sec);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		switch (step)
		{
			case 0:
				*result = pgbq_recover_orphans(&cat);
				break;
			case 1:
				pgbq_fail_unrunnable_roles(&cat);
				break;
			case 2:
				*result = pgbq_prune_batch(&cat);
				break;
			case 3:
				pgbq_rebuild_demand(&cat);
				break;
		}
		SPI_finish();
		pgbq_end_privileged(nest, save_userid, save_sec);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	return installed;
}

/*
 * pgbq_guarded_step
 *		Run a step; an error is logged and the pass goes on with the next
 *		step.  Returns false if the extension is not installed (or the step
 *		failed, for loops that should stop).
 */
static bool
pgbq_guarded_step(int step, int64 *result)
{
	volatile bool ok = false;
	MemoryContext ctx = CurrentMemoryContext;

	PG_TRY();
	{
		ok = pgbq_maintenance_step(step, result);
	}
	PG_CATCH();
	{
		pgbq_recover_from_error(ctx);
		*result = 0;
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/*
 * pgbq_maintenance_run
 *		The whole pass.
 */
void
pgbq_maintenance_run(int slotno)
{
	int64		n;
	PgbqDatabase *db;
	bool		installed;

	(void) slotno;
	pgstat_report_activity(STATE_RUNNING, "pg_background_queue maintenance");
	installed = pgbq_maintenance_step(0, &n);
	if (installed)
	{
		if (n > 0)
			elog(LOG, "pg_background_queue: accounted for %d interrupted task(s) in database \"%s\"",
				 (int) n, pgbq_maintenance_dbname);
		(void) pgbq_guarded_step(1, &n);
		if (pgbq_retention_in_sec >= 0)
		{
			do
			{
				CHECK_FOR_INTERRUPTS();
				if (!pgbq_guarded_step(2, &n))
					break;
			} while (n >= PGBQ_PRUNE_BATCH);
		}
		(void) pgbq_guarded_step(3, &n);
	}

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	db = pgbq_database_lookup(MyDatabaseId, installed);
	if (db)
	{
		db->has_extension = installed;
		db->last_maintenance = GetCurrentTimestamp();
	}
	LWLockRelease(pgbq_shared->lock);
	pgstat_report_activity(STATE_IDLE, NULL);
}
