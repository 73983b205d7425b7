# pg_background_queue: PGXS build
EXTENSION = pg_background_queue
# = default_version in the control file; META.json carries it as a semantic version
# (1.5 -> 1.5.0). make check-meta (run by CI) verifies they all agree.
EXTVERSION = 1.5
MODULE_big = pg_background_queue
OBJS = \
	pg_background_queue.o \
	src/admin.o \
	src/catalog.o \
	src/claim_floor.o \
	src/enqueue.o \
	src/executor.o \
	src/guc.o \
	src/launcher.o \
	src/listeners.o \
	src/maintenance.o \
	src/shmem.o \
	src/task_rows.o \
	src/worker.o \
	src/worker_bookkeeping.o \
	src/worker_signals.o \
	src/wait.o \
	src/workflow.o
PGFILEDESC = "pg_background_queue - durable background execution of SQL"

DATA = $(wildcard pg_background_queue--*.sql)

# The regression and isolation suites run on their own temporary cluster
# with the library preloaded (make installcheck; as a non-root user).
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --temp-config=$(CURDIR)/test/regress.conf --temp-instance=$(CURDIR)/tmp_check
ISOLATION = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS = --temp-config=$(CURDIR)/test/regress.conf --temp-instance=$(CURDIR)/tmp_check_iso

PG_CPPFLAGS = -I$(CURDIR) -isystem $(shell $(PG_CONFIG) --includedir-server)
PG_CFLAGS = -Wall -Wextra $(COPT)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# A server built with a newer compiler may record warning flags in CFLAGS that
# this compiler does not know (PostgreSQL 18 built with clang or gcc 14 adds
# -Wmissing-variable-declarations; gcc 12 rejects it).  Drop each such flag
# after asking the compiler, so the build works with the system's gcc.
PGBQ_MAYBE_UNKNOWN_FLAGS = -Wmissing-variable-declarations
PGBQ_UNKNOWN_FLAGS := $(foreach f,$(filter $(PGBQ_MAYBE_UNKNOWN_FLAGS),$(CFLAGS)),\
	$(if $(shell $(CC) -Werror $(f) -E -x c /dev/null >/dev/null 2>&1 && echo ok),,$(f)))
override CFLAGS := $(filter-out $(PGBQ_UNKNOWN_FLAGS),$(CFLAGS))

# PGBQ_TEST_DRIVERS=DIR runs pg_regress and pg_isolation_regress from DIR (the
# pgxs/src/test directory of another installation) against this installation's
# server, initdb and psql.  Both are client programs.  The PostgreSQL 18.4 wheel
# CI uses ships drivers that crash in the dynamic loader; its 16.14 twin's work.
ifdef PGBQ_TEST_DRIVERS
pg_regress_installcheck = \
	echo "\# +++ regress install-check (drivers: $(PGBQ_TEST_DRIVERS)) +++" && \
	$(PGBQ_TEST_DRIVERS)/regress/pg_regress --inputdir=$(srcdir) --bindir='$(bindir)' \
	$(pg_regress_locale_flags) $(EXTRA_REGRESS_OPTS)
pg_isolation_regress_installcheck = \
	echo "\# +++ isolation install-check (drivers: $(PGBQ_TEST_DRIVERS)) +++" && \
	$(PGBQ_TEST_DRIVERS)/isolation/pg_isolation_regress --inputdir=$(srcdir) \
	--outputdir=output_iso --bindir='$(bindir)' $(pg_regress_locale_flags) $(EXTRA_REGRESS_OPTS)
endif

# every object depends on the shared headers (PGXS does not track them)
$(OBJS): src/pgbq.h src/compat.h src/task_rows.h src/worker_int.h

# PGXN distribution: make dist archives the committed tree (HEAD) as
# pg_background_queue-<META.json version>.zip, the file PGXN takes.
DISTVERSION = $(shell sed -n '1,/"version"/s/^ *"version": *"\([^"]*\)".*/\1/p' $(CURDIR)/META.json)
DISTNAME = $(EXTENSION)-$(DISTVERSION)
EXTRA_CLEAN += $(DISTNAME).zip

.PHONY: dist check-meta
check-meta:
	python3 $(CURDIR)/scripts/check_meta.py

dist: check-meta
	git archive --format zip --prefix=$(DISTNAME)/ -o $(DISTNAME).zip HEAD
	python3 $(CURDIR)/scripts/check_meta.py --zip $(DISTNAME).zip
