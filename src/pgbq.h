/*-------------------------------------------------------------------------
 *
 * pgbq.h
 *	  Declarations shared by the parts of pg_background_queue.
 *
 * Processes:
 *	- the launcher (one static background worker, no database) keeps worker
 *	  pools at the size the queue needs and starts maintenance passes;
 *	- task workers (dynamic, one (database, role) each) claim, run and
 *	  finish tasks of that role;
 *	- maintenance workers (dynamic, one database, superuser) recover
 *	  orphaned tasks, prune old ones and rebuild the demand table.
 *
 * Shared memory holds one slot per possible worker, a demand table keyed by
 * (database, role), a database table and per-topic rate limit state, all
 * protected by one LWLock (see shmem.c for the rules).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGBQ_H
#define PGBQ_H

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/palloc.h"
#include "utils/tuplestore.h"

#define PGBQ_EXTENSION_NAME		"pg_background_queue"
#define PGBQ_NOTIFY_CHANNEL		"pg_background_queue"
#define PGBQ_TOPIC_MAXLEN		(NAMEDATALEN - 1)

#define PGBQ_MAX_DEMANDS		256
#define PGBQ_MAX_DATABASES		128
#define PGBQ_MAX_RATE_TOPICS	512
#define PGBQ_MAX_PAUSED_TOPICS	64
#define PGBQ_DEDUPE_KEY_MAXLEN	1024

/*
 * One role may hold more than PGBQ_RATE_TOPICS_PER_ROLE rate limit entries
 * only while more than PGBQ_RATE_TOPICS_RESERVE entries stay free for the
 * others: a role starting tasks of many distinct rate-limited topics cannot
 * make every other role's topics look limited.
 */
#define PGBQ_RATE_TOPICS_PER_ROLE	64
#define PGBQ_RATE_TOPICS_RESERVE	128

/* ---------------------------------------------------------------------
 * GUCs and topic configuration (guc.c)
 * ------------------------------------------------------------------- */

extern int	pgbq_max_parallel;
extern int	pgbq_retry_count;
extern double pgbq_delay_in_sec;
extern int	pgbq_timeout_in_sec;
extern int	pgbq_worker_idle_timeout;
extern int	pgbq_retention_in_sec;
extern int	pgbq_maintenance_interval;
extern int	pgbq_max_result_size;
extern bool pgbq_strict_topics;
extern bool pgbq_notify;

/* Effective settings of one topic after merging topic_config over GUCs. */
typedef struct PgbqTopicPolicy
{
	bool		configured;		/* named in topic_config */
	int			max_parallel;	/* -1: only the global limit applies */
	int			retry_count;
	double		delay_in_sec;
	int			priority;
	int			timeout_in_sec; /* 0: none */
	int			tasks_per_commit;	/* 1: every task commits alone */
	int			batch_max_ms;	/* a batch claims no task after this */
} PgbqTopicPolicy;

/*
 * Batched commits (worker.c): a topic's tasks_per_commit is at most
 * PGBQ_MAX_TASKS_PER_COMMIT, its batch_max_ms at most PGBQ_MAX_BATCH_MS
 * and PGBQ_DEFAULT_BATCH_MS when not set.  Each task of a batch that writes
 * commits a subtransaction id of its own; PostgreSQL caches at most 64 per
 * backend (PGPROC_MAX_CACHED_SUBXIDS), and one more makes every snapshot in
 * the cluster "suboverflowed" (visibility checks then read pg_subtrans)
 * while the batch runs: the bound keeps a batch inside the cache.
 */
#define PGBQ_MAX_TASKS_PER_COMMIT	64
#define PGBQ_MAX_BATCH_MS			10000
#define PGBQ_DEFAULT_BATCH_MS		100

extern void pgbq_guc_init(void);
extern void pgbq_topic_policy(const char *topic, PgbqTopicPolicy *policy);
extern bool pgbq_topic_configured(const char *topic);
extern int	pgbq_configured_topic_count(void);
extern const char *pgbq_configured_topic_name(int i);

