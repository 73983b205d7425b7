/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  Configuration parameters of pg_background_queue, and the topic
 *	  configuration parsed from pg_background_queue.topic_config.
 *
 * topic_config is a JSON object mapping topic names to objects with the
 * keys max_parallel_running_tasks_count, retry_count, delay_in_sec,
 * priority, timeout_in_sec, tasks_per_commit and batch_max_ms.  It is
 * parsed with the server's JSON parser in the check hook; anything invalid
 * is rejected at SET / ALTER SYSTEM / reload time with a message naming the
 * topic and key, so the rest of the code only ever sees a valid
 * configuration (the parsed form travels in the GUC "extra" pointer).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/memutils.h"
#include "postmaster/bgworker.h"
#include "utils/guc.h"

#include "compat.h"
#include "pgbq.h"

int			pgbq_max_parallel = 4;
int			pgbq_retry_count = 0;
double		pgbq_delay_in_sec = 0;
int			pgbq_timeout_in_sec = 0;
int			pgbq_worker_idle_timeout = 60;
int			pgbq_retention_in_sec = 7 * 24 * 3600;
int			pgbq_maintenance_interval = 60;
int			pgbq_max_result_size = 64 * 1024;
bool		pgbq_strict_topics = false;
bool		pgbq_notify = true;

static char *pgbq_topic_config_string = NULL;

/* Largest nesting accepted before the parser is even called. */
#define PGBQ_TOPIC_JSON_MAX_DEPTH	8
#define PGBQ_TOPIC_MAX_COUNT		256

typedef struct PgbqTopicEntry
{
	char		topic[NAMEDATALEN];
	int			max_parallel;	/* -1: not set */
	int			retry_count;
	double		delay_in_sec;	/* < 0: not set */
	int			priority;
	int			timeout_in_sec;
	int			tasks_per_commit;	/* 0: not set */
	int			batch_max_ms;	/* 0: not set */
} PgbqTopicEntry;

typedef struct PgbqTopicConfig
{
	int			ntopics;
	PgbqTopicEntry topics[FLEXIBLE_ARRAY_MEMBER];
} PgbqTopicConfig;

/* Installed by the assign hook; NULL means "no topics configured". */
static PgbqTopicConfig *pgbq_topic_config = NULL;

typedef enum PgbqTopicKey
{
	PGBQ_KEY_NONE = -1,
	PGBQ_KEY_MAX_PARALLEL,
	PGBQ_KEY_RETRY_COUNT,
	PGBQ_KEY_DELAY,
	PGBQ_KEY_PRIORITY,
	PGBQ_KEY_TIMEOUT,
	PGBQ_KEY_TASKS_PER_COMMIT,
	PGBQ_KEY_BATCH_MAX_MS
} PgbqTopicKey;

static const char *const pgbq_topic_key_names[] = {
	"max_parallel_running_tasks_count",
	"retry_count",
	"delay_in_sec",
	"priority",
	"timeout_in_sec",
	"tasks_per_commit",
	"batch_max_ms"
};

/* State of the semantic actions while parsing topic_config. */
typedef struct PgbqParseState
{
	int			depth;
	PgbqTopicConfig *config;	/* palloc'd, copied to GUC memory on success */
	PgbqTopicEntry *current;
	PgbqTopicKey key;
	char		keyname[NAMEDATALEN];
	bool		key_seen[lengthof(pgbq_topic_key_names)];
	char	   *error;			/* first error, palloc'd */
} PgbqParseState;

static void
pgbq_parse_fail(PgbqParseState *st, const char *fmt,...)
pg_attribute_printf(2, 3);

/*
 * pgbq_parse_fail
 *		Remember the first error found; later ones are ignored.
 */
static void
pgbq_parse_fail(PgbqParseState *st, const char *fmt,...)
{
	va_list		ap;
	char		buf[512];

	if (st->error != NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	st->error = pstrdup(buf);
}

/*
 * pgbq_json_object_start
 *		Objects are allowed at the top level and as topic values only.
 */
static PGBQ_JSON_ACTION
pgbq_json_object_start(void *state)
{
	PgbqParseState *st = (PgbqParseState *) state;

	st->depth++;
	if (st->depth == 3 && st->current != NULL)
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be a number, not an object",
						st->current->topic, st->keyname);
	else if (st->depth > 3)
		pgbq_parse_fail(st, "topic_config is nested too deeply");
	PGBQ_JSON_ACTION_DONE;
}

