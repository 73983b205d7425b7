/*-------------------------------------------------------------------------
 *
 * workflow.c
 *	  Workflow features of version 1.2: pausing and resuming topics, dedupe
 *	  keys, dependencies (the enqueue side; the release and cascade are
 *	  _pg_background_queue_after_end in the SQL script, fired by the task
 *	  table's trigger: its own in 1.2 and 1.3, through
 *	  pg_background_queue_task_changed from 1.4 on).
 *
 * A paused topic is a cluster-wide setting, like the other topic settings:
 * it holds for every database.  The set of paused topics lives in shared
 * memory (read by every claim, in pgbq_slot_try_start, under
 * pgbq_shared->lock) and in a small file in the data directory,
 * PGBQ_PAUSED_FILE, rewritten (write, fsync, durable rename) by every pause
 * and resume and read back when shared memory is created, so a pause
 * survives restarts and crash restarts.  The file is not WAL-logged: a
 * standby, a promoted standby and a cluster made by pg_upgrade or a base
 * backup do not inherit it (documented in the README).
 *
 * Pause and resume take effect at once and are not transactional (like
 * pg_reload_conf()): a rolled-back transaction does not undo them.  Once
 * pause returns, no worker starts a task of that topic; tasks already
 * running finish.  Resume wakes every idle worker and asks the launcher
 * for a maintenance pass in every database, which rebuilds the demand for
 * workers that left while the topic was paused.
 *
 * Locking: the set is read and written under pgbq_shared->lock (shared for
 * reads, exclusive for writes); a writer rewrites the file while holding
 * the lock exclusively, so the file always matches the memory of the last
 * writer.  Pause and resume are rare administrative calls.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/shmem.h"
#include "lib/stringinfo.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "compat.h"
#include "pgbq.h"
#include "task_rows.h"

PG_FUNCTION_INFO_V1(pg_background_queue_pause);
PG_FUNCTION_INFO_V1(pg_background_queue_resume);
PG_FUNCTION_INFO_V1(pg_background_queue_paused_topics);
PG_FUNCTION_INFO_V1(pg_background_queue_note_work);

#define PGBQ_PAUSED_FILE		"pg_background_queue.paused"
#define PGBQ_PAUSED_FILE_TMP	PGBQ_PAUSED_FILE ".tmp"
#define PGBQ_PAUSED_MAGIC		0x70626170	/* "pbap" */

/* A keyed enqueue gives up after this many rounds of insert-or-look-up. */
#define PGBQ_DEDUPE_ROUNDS		100

typedef struct PgbqPausedTopic
{
	bool		isnull;			/* the default topic */
	char		topic[NAMEDATALEN];
} PgbqPausedTopic;

typedef struct PgbqPausedSet
{
	int			count;
	PgbqPausedTopic topics[PGBQ_MAX_PAUSED_TOPICS];
} PgbqPausedSet;

static PgbqPausedSet *pgbq_paused = NULL;

/*
 * pgbq_paused_match
 *		Does an entry name this topic (NULL: the default topic)?
 */
static bool
pgbq_paused_match(const PgbqPausedTopic *p, const char *topic)
{
	if (topic == NULL)
		return p->isnull;
	return !p->isnull && strcmp(p->topic, topic) == 0;
}

/*
 * pgbq_paused_find
 *		Index of the topic in a set, or -1.
 */
static int
pgbq_paused_find(const PgbqPausedSet *set, const char *topic)
{
	int			i;

	for (i = 0; i < set->count; i++)
		if (pgbq_paused_match(&set->topics[i], topic))
			return i;
	return -1;
}

/*
 * pgbq_paused_shmem_size
 *		Bytes of shared memory for the paused set.
 */
Size
pgbq_paused_shmem_size(void)
{
	return MAXALIGN(sizeof(PgbqPausedSet));
}

/*
 * pgbq_paused_load
 *		Read the paused set from its file into *set (empty if there is no
 *		file).  A damaged file is reported and ignored: nothing is paused.
 */