/* ---------------------------------------------------------------------
 * Shared memory (shmem.c)
 * ------------------------------------------------------------------- */

typedef enum PgbqSlotState
{
	PGBQ_SLOT_FREE = 0,
	PGBQ_SLOT_STARTING,			/* reserved by the launcher, not yet attached */
	PGBQ_SLOT_IDLE,				/* attached, holds no task */
	PGBQ_SLOT_RUNNING			/* holds a task */
} PgbqSlotState;

typedef enum PgbqWorkerKind
{
	PGBQ_KIND_TASK = 1,
	PGBQ_KIND_MAINTENANCE
} PgbqWorkerKind;

/*
 * Why a task worker is to leave (PgbqSlot.exit_reasons, a bit mask): any
 * reason makes it leave at its next look; the reasons differ in who sets
 * them and in what the leaving worker still does.
 */
#define PGBQ_EXIT_EVICTED	0x01	/* launcher: make room for another role */
#define PGBQ_EXIT_DROPPED	0x02	/* DROP DATABASE / EXTENSION: hand nothing over */
#define PGBQ_EXIT_LEAVING	0x04	/* the worker itself: idle timeout or gave
									 * a task back; no more wake-ups for it */
#define PGBQ_EXIT_YIELD		0x08	/* launcher: a role without workers waits;
									 * finish the current task, claim no next,
									 * announce the role's remaining work */

/*
 * Hand-overs between (database, role) pairs (launcher.c): a pair without a
 * worker gets a slot before any pair gets a second one; a pair's only
 * worker yields to a waiting pair once it has served this long (a worker
 * start costs tens of milliseconds: a shorter turn would spend the slot
 * starting processes).
 */
#define PGBQ_YIELD_AFTER_MS		1000

/*
 * Rows one worker's transaction can hold locked from its claims and still
 * let the claim floor pass (claim_floor.c): a batch's tasks, the next task
 * claimed with the last, and rows claimed only to be refused.  Claims
 * beyond it hold the floor back, as all claims did before.
 */
#define PGBQ_SLOT_HELD_CLAIMS	(PGBQ_MAX_TASKS_PER_COMMIT + 16)

typedef struct PgbqSlot
{
	PgbqSlotState state;
	PgbqWorkerKind kind;
	uint32		generation;		/* bumped on every reservation */
	pid_t		pid;
	Oid			dboid;
	Oid			roleoid;
	Latch	   *latch;
	int64		task_id;
	bool		topic_isnull;
	char		topic[NAMEDATALEN];
	TimestampTz task_started_at;
	TimestampTz backend_start;
	uint64		tasks_done;
	bool		cancel_requested;	/* for task_id */
	uint8		exit_reasons;	/* PGBQ_EXIT_* bits; 0: stays */
	bool		woken;			/* promised to announced work, not yet looked */
	bool		waiting_capacity;	/* wake me when a running slot frees */
	TimestampTz wake_at;		/* idle worker: when its delayed work is due */
	bool		asleep;			/* found no work, sleeps on its latch */
	int			nheld;			/* used entries of held */
	int64		held[PGBQ_SLOT_HELD_CLAIMS];	/* ids of the claimable rows
												 * the worker's open
												 * transaction locked in claims
												 * (claim_floor.c); written by
												 * the worker only */
	int64		started_id;		/* a row the worker's last commit marked
								 * running or finished, until its task is
								 * given back or fails (claim_floor.c:
								 * pgbq_floor_span_settled); 0: none;
								 * written by the worker only */
} PgbqSlot;

typedef struct PgbqDemand
{
	bool		in_use;
	Oid			dboid;
	Oid			roleoid;
	int			want;			/* workers wanted beyond the idle ones */
	uint64		seq;			/* bumped whenever work is announced */
	TimestampTz wake_at;		/* start a worker at this time (0: none) */
	TimestampTz retry_after;	/* back off after failed starts */
	TimestampTz waiting_since;	/* want became > 0 (0: not waiting); the
								 * longest-waiting pair is served first */
} PgbqDemand;