/*
 * pgbq_json_object_end
 *		Track nesting depth.
 */
static PGBQ_JSON_ACTION
pgbq_json_object_end(void *state)
{
	PgbqParseState *st = (PgbqParseState *) state;

	st->depth--;
	PGBQ_JSON_ACTION_DONE;
}

/*
 * pgbq_json_array_start
 *		Arrays appear nowhere in a valid configuration.
 */
static PGBQ_JSON_ACTION
pgbq_json_array_start(void *state)
{
	PgbqParseState *st = (PgbqParseState *) state;

	if (st->depth == 0)
		pgbq_parse_fail(st, "topic_config must be a JSON object mapping topic names to objects");
	else if (st->depth == 1 && st->current != NULL)
		pgbq_parse_fail(st, "topic \"%s\": configuration must be a JSON object",
						st->current->topic);
	else if (st->current != NULL)
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be a number, not an array",
						st->current->topic, st->keyname);
	st->depth++;
	PGBQ_JSON_ACTION_DONE;
}

/*
 * pgbq_json_array_end
 *		Track nesting depth.
 */
static PGBQ_JSON_ACTION
pgbq_json_array_end(void *state)
{
	PgbqParseState *st = (PgbqParseState *) state;

	st->depth--;
	PGBQ_JSON_ACTION_DONE;
}

/*
 * pgbq_json_field_start
 *		A field at depth 1 names a topic; at depth 2 it names a key.
 */
static PGBQ_JSON_ACTION
pgbq_json_field_start(void *state, char *fname, bool isnull)
{
	PgbqParseState *st = (PgbqParseState *) state;
	PgbqTopicConfig *cfg = st->config;

	(void) isnull;
	if (st->depth == 1)
	{
		int			i;

		st->current = NULL;
		if (fname[0] == '\0')
		{
			pgbq_parse_fail(st, "topic names must not be empty");
			PGBQ_JSON_ACTION_DONE;
		}
		if (strlen(fname) > PGBQ_TOPIC_MAXLEN)
		{
			pgbq_parse_fail(st, "topic name \"%.20s...\" is longer than %d bytes",
							fname, PGBQ_TOPIC_MAXLEN);
			PGBQ_JSON_ACTION_DONE;
		}
		for (i = 0; i < cfg->ntopics; i++)
		{
			if (strcmp(cfg->topics[i].topic, fname) == 0)
			{
				pgbq_parse_fail(st, "topic \"%s\" is configured twice", fname);
				PGBQ_JSON_ACTION_DONE;
			}
		}
		if (cfg->ntopics >= PGBQ_TOPIC_MAX_COUNT)
		{
			pgbq_parse_fail(st, "topic_config may configure at most %d topics",
							PGBQ_TOPIC_MAX_COUNT);
			PGBQ_JSON_ACTION_DONE;
		}
		st->current = &cfg->topics[cfg->ntopics++];
		memset(st->current, 0, sizeof(PgbqTopicEntry));
		strlcpy(st->current->topic, fname, NAMEDATALEN);
		st->current->max_parallel = -1;
		st->current->retry_count = -1;
		st->current->delay_in_sec = -1;
		st->current->priority = -1;
		st->current->timeout_in_sec = -1;
		memset(st->key_seen, 0, sizeof(st->key_seen));
	}
	else if (st->depth == 2 && st->current != NULL)
	{
		int			k;

		st->key = PGBQ_KEY_NONE;
		strlcpy(st->keyname, fname, NAMEDATALEN);
		for (k = 0; k < (int) lengthof(pgbq_topic_key_names); k++)
		{
			if (strcmp(fname, pgbq_topic_key_names[k]) == 0)
				st->key = (PgbqTopicKey) k;
		}
		if (st->key == PGBQ_KEY_NONE)
			pgbq_parse_fail(st, "topic \"%s\": unknown key \"%s\" (valid keys: max_parallel_running_tasks_count, retry_count, delay_in_sec, priority, timeout_in_sec, tasks_per_commit, batch_max_ms)",
							st->current->topic, st->keyname);
		else if (st->key_seen[st->key])
			pgbq_parse_fail(st, "topic \"%s\": key \"%s\" is given twice",
							st->current->topic, st->keyname);
		else
			st->key_seen[st->key] = true;
	}
	PGBQ_JSON_ACTION_DONE;
}

/*
 * pgbq_json_scalar
 *		Scalars are only valid as key values: non-negative numbers, integral
 *		except for delay_in_sec.
 */
