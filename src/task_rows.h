/*-------------------------------------------------------------------------
 *
 * task_rows.h
 *	  The text of every statement that changes a pg_background_tasks row's
 *	  state (task_rows.c, where the transition table is).  The callers
 *	  prepare and execute them; each function returns a new string in the
 *	  current memory context.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGBQ_TASK_ROWS_H
#define PGBQ_TASK_ROWS_H

#include "datatype/timestamp.h"

#include "pgbq.h"

/* (new) -> pending, waiting or cancelled: enqueue.c, workflow.c */
extern char *pgbq_sql_insert(const PgbqCatalog *cat);
extern char *pgbq_sql_insert_many(const PgbqCatalog *cat);
extern char *pgbq_sql_insert_workflow(const char *qualified_table,
									  const char *qualified_schema,
									  bool keyed);

/* the claim and what goes with it: worker_bookkeeping.c */
extern char *pgbq_sql_claim(const PgbqCatalog *cat);
extern char *pgbq_sql_claim_next(const PgbqCatalog *cat);
extern char *pgbq_sql_claim_check(const PgbqCatalog *cat);
extern char *pgbq_sql_mark_running(const PgbqCatalog *cat, bool by_tid);

/* running -> finished, pending/retrying (give-back): worker_bookkeeping.c */
extern char *pgbq_sql_finish(const PgbqCatalog *cat, bool result, bool by_tid);
extern char *pgbq_sql_finish_claimed(const PgbqCatalog *cat, bool result);
extern char *pgbq_sql_finish_claimed_many(const PgbqCatalog *cat, bool result);
extern char *pgbq_sql_give_back(const PgbqCatalog *cat, int worker_pid);

/* running -> retrying, failed or cancelled: catalog.c */
extern char *pgbq_sql_lock_running(const PgbqCatalog *cat);
extern char *pgbq_sql_record_failure(const PgbqCatalog *cat);

/* a caller's own task: cancel, retry, reschedule (enqueue.c) */
extern char *pgbq_sql_update_own_task(const PgbqCatalog *cat,
									  const char *set_and_where);
extern char *pgbq_sql_own_task_running(const PgbqCatalog *cat);
extern char *pgbq_sql_cancel(const char *role_name);
extern const char *pgbq_sql_retry_1_1(void);
extern char *pgbq_sql_retry(const PgbqCatalog *cat);
extern char *pgbq_sql_reschedule(const int32 *priority,
								 const TimestampTz *run_at);

/* maintenance.c and pg_background_queue_purge (enqueue.c) */
extern char *pgbq_sql_orphan_scan(const PgbqCatalog *cat);
extern char *pgbq_sql_fail_unrunnable_roles(const PgbqCatalog *cat);
extern char *pgbq_sql_prune(const PgbqCatalog *cat, int batch);
extern char *pgbq_sql_purge(const PgbqCatalog *cat);

#endif							/* PGBQ_TASK_ROWS_H */
