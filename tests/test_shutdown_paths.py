"""Every process obeys shutdown, and failure paths undo what they did (issue 14, section 4):
a maintenance pass and a worker's bookkeeping waiting for a lock end on SIGTERM, fast shutdown
does not wait for a long retention pass, a failed DROP DATABASE leaves delayed tasks running on
time, and a failed plan preparation leaves the worker consistent."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from core_helpers import connect, enqueue, make_role, query, scalar, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until, server_log


@pytest.fixture
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            "pg_background_queue.worker_idle_timeout": "120s",
            # only the passes a test asks for
            "pg_background_queue.maintenance_interval": 3600,
            "log_min_messages": "info",
        }
    )
    query(n, "CREATE TABLE done (tag text)")
    query(n, "GRANT ALL ON done TO PUBLIC")
    yield n
    if os.environ.get("PGBQ_DUMP_LOG"):
        print(server_log(n))
    destroy_node(n)


def backend_pids(node: Any, backend_type: str, *, waiting_on_lock: bool = False) -> list[int]:
    sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = %s"
    if waiting_on_lock:
        sql += " AND wait_event_type = 'Lock'"
    return [r["pid"] for r in query(node, sql, (backend_type,))]


def test_maintenance_waiting_for_a_lock_obeys_terminate(node: Any) -> None:
    t = enqueue(node, "SELECT 1")
    wait_tasks(node, [t])
    with connect(node, autocommit=False) as holder:
        holder.execute("LOCK TABLE pg_background_tasks IN ACCESS EXCLUSIVE MODE")
        query(node, "SELECT pg_background_queue_ensure_workers()")
        pids = poll_until(
            lambda: backend_pids(node, "pg_background_queue maintenance", waiting_on_lock=True),
            timeout=30,
            message="no maintenance pass waiting for the lock",
        )
        query(node, "SELECT pg_terminate_backend(%s)", (pids[0],))
        # the lock is still held: the pass must end anyway
        poll_until(
            lambda: pids[0] not in backend_pids(node, "pg_background_queue maintenance"),
            timeout=10,
            message="maintenance ignored SIGTERM while waiting for a lock",
        )
        holder.rollback()


def test_worker_bookkeeping_waiting_for_a_lock_obeys_terminate(node: Any) -> None:
    make_role(node, "locked_out")
    # a delayed task: its worker wakes up to claim it while the table is locked
    t = int(
        scalar(
            node,
            "SELECT pg_background_enqueue('INSERT INTO public.done VALUES (''late'')', "
            "NULL, NULL, now() + interval '4 seconds')",
            user="locked_out",
        )
    )
    with connect(node, autocommit=False) as holder:
        holder.execute("LOCK TABLE pg_background_tasks IN ACCESS EXCLUSIVE MODE")
        pids = poll_until(
            lambda: backend_pids(node, "pg_background_queue worker", waiting_on_lock=True),
            timeout=30,
            message="no worker waiting for the lock",
        )
        query(node, "SELECT pg_terminate_backend(%s)", (pids[0],))
        poll_until(
            lambda: pids[0] not in backend_pids(node, "pg_background_queue worker"),
            timeout=10,
            message="a worker ignored SIGTERM while its claim waited for a lock",
        )
        holder.rollback()
    # nothing was lost: the task still runs
    assert wait_tasks(node, [t], timeout=60)[0]["state"] == "finished"


def test_fast_shutdown_during_a_long_retention_pass(node: Any) -> None:
    ids = [
        int(r["id"])
        for r in query(
            node,
            "SELECT pg_background_enqueue_many(array_agg('SELECT 1'::text)) AS id "
            "FROM generate_series(1, 600)",
        )
    ]
    wait_tasks(node, ids, timeout=120)
    query(node, "UPDATE pg_background_tasks SET closed_at = now() - interval '30 days'")
    # every deleted row costs 0.1 s: a pass over 600 rows takes a minute
    query(
        node,
        "CREATE FUNCTION public.slow_delete() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN PERFORM pg_catalog.pg_sleep(0.1); RETURN OLD; END $$",
    )
    query(
        node,
        "CREATE TRIGGER slow_delete BEFORE DELETE ON pg_background_tasks "
        "FOR EACH ROW EXECUTE FUNCTION public.slow_delete()",
    )
    query(node, "ALTER SYSTEM SET pg_background_queue.retention_in_sec = 86400")
    query(node, "SELECT pg_reload_conf()")
    poll_until(
        lambda: (
            scalar(
                node,
                "SELECT setting FROM pg_settings "
                "WHERE name = 'pg_background_queue.retention_in_sec'",
            )
            == "86400"
        ),
        timeout=10,
        message="retention not applied",
    )
    query(node, "SELECT pg_background_queue_ensure_workers()")
    poll_until(
        lambda: (
            scalar(
                node,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'pg_background_queue maintenance' AND wait_event = 'PgSleep'",
            )
            == 1
        ),
        timeout=30,
        message="the retention pass did not start",
    )
    started = time.monotonic()
    node.stop(["-m", "fast", "-t", "50"])
    took = time.monotonic() - started
    assert took < 15, f"fast shutdown took {took:.1f} s behind a retention pass"


def test_failed_drop_database_keeps_delayed_tasks_on_time(node: Any) -> None:
    query(node, "CREATE DATABASE dropme")
    query(node, "CREATE EXTENSION pg_background_queue", dbname="dropme")
    query(node, "CREATE TABLE done (tag text)", dbname="dropme")
    # a maintenance pass of dropme running across the drop would rebuild its demand anyway:
    # wait until none has run for two seconds (the periodic pass is an hour away)
    quiet_since = time.monotonic()

    def quiet() -> bool:
        nonlocal quiet_since
        if scalar(
            node,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'pg_background_queue maintenance'",
        ):
            quiet_since = time.monotonic()
        return time.monotonic() - quiet_since > 2

    poll_until(quiet, timeout=30, interval=0.05, message="maintenance kept running")
    due_in = 15
    t = int(
        scalar(
            node,
            "SELECT pg_background_enqueue('INSERT INTO public.done VALUES (''on time'')', "
            "NULL, NULL, now() + make_interval(secs => %s))",
            (due_in,),
            dbname="dropme",
        )
    )
    enqueued = time.monotonic()
    # another session is connected: the drop fails (after waiting up to 5 s)
    with connect(node, dbname="dropme"), pytest.raises(psycopg.errors.ObjectInUse):
        query(node, "DROP DATABASE dropme")
    row = wait_tasks(node, [t], timeout=due_in + 30, dbname="dropme")[0]
    assert row["state"] == "finished", row["errors"]
    late = time.monotonic() - enqueued - due_in
    assert late < 15, f"ran {late:.1f} s late"


def test_plan_preparation_failure_leaves_the_worker_consistent(node: Any) -> None:
    make_role(node, "planner")
    # the table changes under a worker that has not prepared its statements yet
    with connect(node, autocommit=False) as conn:
        conn.execute("ALTER TABLE pg_background_tasks RENAME COLUMN worker_pid TO worker_pid_x")
        conn.commit()
    t = enqueue(node, "INSERT INTO public.done VALUES ('planned')", user="planner")
    poll_until(
        lambda: (
            'column "worker_pid" of relation' in server_log(node)
            or 'column "worker_pid" does not exist' in server_log(node)
        ),
        timeout=30,
        message="the worker never tried to prepare its statements",
    )
    query(node, "ALTER TABLE pg_background_tasks RENAME COLUMN worker_pid_x TO worker_pid")
    row = wait_tasks(node, [t], timeout=30)[0]
    assert row["state"] == "finished", row["errors"]
    assert scalar(node, "SELECT count(*) FROM done WHERE tag = 'planned'") == 1