static void
pgbq_paused_load(PgbqPausedSet *set)
{
	FILE	   *f;
	uint32		magic;
	int32		count;
	int			i;

	memset(set, 0, sizeof(PgbqPausedSet));
	f = AllocateFile(PGBQ_PAUSED_FILE, PG_BINARY_R);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("pg_background_queue: could not read file \"%s\": %m; no topic is paused",
							PGBQ_PAUSED_FILE)));
		return;
	}
	if (fread(&magic, sizeof(magic), 1, f) != 1 || magic != PGBQ_PAUSED_MAGIC ||
		fread(&count, sizeof(count), 1, f) != 1 ||
		count < 0 || count > PGBQ_MAX_PAUSED_TOPICS ||
		fread(set->topics, sizeof(PgbqPausedTopic), count, f) != (size_t) count)
	{
		ereport(LOG,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("pg_background_queue: file \"%s\" is damaged; no topic is paused",
						PGBQ_PAUSED_FILE)));
		memset(set, 0, sizeof(PgbqPausedSet));
		FreeFile(f);
		return;
	}
	FreeFile(f);
	for (i = 0; i < count; i++)
		set->topics[i].topic[NAMEDATALEN - 1] = '\0';
	set->count = count;
}

/*
 * pgbq_paused_shmem_init
 *		Create or attach to the paused set; on creation (server start or
 *		crash restart, in the postmaster) load it from its file.
 */
void
pgbq_paused_shmem_init(void)
{
	bool		found;

	pgbq_paused = ShmemInitStruct("pg_background_queue paused topics",
								  pgbq_paused_shmem_size(), &found);
	if (!found)
		pgbq_paused_load(pgbq_paused);
}

/*
 * pgbq_topic_paused
 *		Is the topic paused?  Caller holds pgbq_shared->lock (any mode).
 */
bool
pgbq_topic_paused(const char *topic)
{
	if (pgbq_paused == NULL || pgbq_paused->count == 0)
		return false;
	return pgbq_paused_find(pgbq_paused, topic) >= 0;
}

/*
 * pgbq_paused_topics
 *		Append the name of every paused topic to topics ("" for the default
 *		topic, as the claim's list of topics to leave out spells it).
 *		Caller holds pgbq_shared->lock (any mode).
 */
List *
pgbq_paused_topics(List *topics)
{
	int			i;

	if (pgbq_paused == NULL)
		return topics;
	for (i = 0; i < pgbq_paused->count; i++)
		topics = lappend(topics, pgbq_paused->topics[i].isnull ? pstrdup("") :
						 pstrdup(pgbq_paused->topics[i].topic));
	return topics;
}

/*
 * pgbq_paused_save
 *		Write a paused set to its file durably (temporary file, fsync,
 *		durable rename).  Errors are ERRORs; the caller changes shared
 *		memory only afterwards.
 */