static PGBQ_JSON_ACTION
pgbq_json_scalar(void *state, char *token, JsonTokenType tokentype)
{
	PgbqParseState *st = (PgbqParseState *) state;
	PgbqTopicEntry *t = st->current;
	double		val;
	char	   *end;

	if (st->depth == 0)
	{
		pgbq_parse_fail(st, "topic_config must be a JSON object mapping topic names to objects");
		PGBQ_JSON_ACTION_DONE;
	}
	if (t == NULL)
		PGBQ_JSON_ACTION_DONE;
	if (st->depth == 1)
	{
		pgbq_parse_fail(st, "topic \"%s\": configuration must be a JSON object",
						t->topic);
		PGBQ_JSON_ACTION_DONE;
	}
	if (st->depth != 2 || st->key == PGBQ_KEY_NONE)
		PGBQ_JSON_ACTION_DONE;

	if (tokentype != JSON_TOKEN_NUMBER)
	{
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be a number",
						t->topic, st->keyname);
		PGBQ_JSON_ACTION_DONE;
	}
	errno = 0;
	val = strtod(token, &end);
	if (errno != 0 || *end != '\0' || isnan(val) || isinf(val))
	{
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" has an invalid value \"%s\"",
						t->topic, st->keyname, token);
		PGBQ_JSON_ACTION_DONE;
	}
	if (val < 0)
	{
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must not be negative",
						t->topic, st->keyname);
		PGBQ_JSON_ACTION_DONE;
	}
	if (st->key == PGBQ_KEY_DELAY)
	{
		if (val > 86400.0 * 365)
			pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be at most one year",
							t->topic, st->keyname);
		else
			t->delay_in_sec = val;
		PGBQ_JSON_ACTION_DONE;
	}
	if (val != floor(val))
	{
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be an integer",
						t->topic, st->keyname);
		PGBQ_JSON_ACTION_DONE;
	}
	if (val > (double) PG_INT32_MAX)
	{
		pgbq_parse_fail(st, "topic \"%s\": key \"%s\" is out of range (at most %d)",
						t->topic, st->keyname, PG_INT32_MAX);
		PGBQ_JSON_ACTION_DONE;
	}
	switch (st->key)
	{
		case PGBQ_KEY_MAX_PARALLEL:
			t->max_parallel = (int) val;
			break;
		case PGBQ_KEY_RETRY_COUNT:
			t->retry_count = (int) val;
			break;
		case PGBQ_KEY_PRIORITY:
			t->priority = (int) val;
			break;
		case PGBQ_KEY_TIMEOUT:
			t->timeout_in_sec = (int) val;
			break;
		case PGBQ_KEY_TASKS_PER_COMMIT:
			if (val < 1 || val > PGBQ_MAX_TASKS_PER_COMMIT)
				pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be between 1 and %d",
								t->topic, st->keyname, PGBQ_MAX_TASKS_PER_COMMIT);
			else
				t->tasks_per_commit = (int) val;
			break;
		case PGBQ_KEY_BATCH_MAX_MS:
			if (val < 1 || val > PGBQ_MAX_BATCH_MS)
				pgbq_parse_fail(st, "topic \"%s\": key \"%s\" must be between 1 and %d",
								t->topic, st->keyname, PGBQ_MAX_BATCH_MS);
			else
				t->batch_max_ms = (int) val;
			break;
		default:
			break;
	}
	PGBQ_JSON_ACTION_DONE;
}

/*
 * pgbq_json_depth
 *		Maximum bracket nesting of a JSON text, ignoring strings.  Checked
 *		before parsing so that hostile input cannot exhaust the stack of the
 *		recursive parser (which would raise an ERROR inside a check hook).
 */
static int
pgbq_json_depth(const char *s)
{
	int			depth = 0;
	int			maxdepth = 0;
	bool		instr = false;

	for (; *s; s++)
	{
		if (instr)
		{
			if (*s == '\\' && s[1] != '\0')
				s++;
			else if (*s == '"')
				instr = false;
			continue;
		}
		if (*s == '"')
			instr = true;
		else if (*s == '{' || *s == '[')
		{
			depth++;
			if (depth > maxdepth)
				maxdepth = depth;
		}
		else if (*s == '}' || *s == ']')
			depth--;
	}
	return maxdepth;
}

static bool pgbq_parse_topic_config(const char *json, PgbqParseState *st_out);