typedef struct PgbqDatabase
{
	bool		in_use;
	Oid			dboid;
	bool		has_extension;
	bool		maintenance_requested;
	TimestampTz last_maintenance;
	bool		drop_in_progress;	/* DROP EXTENSION waits for our workers */
} PgbqDatabase;

typedef struct PgbqRateTopic
{
	bool		in_use;
	bool		isnull;
	char		topic[NAMEDATALEN];
	Oid			roleoid;		/* the role whose task created the entry */
	TimestampTz last_start;
} PgbqRateTopic;

/* A row's position in the claim order (claim index without the owner). */
typedef struct PgbqClaimKey
{
	int32		priority;
	TimestampTz next_run_at;
	int64		id;
} PgbqClaimKey;

/* Lowerings an advance in flight can account for (see claim_floor.c). */
#define PGBQ_FLOOR_RING			16

typedef struct PgbqFloor
{
	bool		in_use;
	Oid			dboid;
	Oid			roleoid;
	Oid			table_oid;		/* the task table the floor is about */
	bool		valid;			/* false: claim from the front */
	PgbqClaimKey floor;			/* every claimable row is at or above it */
	uint64		epoch;			/* bumped by every lowering */
	PgbqClaimKey ring[PGBQ_FLOOR_RING]; /* lowering of epoch e at e % RING */
	TimestampTz last_front_scan;	/* last claim from the front */
} PgbqFloor;

/*
 * Notifications task workers share (catalog.c): after its commit, a worker
 * leaves its tasks' notifications here while a worker of its database (the
 * flusher) sends everyone's; one that finds no flusher at work becomes it.
 */
#define PGBQ_NOTIFY_BUFFER		64	/* entries, all databases */
#define PGBQ_NOTIFY_FLUSHERS	16	/* databases flushing at once */

typedef struct PgbqSharedNotify
{
	Oid			dboid;
	int64		task_id;
	char		state[12];		/* finished, failed or cancelled */
} PgbqSharedNotify;

typedef struct PgbqNotifyBuffer
{
	slock_t		mutex;			/* guards every field below */
	int			count;			/* entries[0 .. count - 1] are in use */
	PgbqSharedNotify entries[PGBQ_NOTIFY_BUFFER];
	Oid			flushing_db[PGBQ_NOTIFY_FLUSHERS];	/* InvalidOid: free */
	pid_t		flushing_pid[PGBQ_NOTIFY_FLUSHERS];
} PgbqNotifyBuffer;

typedef struct PgbqShared
{
	LWLock	   *lock;
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	bool		rescan_requested;	/* maintenance for every database */
	bool		unmet_demand;	/* launcher waits for a worker to free up */
	bool		hungry_demand;	/* ... for a pair that has no worker: then a
								 * task's end wakes it (a running worker may
								 * be asked to yield); demand of pairs that
								 * have workers waits for idle ones, which
								 * wake it when they sleep */
	int			nslots;
	PgbqDemand	demands[PGBQ_MAX_DEMANDS];
	PgbqDatabase databases[PGBQ_MAX_DATABASES];
	PgbqRateTopic rates[PGBQ_MAX_RATE_TOPICS];
	PgbqFloor	floors[PGBQ_MAX_DEMANDS];	/* claim_floor.c */
	ConditionVariable task_ended;	/* broadcast after a commit that ended tasks */
	PgbqNotifyBuffer notify;	/* catalog.c; its own spinlock */
	PgbqSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} PgbqShared;

extern PgbqShared *pgbq_shared;

extern void pgbq_shmem_init(void);
extern void pgbq_require_shmem(void);