static void
pgbq_paused_save(const PgbqPausedSet *set)
{
	FILE	   *f;
	uint32		magic = PGBQ_PAUSED_MAGIC;
	int32		count = set->count;

	f = AllocateFile(PGBQ_PAUSED_FILE_TMP, PG_BINARY_W);
	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", PGBQ_PAUSED_FILE_TMP)));
	if (fwrite(&magic, sizeof(magic), 1, f) != 1 ||
		fwrite(&count, sizeof(count), 1, f) != 1 ||
		(count > 0 &&
		 fwrite(set->topics, sizeof(PgbqPausedTopic), count, f) != (size_t) count) ||
		fflush(f) != 0 ||
		pg_fsync(fileno(f)) != 0)
	{
		int			save_errno = errno;

		FreeFile(f);
		unlink(PGBQ_PAUSED_FILE_TMP);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", PGBQ_PAUSED_FILE_TMP)));
	}
	if (FreeFile(f) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", PGBQ_PAUSED_FILE_TMP)));
	(void) durable_rename(PGBQ_PAUSED_FILE_TMP, PGBQ_PAUSED_FILE, ERROR);
}

/*
 * pgbq_paused_topic_arg
 *		The topic argument of pause/resume, validated like enqueue's (NULL:
 *		the default topic).
 */
static char *
pgbq_paused_topic_arg(FunctionCallInfo fcinfo)
{
	char	   *topic;

	pgbq_check_preloaded();
	Assert(pgbq_paused != NULL);	/* set up with the rest of shared memory */
	if (PG_ARGISNULL(0))
		return NULL;
	topic = text_to_cstring(PG_GETARG_TEXT_PP(0));
	pgbq_check_topic_name(topic);
	return topic;
}

/*
 * pgbq_paused_change
 *		Pause (add) or resume (remove) a topic: compute the new set, write
 *		it to the file, then publish it, all under the lock.  Returns
 *		whether anything changed.
 */
static bool
pgbq_paused_change(const char *topic, bool pause)
{
	PgbqPausedSet *next = palloc(sizeof(PgbqPausedSet));
	int			pos;

	LWLockAcquire(pgbq_shared->lock, LW_EXCLUSIVE);
	memcpy(next, pgbq_paused, sizeof(PgbqPausedSet));
	pos = pgbq_paused_find(next, topic);
	if (pause ? pos >= 0 : pos < 0)
	{
		LWLockRelease(pgbq_shared->lock);
		pfree(next);
		return false;
	}
	if (pause)
	{
		PgbqPausedTopic *p;

		if (next->count >= PGBQ_MAX_PAUSED_TOPICS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("too many paused topics"),
					 errdetail("At most %d topics can be paused at a time.",
							   PGBQ_MAX_PAUSED_TOPICS),
					 errhint("Resume a topic with pg_background_queue_resume() first.")));
		p = &next->topics[next->count++];
		memset(p, 0, sizeof(PgbqPausedTopic));
		p->isnull = (topic == NULL);
		if (topic)
			strlcpy(p->topic, topic, NAMEDATALEN);
	}
	else
	{
		next->topics[pos] = next->topics[next->count - 1];
		next->count--;
	}
	pgbq_paused_save(next);
	memcpy(pgbq_paused, next, sizeof(PgbqPausedSet));
	LWLockRelease(pgbq_shared->lock);
	pfree(next);
	return true;
}

/*
 * pg_background_queue_pause
 *		Stop starting tasks of a topic (NULL: the default topic) in every
 *		database; running tasks finish, enqueue still works.  Returns false
 *		if it was paused already.
 */
Datum
pg_background_queue_pause(PG_FUNCTION_ARGS)
{
	char	   *topic = pgbq_paused_topic_arg(fcinfo);

	PG_RETURN_BOOL(pgbq_paused_change(topic, true));
}

/*
 * pg_background_queue_resume
 *		Start tasks of a paused topic again, at once.  Returns false if it
 *		was not paused.
 */
Datum
pg_background_queue_resume(PG_FUNCTION_ARGS)
{
	char	   *topic = pgbq_paused_topic_arg(fcinfo);

	if (!pgbq_paused_change(topic, false))
		PG_RETURN_BOOL(false);
	pgbq_wake_idle_workers();
	PG_RETURN_BOOL(true);
}

/*
 * pg_background_queue_paused_topics
 *		The paused topics (NULL: the default topic), for the topics view.
 */
Datum
pg_background_queue_paused_topics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PgbqPausedSet *copy;
	Tuplestorestate *store;
	TupleDesc	tupdesc;
	MemoryContext old;
	int			i;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	copy = palloc0(sizeof(PgbqPausedSet));
	if (pgbq_shared != NULL && pgbq_paused != NULL)
	{
		LWLockAcquire(pgbq_shared->lock, LW_SHARED);
		memcpy(copy, pgbq_paused, sizeof(PgbqPausedSet));
		LWLockRelease(pgbq_shared->lock);
	}

	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	tupdesc = CreateTemplateTupleDesc(1);
	TupleDescInitEntry(tupdesc, (AttrNumber) 1, "topic", TEXTOID, -1, 0);
	store = tuplestore_begin_heap(true, false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = store;
	rsinfo->setDesc = tupdesc;
	MemoryContextSwitchTo(old);
	for (i = 0; i < copy->count; i++)
	{
		Datum		value = (Datum) 0;
		bool		isnull = copy->topics[i].isnull;

		if (!isnull)
			value = CStringGetTextDatum(copy->topics[i].topic);
		tuplestore_putvalues(store, tupdesc, &value, &isnull);
	}
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * Dedupe keys
 * ------------------------------------------------------------------- */

/*
 * pgbq_validate_dedupe_key
 *		A key is a non-empty string of at most PGBQ_DEDUPE_KEY_MAXLEN bytes
 *		(it is stored in a btree index).  element: 1-based position in
 *		enqueue_many's array, 0 for enqueue.
 */
void
pgbq_validate_dedupe_key(const char *key, int element)
{
	if (key[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 element > 0 ?
				 errmsg("dedupe key must not be an empty string (element %d of the array)", element) :
				 errmsg("dedupe key must not be an empty string"),
				 errhint("Pass NULL for a task without a dedupe key.")));
	if (strlen(key) > PGBQ_DEDUPE_KEY_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 element > 0 ?
				 errmsg("dedupe key is too long (element %d of the array)", element) :
				 errmsg("dedupe key is too long"),
				 errdetail("Dedupe keys are limited to %d bytes.", PGBQ_DEDUPE_KEY_MAXLEN)));
}