/*
 * pgbq_check_topic_config
 *		GUC check hook: parse and validate, hand the result over as extra.
 */
static bool
pgbq_check_topic_config(char **newval, void **extra, GucSource source)
{
	const char *json = *newval;
	PgbqParseState st;
	PgbqTopicConfig *result;
	Size		size;
	const char *p;
	MemoryContext tmpctx;
	MemoryContext oldctx;
	bool		ok;

	(void) source;

	/* Empty or all-blank means "no topic configuration". */
	for (p = json ? json : ""; *p && isspace((unsigned char) *p); p++)
		;
	if (json == NULL || *p == '\0')
	{
		*extra = NULL;
		return true;
	}

	if (pgbq_json_depth(json) > PGBQ_TOPIC_JSON_MAX_DEPTH)
	{
		GUC_check_errdetail("topic_config is nested too deeply (at most %d levels).",
							PGBQ_TOPIC_JSON_MAX_DEPTH);
		return false;
	}

	/* parse in a scratch context: reloads must not leak in the postmaster */
	tmpctx = AllocSetContextCreate(CurrentMemoryContext, "pg_background_queue topic_config",
								   ALLOCSET_SMALL_SIZES);
	oldctx = MemoryContextSwitchTo(tmpctx);
	ok = pgbq_parse_topic_config(json, &st);
	MemoryContextSwitchTo(oldctx);
	if (ok)
	{
		size = offsetof(PgbqTopicConfig, topics) +
			sizeof(PgbqTopicEntry) * st.config->ntopics;
		result = (PgbqTopicConfig *) pgbq_guc_malloc(size);
		if (result == NULL)
		{
			GUC_check_errdetail("out of memory");
			ok = false;
		}
		else
		{
			memcpy(result, st.config, size);
			*extra = result;
		}
	}
	MemoryContextDelete(tmpctx);
	return ok;
}

/*
 * pgbq_parse_topic_config
 *		Parse and validate topic_config into st->config; on failure set the
 *		GUC error detail and return false.
 */
static bool
pgbq_parse_topic_config(const char *json, PgbqParseState *st_out)
{
	PgbqParseState st;
	JsonSemAction sem;
	JsonLexContext *lex;
	JsonParseErrorType rc;

	memset(&st, 0, sizeof(st));
	st.config = palloc0(offsetof(PgbqTopicConfig, topics) +
						sizeof(PgbqTopicEntry) * PGBQ_TOPIC_MAX_COUNT);
	st.key = PGBQ_KEY_NONE;

	memset(&sem, 0, sizeof(sem));
	sem.semstate = &st;
	sem.object_start = pgbq_json_object_start;
	sem.object_end = pgbq_json_object_end;
	sem.array_start = pgbq_json_array_start;
	sem.array_end = pgbq_json_array_end;
	sem.object_field_start = pgbq_json_field_start;
	sem.scalar = pgbq_json_scalar;

	lex = pgbq_make_json_lexer(pstrdup(json), strlen(json));
	rc = pg_parse_json(lex, &sem);
	if (rc != JSON_SUCCESS)
	{
		GUC_check_errdetail("topic_config is not valid JSON: %s",
							json_errdetail(rc, lex));
		return false;
	}
	if (st.error != NULL)
	{
		GUC_check_errdetail("%s.", st.error);
		return false;
	}
	*st_out = st;
	return true;
}

/*
 * pgbq_assign_topic_config
 *		GUC assign hook: install the parsed configuration.
 */
static void
pgbq_assign_topic_config(const char *newval, void *extra)
{
	(void) newval;
	pgbq_topic_config = (PgbqTopicConfig *) extra;
}

/*
 * pgbq_find_topic
 *		The configuration entry of a topic, or NULL.
 */
static const PgbqTopicEntry *
pgbq_find_topic(const char *topic)
{
	int			i;

	if (topic == NULL || pgbq_topic_config == NULL)
		return NULL;
	for (i = 0; i < pgbq_topic_config->ntopics; i++)
	{
		if (strcmp(pgbq_topic_config->topics[i].topic, topic) == 0)
			return &pgbq_topic_config->topics[i];
	}
	return NULL;
}

/*
 * pgbq_topic_policy
 *		Effective settings of a topic (NULL: the default topic).
 */
