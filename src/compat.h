/*-------------------------------------------------------------------------
 *
 * compat.h
 *	  Version shims, kept in one place so that the rest of the code reads as
 *	  if written for a single server version.
 *
 * Supported: PostgreSQL 15 to 18.  Tested (CI): 15, 16 and 18.  17 is covered
 * by the guards below (every difference is keyed on the release that
 * introduced it, and 17's own changes, such as the JSON lexer argument and
 * BGWORKER_BYPASS_ROLELOGINCHECK, are among them) but no PostgreSQL 17 with
 * server headers can be had on the build machines, so it is untested.  14
 * reached end of life in November 2026 and is not supported.
 *
 * Differences by release:
 *	16: JSON semantic actions return JsonParseErrorType; object_ownercheck();
 *		GUC "extra" lives in GUC memory (guc_malloc), not malloc.
 *	17: makeJsonLexContextCstringLen() takes the context to initialise;
 *		background workers may connect as roles without LOGIN.
 *	18: PortalRun() lost run_once.
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

#if PG_VERSION_NUM < 150000
#error "pg_background_queue requires PostgreSQL 15 or later"
#endif

/*
 * This session's PGPROC number (listeners.c): MyProcNumber from 17 on,
 * the pgprocno of its PGPROC before.
 */
#if PG_VERSION_NUM >= 170000
#define PGBQ_MY_PROCNO	((int) MyProcNumber)
#else
#define PGBQ_MY_PROCNO	(MyProc != NULL ? MyProc->pgprocno : -1)
#endif

/*
 * The C variables behind settings the bookkeeping pins (catalog.c) that not
 * every version has: transaction_timeout from 17 on; force_parallel_mode
 * became debug_parallel_query in 16.  NULL where this server lacks the
 * setting (its name is unknown too).
 */
#if PG_VERSION_NUM >= 170000
#define PGBQ_TRANSACTION_TIMEOUT_VAR	(&TransactionTimeout)
#else
#define PGBQ_TRANSACTION_TIMEOUT_VAR	NULL
#endif
#if PG_VERSION_NUM >= 160000
#define PGBQ_FORCE_PARALLEL_MODE_VAR	NULL
#define PGBQ_DEBUG_PARALLEL_QUERY_VAR	(&debug_parallel_query)
#else
#define PGBQ_FORCE_PARALLEL_MODE_VAR	(&force_parallel_mode)
#define PGBQ_DEBUG_PARALLEL_QUERY_VAR	NULL
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
 * GUC check hooks: from 16 on, "extra" (and a replaced string value) belongs
 * to the GUC memory context and is freed with guc_free(), which is pfree();
 * before 16 it is malloc'd memory freed with free().  Allocating it with
 * malloc() on 16+ crashes the next reload ("pfree called with invalid
 * pointer").  guc_malloc(LOG, ...) returns NULL on out-of-memory, as malloc
 * does.
 */
#if PG_VERSION_NUM >= 160000
#define pgbq_guc_malloc(size) guc_malloc(LOG, (size))
#else
#define pgbq_guc_malloc(size) malloc(size)
#endif

/* 18 dropped PortalRun's run_once argument (it was always true). */
#if PG_VERSION_NUM >= 180000
#define pgbq_portal_run(portal, count, top, dest, altdest, qc) \
	PortalRun((portal), (count), (top), (dest), (altdest), (qc))
#else
#define pgbq_portal_run(portal, count, top, dest, altdest, qc) \
	PortalRun((portal), (count), (top), true, (dest), (altdest), (qc))
#endif

#endif							/* PGBQ_COMPAT_H */