/*
 * pgbq_insert_workflow
 *		Insert one task with a dedupe key and/or prerequisites, or find the
 *		queued task of the same owner, topic and key.  Inside SPI and a
 *		privileged section; the caller passes the insert's first five
 *		arguments (sql, topic, owner, priority, run_at) with their nulls,
 *		the key (or NULL), the initial state, the prerequisites (or NULL)
 *		and, for a task cancelled at enqueue, its error.  Returns the id
 *		and sets *inserted.
 *
 *		With a key, a running task of the key first gives it up (it is no
 *		longer queued, and may come back to the queue later).  Then ON
 *		CONFLICT DO NOTHING waits for a concurrent inserter
 *		of the key; if that one commits, nothing is inserted and the queued
 *		task is read with a new snapshot (READ COMMITTED; under REPEATABLE
 *		READ the conflict is a serialization failure, as PostgreSQL reports
 *		it).  A queued task that starts running between the two statements
 *		leaves the index, so the insert is simply tried again.
 */
int64
pgbq_insert_workflow(const char *qualified_table, const char *qualified_schema,
					 Datum *args5, const char *nulls5, const char *key,
					 const char *state, Datum after, bool has_after,
					 const char *errors, bool *inserted)
{
	Oid			types[9] = {TEXTOID, TEXTOID, OIDOID, INT4OID, TIMESTAMPTZOID,
	TEXTOID, TEXTOID, INT8ARRAYOID, TEXTOID};
	Datum		args[9];
	char		nulls[10];
	char	   *insert_sql;
	char	   *select_sql;
	int			round;

	memcpy(args, args5, sizeof(Datum) * 5);
	memcpy(nulls, nulls5, 5);
	args[5] = key ? CStringGetTextDatum(key) : (Datum) 0;
	nulls[5] = key ? ' ' : 'n';
	args[6] = CStringGetTextDatum(state);
	nulls[6] = ' ';
	args[7] = has_after ? after : (Datum) 0;
	nulls[7] = has_after ? ' ' : 'n';
	args[8] = errors ? CStringGetTextDatum(errors) : (Datum) 0;
	nulls[8] = errors ? ' ' : 'n';
	nulls[9] = '\0';
	insert_sql = pgbq_sql_insert_workflow(qualified_table, qualified_schema,
										  key != NULL);
	select_sql = psprintf("SELECT id FROM %s t WHERE t.owner = $1 "
						  "AND COALESCE(t.topic, '') = COALESCE($2, '') AND t.dedupe_key = $3 "
						  "AND t.state NOT IN ('running', 'finished', 'failed', 'cancelled')",
						  qualified_table);
	if (key != NULL)
	{
		Oid			ttypes[3] = {OIDOID, TEXTOID, TEXTOID};
		Datum		targs[3];
		char		tnulls[3] = {' ', nulls[1], ' '};
		int			rc;

		/*
		 * Take the key from a running task of the key: it may come back to
		 * the queue (retrying, given back), and must not meet the key
		 * there.  Its row stays locked until we commit.
		 */
		targs[0] = args[2];
		targs[1] = args[1];
		targs[2] = args[5];
		rc = SPI_execute_with_args(psprintf("UPDATE %s t SET dedupe_key = NULL WHERE t.owner = $1 "
											"AND COALESCE(t.topic, '') = COALESCE($2, '') "
											"AND t.dedupe_key = $3 AND t.state = 'running'",
											qualified_table),
								   3, ttypes, targs, tnulls, false, 0);
		if (rc != SPI_OK_UPDATE)
			elog(ERROR, "could not take dedupe key: %s", SPI_result_code_string(rc));
	}
	for (round = 0; round < PGBQ_DEDUPE_ROUNDS; round++)
	{
		bool		isnull;
		int			rc;
		Oid			stypes[3] = {OIDOID, TEXTOID, TEXTOID};
		Datum		sargs[3];
		char		snulls[3];

		rc = SPI_execute_with_args(insert_sql, 9, types, args, nulls, false, 0);
		if (rc != SPI_OK_INSERT_RETURNING)
			elog(ERROR, "could not enqueue: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			*inserted = true;
			return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		}
		Assert(key != NULL);
		sargs[0] = args[2];
		sargs[1] = args[1];
		sargs[2] = args[5];
		snulls[0] = ' ';
		snulls[1] = nulls[1];
		snulls[2] = ' ';
		rc = SPI_execute_with_args(select_sql, 3, stypes, sargs, snulls, false, 1);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "could not look up dedupe key: %s", SPI_result_code_string(rc));
		if (SPI_processed == 1)
		{
			*inserted = false;
			return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
		}
		CHECK_FOR_INTERRUPTS();
	}
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not enqueue a task with dedupe key \"%s\": the queued task of that key kept changing", key),
			 errhint("Retry the transaction.")));
	return 0;					/* keep the compiler quiet */
}