void
pgbq_topic_policy(const char *topic, PgbqTopicPolicy *policy)
{
	const PgbqTopicEntry *t = pgbq_find_topic(topic);

	policy->configured = (t != NULL);
	policy->max_parallel = (t && t->max_parallel >= 0) ? t->max_parallel : -1;
	policy->retry_count = (t && t->retry_count >= 0) ? t->retry_count : pgbq_retry_count;
	policy->delay_in_sec = (t && t->delay_in_sec >= 0) ? t->delay_in_sec : pgbq_delay_in_sec;
	policy->priority = (t && t->priority >= 0) ? t->priority : 100;
	policy->timeout_in_sec = (t && t->timeout_in_sec >= 0) ? t->timeout_in_sec : pgbq_timeout_in_sec;
	policy->tasks_per_commit = (t && t->tasks_per_commit > 0) ? t->tasks_per_commit : 1;
	policy->batch_max_ms = (t && t->batch_max_ms > 0) ? t->batch_max_ms : PGBQ_DEFAULT_BATCH_MS;
}

/*
 * pgbq_topic_configured
 *		Whether topic_config names this topic.
 */
bool
pgbq_topic_configured(const char *topic)
{
	return pgbq_find_topic(topic) != NULL;
}

/*
 * pgbq_configured_topic_count / pgbq_configured_topic_name
 *		Iterate over configured topics.
 */
int
pgbq_configured_topic_count(void)
{
	return pgbq_topic_config ? pgbq_topic_config->ntopics : 0;
}

const char *
pgbq_configured_topic_name(int i)
{
	Assert(pgbq_topic_config != NULL && i < pgbq_topic_config->ntopics);
	return pgbq_topic_config->topics[i].topic;
}

/*
 * pgbq_guc_init
 *		Define every parameter.  Called from _PG_init.
 */
void
pgbq_guc_init(void)
{
	DefineCustomIntVariable("pg_background_queue.max_parallel_running_tasks_count",
							"Maximum number of tasks running at once in the whole cluster.",
							"Also the maximum number of task workers. Per-topic limits come from topic_config.",
							&pgbq_max_parallel,
							Max(1, max_worker_processes / 2),
							0, 1024,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_background_queue.retry_count",
							"Default number of retries of a failed task.",
							"Retry n waits 2^n seconds after failed attempt n.",
							&pgbq_retry_count,
							0, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomRealVariable("pg_background_queue.delay_in_sec",
							 "Default minimum spacing in seconds between the starts of two tasks of a topic.",
							 NULL,
							 &pgbq_delay_in_sec,
							 0, 0, 86400.0 * 365,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("pg_background_queue.timeout_in_sec",
							"Default time limit of one task attempt (0 disables).",
							NULL,
							&pgbq_timeout_in_sec,
							0, 0, INT_MAX / 1000,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_background_queue.worker_idle_timeout",
							"Time an idle worker waits for work before it exits.",
							NULL,
							&pgbq_worker_idle_timeout,
							60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_background_queue.retention_in_sec",
							"Age after which finished, failed and cancelled tasks are pruned (-1 keeps them).",
							"Pruned tasks are folded into pg_background_queue_stats.",
							&pgbq_retention_in_sec,
							7 * 24 * 3600, -1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("pg_background_queue.maintenance_interval",
							"Interval between maintenance passes (orphan recovery, retention, demand rebuild) of each database.",
							NULL,
							&pgbq_maintenance_interval,
							60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("pg_background_queue.strict_topics",
							 "Reject tasks whose topic is not named in topic_config.",
							 NULL,
							 &pgbq_strict_topics,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("pg_background_queue.notify",
							 "Send NOTIFY pg_background_queue when a task finishes, fails or is cancelled.",
							 NULL,
							 &pgbq_notify,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("pg_background_queue.max_result_size",
							"Maximum size of a task's stored result (0 stores no results).",
							"The JSON array of the rows of the task's last row-returning statement is cut at a row boundary to stay within this size, and result_truncated is set.",
							&pgbq_max_result_size,
							64 * 1024, 0, 64 * 1024 * 1024,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomStringVariable("pg_background_queue.topic_config",
							   "Per-topic configuration as a JSON object.",
							   "Keys per topic: max_parallel_running_tasks_count, retry_count, delay_in_sec, priority, timeout_in_sec, tasks_per_commit, batch_max_ms.",
							   &pgbq_topic_config_string,
							   "",
							   PGC_SIGHUP, 0,
							   pgbq_check_topic_config,
							   pgbq_assign_topic_config,
							   NULL);

	MarkGUCPrefixReserved("pg_background_queue");
}