/* Outcome of asking for permission to start a task. */
typedef enum PgbqStartResult
{
	PGBQ_START_OK,
	PGBQ_START_NO_CAPACITY,		/* global or topic concurrency limit */
	PGBQ_START_RATE_LIMITED,	/* topic delay_in_sec not yet elapsed */
	PGBQ_START_PAUSED			/* topic paused (workflow.c) */
} PgbqStartResult;

extern PgbqStartResult pgbq_slot_try_start(int slotno, int64 task_id,
										   const char *topic,
										   const PgbqTopicPolicy *policy,
										   TimestampTz now,
										   TimestampTz *retry_at);
extern List *pgbq_slot_held_back_topics(int slotno, TimestampTz now,
										TimestampTz *rate_until);
extern void pgbq_slot_forget_capacity_wait(int slotno);
extern void pgbq_slot_hand_over(int slotno);
extern void pgbq_slot_finish_task(int slotno);
extern void pgbq_slot_clear(PgbqSlot *s);
extern PgbqDemand *pgbq_demand_lookup(Oid dboid, Oid roleoid, bool create);
extern PgbqDatabase *pgbq_database_lookup(Oid dboid, bool create);
extern void pgbq_announce_work(Oid dboid, Oid roleoid, int ready,
							   TimestampTz earliest_future);
extern void pgbq_request_maintenance(Oid dboid);
extern void pgbq_wake_launcher(void);
extern int	pgbq_live_task_workers(bool calibrate);
extern bool pgbq_signal_cancel(int64 task_id, Oid dboid);
extern int	pgbq_request_database_exit(Oid dboid, bool forget);
extern void pgbq_set_drop_in_progress(Oid dboid, bool on);
extern bool pgbq_drop_in_progress(Oid dboid);
extern void pgbq_wake_idle_workers(void);
extern bool pgbq_others_wait(int slotno);
extern bool pgbq_slot_yielding(int slotno);

/* ---------------------------------------------------------------------
 * Claim floor (claim_floor.c)
 * ------------------------------------------------------------------- */

extern int	pgbq_claim_key_cmp(const PgbqClaimKey *a, const PgbqClaimKey *b);
extern void pgbq_claim_key_lowest(PgbqClaimKey *key);
extern void pgbq_floor_read(Oid dboid, Oid roleoid, Oid table_oid,
							PgbqClaimKey *key, uint64 *epoch);
extern void pgbq_floor_advance(Oid dboid, Oid roleoid, Oid table_oid,
							   uint64 epoch, const PgbqClaimKey *proposal);
extern void pgbq_floor_hold(int slotno, Oid roleoid, Oid table_oid,
							const PgbqClaimKey *key);
extern void pgbq_floor_hold_started(int64 id);
extern void pgbq_floor_hold_unstarted(int64 id);
extern bool pgbq_floor_span_settled(Oid dboid, Oid roleoid,
									const PgbqClaimKey *start,
									const PgbqClaimKey *found);
extern struct ArrayType *pgbq_floor_held_ids(Oid dboid, Oid roleoid,
												const int64 *extra, int nextra,
												int max_held,
												const PgbqClaimKey *from,
												int64 *settled_to);

/* ---------------------------------------------------------------------
 * Workflows (workflow.c): paused topics
 * ------------------------------------------------------------------- */

extern Size pgbq_paused_shmem_size(void);

/* listeners.c */
extern Size pgbq_listeners_shmem_size(void);
extern void pgbq_listeners_shmem_init(void);
extern void pgbq_listener_utility(Node *parsetree);
extern bool pgbq_anyone_listens(Oid dboid);
extern void pgbq_paused_shmem_init(void);
extern bool pgbq_topic_paused(const char *topic);
extern List *pgbq_paused_topics(List *topics);
extern void pgbq_validate_dedupe_key(const char *key, int element);
extern int64 pgbq_insert_workflow(const char *qualified_table,
								  const char *qualified_schema,
								  Datum *args5, const char *nulls5,
								  const char *key, const char *state,
								  Datum after, bool has_after,
								  const char *errors, bool *inserted);