/* ---------------------------------------------------------------------
 * Dependencies
 * ------------------------------------------------------------------- */

/*
 * pgbq_after_arg
 *		Validate enqueue's `after`: one-dimensional, no NULLs.  Returns
 *		false for an empty array (no prerequisites).
 */
bool
pgbq_after_arg(ArrayType *after)
{
	Datum	   *elems;
	bool	   *elemnulls;
	int			n;
	int			i;

	if (ARR_NDIM(after) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("array of prerequisite tasks must be one-dimensional")));
	deconstruct_array(after, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &elemnulls, &n);
	for (i = 0; i < n; i++)
		if (elemnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("prerequisite task ids must not be NULL (element %d of after)", i + 1)));
	return n > 0;
}

/*
 * pgbq_prerequisites
 *		Mark the prerequisites of a new task (has_dependents) and decide the
 *		task's initial state: pending if all are finished, cancelled (with
 *		*errors saying why) if one failed or was cancelled, else waiting.
 *		Every id must name a task the caller may see (the RLS rule), else
 *		nothing is enqueued.  Inside SPI and a privileged section.
 *
 *		The UPDATE locks each prerequisite's row until the enqueue commits:
 *		a prerequisite ending meanwhile waits, then fires the release
 *		trigger (which sees the new task); one that ended first is read
 *		here in its final state.
 */
const char *
pgbq_prerequisites(const char *qualified_table, Datum after, Oid userid,
				   char **errors)
{
	Oid			types[2] = {INT8ARRAYOID, OIDOID};
	Datum		args[2];
	int			rc;
	uint64		i;
	bool		all_finished = true;
	StringInfoData missing;

	*errors = NULL;
	args[0] = after;
	args[1] = ObjectIdGetDatum(userid);
	rc = SPI_execute_with_args(psprintf("WITH wanted AS (SELECT DISTINCT u.id FROM unnest($1) AS u(id)), "
										"marked AS (UPDATE %s t SET has_dependents = true FROM wanted w "
										"WHERE t.id = w.id AND pg_catalog.pg_has_role($2, t.owner, 'USAGE') "
										"RETURNING t.id, t.state::text AS state, t.errors) "
										"SELECT w.id, m.state, m.errors FROM wanted w "
										"LEFT JOIN marked m ON m.id = w.id ORDER BY w.id",
										qualified_table),
							   2, types, args, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read prerequisites: %s", SPI_result_code_string(rc));
	initStringInfo(&missing);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *id = SPI_getvalue(tup, desc, 1);
		char	   *state = SPI_getvalue(tup, desc, 2);

		if (state == NULL)
		{
			appendStringInfo(&missing, "%s%s", missing.len > 0 ? ", " : "", id);
			continue;
		}
		if (strcmp(state, "failed") == 0 || strcmp(state, "cancelled") == 0)
		{
			if (*errors == NULL)
			{
				char	   *err = SPI_getvalue(tup, desc, 3);

				*errors = psprintf("prerequisite task %s %s%s%s", id, state,
								   err ? ": " : "", err ? err : "");
			}
		}
		else if (strcmp(state, "finished") != 0)
			all_finished = false;
	}
	if (missing.len > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("prerequisite task(s) %s do not exist or are not yours", missing.data),
				 errdetail("A task can only wait for tasks its role may see."),
				 errhint("Tasks pruned by retention no longer exist; leave finished ones out.")));
	if (*errors != NULL)
		return "cancelled";
	return all_finished ? "pending" : "waiting";
}

