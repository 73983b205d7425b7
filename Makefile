# pg_background_queue: PGXS build
EXTENSION = pg_background_queue
EXTVERSION = 1.0
MODULE_big = pg_background_queue
OBJS = \
	pg_background_queue.o \
	src/admin.o \
	src/catalog.o \
	src/enqueue.o \
	src/executor.o \
	src/guc.o \
	src/launcher.o \
	src/maintenance.o \
	src/shmem.o \
	src/worker.o
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

# every object depends on the shared headers (PGXS does not track them)
$(OBJS): src/pgbq.h src/compat.h