extern bool pgbq_after_arg(struct ArrayType *after);
struct TriggerData;
extern void pgbq_release_dependents(struct TriggerData *trigdata);
extern const char *pgbq_prerequisites(const char *qualified_table, Datum after,
									  Oid userid, char **errors);

/* ---------------------------------------------------------------------
 * Catalog helpers (catalog.c)
 * ------------------------------------------------------------------- */

typedef struct PgbqCatalog
{
	Oid			extoid;
	Oid			nspoid;
	Oid			table_oid;
	Oid			owner;
	char	   *qualified_table;	/* quoted schema.pg_background_tasks */
	char	   *qualified_schema;	/* quoted schema */
	bool		has_workflows;	/* SQL objects of 1.2 or later (after, dedupe_key) */
	bool		has_claim_floor;	/* 1.3's claimable trigger keeps the floor */
	bool		has_results;	/* SQL objects of 1.3 or later (result) */
} PgbqCatalog;

extern bool pgbq_catalog_lookup(PgbqCatalog *cat, bool missing_ok);

/* enqueue.c: checks shared by the SQL entry points */
extern void pgbq_check_preloaded(void);
extern void pgbq_check_topic_name(const char *topic);
extern int	pgbq_begin_privileged(Oid owner, Oid *save_userid,
								  int *save_sec_context);
extern void pgbq_end_privileged(int nestlevel, Oid save_userid,
								int save_sec_context);
extern void pgbq_pin_bookkeeping_settings(void);
extern void pgbq_start_bookkeeping_xact(void);
extern const char *pgbq_state_retry_decision(int attempts,
											 const PgbqTopicPolicy *policy,
											 bool cancelled, int *delay_sec);
extern void pgbq_record_attempt_failure(const PgbqCatalog *cat, int64 task_id,
										const char *topic, bool cancelled,
										const char *sqlstate,
										const char *message,
										const char *detail);
extern void pgbq_notify_terminal(int64 task_id, const char *state);
extern void pgbq_defer_notifications(void);
extern void pgbq_forget_notifications(void);
extern int	pgbq_held_notifications(void);
extern void pgbq_forget_notifications_since(int n);
extern void pgbq_flush_notifications(void);
extern void pgbq_recover_from_error(MemoryContext ctx);
extern void pgbq_lock_prerequisites(const PgbqCatalog *cat, int64 id,
									Oid userid);

/* ---------------------------------------------------------------------
 * Processes (launcher.c, worker.c, maintenance.c, executor.c)
 * ------------------------------------------------------------------- */

extern void pgbq_register_launcher(void);
extern bool pgbq_batch_ran(int64 task_id);	/* worker_bookkeeping.c */
extern PGDLLEXPORT void pgbq_launcher_main(Datum main_arg);
extern PGDLLEXPORT void pgbq_worker_main(Datum main_arg);
extern void pgbq_maintenance_run(int slotno);
/* What pgbq_execute_sql captured: the rows of the last row-returning statement. */
typedef struct PgbqResult
{
	Datum		value;			/* jsonb, in the caller's memory context */
	bool		isnull;			/* no statement returned rows */
	bool		truncated;		/* cut at a row boundary by max_result_size */
} PgbqResult;

extern void pgbq_execute_sql(const char *sql, PgbqResult *result);

/* admin.c: set up a materialized set-returning call */
extern Tuplestorestate *pgbq_materialize(FunctionCallInfo fcinfo,
										 TupleDesc *tupdesc);

/* wait.c */
extern void pgbq_wait_note_end(void);
extern void pgbq_reset_session(void);
extern bool pgbq_sql_batchable(const char *sql);
extern void pgbq_fire_deferred_triggers(void);

/* ---------------------------------------------------------------------
 * Enqueue-side helpers (enqueue.c)
 * ------------------------------------------------------------------- */

extern void pgbq_enqueue_init(void);
extern void pgbq_remember_work(Oid roleoid, int ready, TimestampTz future);

#endif							/* PGBQ_H */