/*
 * pg_background_queue_note_work
 *		Called by the release trigger: announce released tasks of these
 *		roles to the workers when the transaction commits.
 */
Datum
pg_background_queue_note_work(PG_FUNCTION_ARGS)
{
	ArrayType  *roles = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	bool	   *elemnulls;
	int			n;
	int			i;

	deconstruct_array(roles, OIDOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &elemnulls, &n);
	for (i = 0; i < n; i++)
		if (!elemnulls[i])
			pgbq_remember_work(DatumGetObjectId(elems[i]), 1, 0);
	PG_RETURN_VOID();
}

/*
 * pgbq_lock_prerequisites
 *		Before pg_background_retry decides between waiting and pending for
 *		a task with prerequisites: lock them (has_dependents, as enqueue
 *		does), so that a prerequisite ending concurrently either committed
 *		before (the retry's next statement sees it finished) or waits for
 *		the retry to commit (its release trigger then sees the task
 *		waiting).  A task without prerequisites, or one the caller may not
 *		manage, locks nothing.
 */
void
pgbq_lock_prerequisites(const PgbqCatalog *cat, int64 id, Oid userid)
{
	Oid			save_userid;
	int			save_sec;
	int			nest;
	Oid			types[2] = {INT8OID, OIDOID};
	Datum		args[2];
	int			rc;

	args[0] = Int64GetDatum(id);
	args[1] = ObjectIdGetDatum(userid);
	nest = pgbq_begin_privileged(cat->owner, &save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args(psprintf("UPDATE %s p SET has_dependents = true FROM %s t "
										"WHERE t.id = $1 AND t.after IS NOT NULL "
										"AND t.state IN ('failed', 'cancelled') "
										"AND pg_catalog.pg_has_role($2, t.owner, 'USAGE') "
										"AND p.id = ANY (t.after)",
										cat->qualified_table, cat->qualified_table),
							   2, types, args, NULL, false, 0);
	if (rc != SPI_OK_UPDATE)
		elog(ERROR, "could not lock prerequisites: %s", SPI_result_code_string(rc));
	SPI_finish();
	pgbq_end_privileged(nest, save_userid, save_sec);
}

/*
 * pgbq_release_dependents
 *		Release or cancel the waiting dependents of the task whose UPDATE
 *		fired the AFTER UPDATE row trigger trigdata (it ended and has
 *		dependents): call the trigger function _pg_background_queue_after_end
 *		of the table's schema with the same trigger data, as its own trigger
 *		did before 1.4.  A trigger function is not checked for EXECUTE
 *		privilege when it fires, so neither is it here.
 */
void
pgbq_release_dependents(TriggerData *trigdata)
{
	Oid			nsp = RelationGetNamespace(trigdata->tg_relation);
	char	   *schema = get_namespace_name(nsp);
	Oid			fnoid;
	FmgrInfo	flinfo;

	LOCAL_FCINFO(call, 0);

	if (schema == NULL)
		elog(ERROR, "schema of the task table (OID %u) is gone", nsp);
	fnoid = LookupFuncName(list_make2(makeString(schema),
									  makeString("_pg_background_queue_after_end")),
						   0, NULL, true);
	if (!OidIsValid(fnoid) || get_func_rettype(fnoid) != TRIGGEROID)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("trigger function %s._pg_background_queue_after_end() does not exist",
						quote_identifier(schema)),
				 errdetail("The task table's AFTER UPDATE trigger calls it to release or cancel the dependents of a task that ended.")));
	fmgr_info(fnoid, &flinfo);
	InitFunctionCallInfoData(*call, &flinfo, 0, InvalidOid,
							 (Node *) trigdata, NULL);
	(void) FunctionCallInvoke(call);
}
