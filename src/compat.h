/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Version shims for PostgreSQL 13 to 17, kept in one place so that the
 *	  rest of the code reads as if written for a single server version.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PGBQ_COMPAT_H
#define PGBQ_COMPAT_H

#include "postmaster/bgworker.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#if PG_VERSION_NUM < 130000
#error "pg_background_queue requires PostgreSQL 13 or later"
#endif

/* Parse analysis with no parameters (renamed in 15). */
#if PG_VERSION_NUM >= 150000
#define pgbq_analyze_and_rewrite(raw, sql) \
	pg_analyze_and_rewrite_fixedparams((raw), (sql), NULL, 0, NULL)
#else
#define pgbq_analyze_and_rewrite(raw, sql) \
	pg_analyze_and_rewrite((raw), (sql), NULL, 0, NULL)
#endif

/* Reserving our GUC prefix (15 renamed the function). */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(prefix) EmitWarningsOnPlaceholders(prefix)
#endif

/* 15 added a separate hook for shared memory requests. */
#if PG_VERSION_NUM >= 150000
#define PGBQ_HAVE_SHMEM_REQUEST_HOOK 1
#endif

/* JSON semantic actions return an error code from 16 on. */
#if PG_VERSION_NUM >= 160000
#define PGBQ_JSON_ACTION JsonParseErrorType
#define PGBQ_JSON_ACTION_DONE return JSON_SUCCESS
#else
#define PGBQ_JSON_ACTION void
#define PGBQ_JSON_ACTION_DONE return
#endif

/* 17 takes the lexer struct to initialise as first argument. */
#if PG_VERSION_NUM >= 170000
#define pgbq_make_json_lexer(json, len) \
	makeJsonLexContextCstringLen(NULL, (json), (len), PG_UTF8, true)
#else
#define pgbq_make_json_lexer(json, len) \
	makeJsonLexContextCstringLen((json), (len), PG_UTF8, true)
#endif

/*
 * Before 17 a background worker cannot connect as a role without LOGIN, so
 * enqueue refuses such roles up front; from 17 on the worker bypasses the
 * check.
 */
#ifdef BGWORKER_BYPASS_ROLELOGINCHECK
#define PGBQ_BGW_CONNECT_FLAGS BGWORKER_BYPASS_ROLELOGINCHECK
#define PGBQ_REQUIRE_ROLE_LOGIN false
#else
#define PGBQ_BGW_CONNECT_FLAGS 0
#define PGBQ_REQUIRE_ROLE_LOGIN true
#endif

/* ProcessUtility_hook gained readOnlyTree in 14. */
#if PG_VERSION_NUM >= 140000
#define PGBQ_UTILITY_HOOK_ARGS \
	PlannedStmt *pstmt, const char *queryString, bool readOnlyTree, \
	ProcessUtilityContext context, ParamListInfo params, \
	QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc
#define PGBQ_UTILITY_HOOK_PASS \
	pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc
#else
#define PGBQ_UTILITY_HOOK_ARGS \
	PlannedStmt *pstmt, const char *queryString, \
	ProcessUtilityContext context, ParamListInfo params, \
	QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc
#define PGBQ_UTILITY_HOOK_PASS \
	pstmt, queryString, context, params, queryEnv, dest, qc
#endif

/* Ownership checks became one generic function in 16. */
#if PG_VERSION_NUM >= 160000
#define pgbq_database_ownercheck(dboid) \
	object_ownercheck(DatabaseRelationId, (dboid), GetUserId())
#define pgbq_extension_ownercheck(extoid) \
	object_ownercheck(ExtensionRelationId, (extoid), GetUserId())
#else
#define pgbq_database_ownercheck(dboid) \
	pg_database_ownercheck((dboid), GetUserId())
#define pgbq_extension_ownercheck(extoid) \
	pg_extension_ownercheck((extoid), GetUserId())
#endif

/*
 * A repeating timeout (14 added it; before, the handler arms the next tick
 * itself, which PostgreSQL's timeout code allows from within a handler).
 */
#if PG_VERSION_NUM >= 140000
#define pgbq_enable_timeout_every(id, ms) \
	enable_timeout_every((id), \
						 TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (ms)), (ms))
#define PGBQ_TIMEOUT_REARM(id, ms) ((void) 0)
#else
#define pgbq_enable_timeout_every(id, ms) enable_timeout_after((id), (ms))
#define PGBQ_TIMEOUT_REARM(id, ms) enable_timeout_after((id), (ms))
#endif

#endif							/* PGBQ_COMPAT_H */
