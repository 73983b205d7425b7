"""The extension's life cycle on real clusters: DROP EXTENSION while workers run
tasks (with and without a task holding a lock on the queue table, committed and
rolled back), CREATE EXTENSION again without a restart, ALTER EXTENSION UPDATE
from 1.0 with work queued under 1.0, and CREATE EXTENSION without the library
preloaded."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from core_helpers import connect, enqueue, query, scalar, set_config, task, wait_tasks, worker_pids
from pg_background_queue.testing.cluster import poll_until, server_log
from pg_background_queue.testing.pytest_plugin import MakeCluster

BUSY = 3  # tasks kept running while the extension is dropped

# Waits until the test puts a row into public.gate (at most two minutes); its
# INSERT is rolled back if the task is interrupted.
LONG_TASK = (
    "INSERT INTO public.effects VALUES (1); "
    "DO $$ BEGIN FOR i IN 1..1200 LOOP EXIT WHEN EXISTS (SELECT FROM public.gate); "
    "PERFORM pg_sleep(0.1); END LOOP; END $$"
)
# The same, holding a lock on the queue table for the whole task (it enqueues
# a follow-up task in its own transaction first).
LOCKING_TASK = "SELECT pg_background_enqueue('SELECT 1'); " + LONG_TASK

LAUNCHER_PID = (
    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue launcher'"
)
EXTVERSION = "SELECT extversion FROM pg_extension WHERE extname = 'pg_background_queue'"

# A DROP EXTENSION that takes longer than this is considered hung.
DROP_DEADLINE_S = 10

CONF = {
    "pg_background_queue.max_parallel_running_tasks_count": BUSY,
    "pg_background_queue.worker_idle_timeout": "60s",
    "log_min_messages": "warning",
}


def new_cluster(make_cluster: MakeCluster, **conf: Any) -> Any:
    node = make_cluster(extra_conf={**CONF, **conf})
    query(node, "CREATE TABLE effects (x int)")
    query(node, "CREATE TABLE gate ()")
    return node


def start_busy(node: Any, sql: str = LONG_TASK, n: int = BUSY) -> list[int]:
    """Enqueue n long tasks plus two that stay queued; wait until n run."""
    ids = [enqueue(node, sql) for _ in range(n)]
    queued = [enqueue(node, "SELECT 1") for _ in range(2)]
    poll_until(
        lambda: all(task(node, i)["state"] == "running" for i in ids),
        timeout=30,
        message="the long tasks did not all start",
    )
    assert [task(node, i)["state"] for i in queued] == ["pending", "pending"]
    assert len(worker_pids(node)) == n
    return ids


def timed_drop(node: Any) -> float:
    """DROP EXTENSION under a statement_timeout; returns how long it took."""
    with connect(node) as conn:
        conn.execute(f"SET statement_timeout = '{DROP_DEADLINE_S}s'")
        started = time.monotonic()
        conn.execute("DROP EXTENSION pg_background_queue")
        return time.monotonic() - started


def log_since(node: Any, offset: int) -> str:
    return server_log(node)[offset:]


def wait_log(node: Any, offset: int, text: str, count: int = 1) -> str:
    """Poll until text appears count times in the log after offset; return that log."""

    def seen() -> str | None:
        log = log_since(node, offset)
        return log if log.count(text) >= count else None

    found = poll_until(seen, timeout=10, message=f"{count} x {text!r} in the server log")
    assert found is not None
    return found


def assert_clean_exit(log: str) -> None:
    """No error, crash or failed worker exit in this part of the log."""
    bad = [
        line
        for line in log.splitlines()
        if any(
            marker in line
            for marker in ("ERROR:", "FATAL:", "PANIC:", "exited with exit code", "terminated by")
        )
    ]
    assert not bad, "\n".join(bad)


def assert_extension_works_again(node: Any) -> None:
    """CREATE EXTENSION again (no restart): new tasks run, the old ones left no trace."""
    query(node, "CREATE EXTENSION pg_background_queue")
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks") == 0
    ids = [enqueue(node, f"INSERT INTO public.effects VALUES ({10 + i})") for i in range(4)]
    rows = wait_tasks(node, ids, timeout=30)
    assert [r["state"] for r in rows] == ["finished"] * 4
    assert [r["attempts"] for r in rows] == [1] * 4
    assert scalar(node, "SELECT count(*) FROM effects") == 4
    assert scalar(node, "SELECT count(*) FROM effects WHERE x = 1") == 0


def test_drop_extension_stops_busy_workers_and_create_works_again(
    make_cluster: MakeCluster,
) -> None:
    node = new_cluster(make_cluster)
    started_at = scalar(node, "SELECT pg_postmaster_start_time()")
    launcher = scalar(node, LAUNCHER_PID)
    ids = start_busy(node)
    busy = worker_pids(node)
    offset = len(server_log(node))

    took = timed_drop(node)
    assert took < 2, f"DROP EXTENSION took {took:.2f}s"
    poll_until(lambda: not worker_pids(node), timeout=10, message=f"workers {busy} did not exit")

    log = wait_log(node, offset, "worker exiting", BUSY)
    assert (
        f'extension dropped in database "postgres"; asked {BUSY} worker(s) of that database '
        "to exit" in log
    )
    for i in ids:
        assert f'dropped in database "postgres" while task {i} was running; worker exiting' in log
    assert_clean_exit(log)
    assert scalar(node, "SELECT count(*) FROM effects") == 0, "interrupted tasks roll back"
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started_at, "no crash restart"
    assert scalar(node, LAUNCHER_PID) == launcher, "the launcher was not restarted"

    # nothing comes back for the dropped extension
    time.sleep(1)
    assert worker_pids(node) == []

    assert_extension_works_again(node)
    assert_clean_exit(log_since(node, offset))


def test_drop_extension_does_not_wait_for_a_task_holding_the_queue_lock(
    make_cluster: MakeCluster,
) -> None:
    node = new_cluster(make_cluster)
    started_at = scalar(node, "SELECT pg_postmaster_start_time()")
    ids = start_busy(node, LOCKING_TASK)
    busy = worker_pids(node)
    offset = len(server_log(node))

    # rolled back: the workers it asked to leave gave their tasks back, which
    # run again at once, without losing an attempt
    with connect(node, autocommit=False) as conn:
        conn.execute(f"SET LOCAL statement_timeout = '{DROP_DEADLINE_S}s'")
        conn.execute("DROP EXTENSION pg_background_queue")
        conn.rollback()
    poll_until(
        lambda: (
            all((r := task(node, i))["state"] == "running" and r["attempts"] == 1 for i in ids)
            and set(worker_pids(node)).isdisjoint(busy)
        ),
        timeout=10,
        message="the tasks given back did not run again",
    )
    assert "extension dropped in database" not in log_since(node, offset)

    took = timed_drop(node)
    assert took < 5, f"DROP EXTENSION took {took:.2f}s"
    poll_until(lambda: not worker_pids(node), timeout=10, message="workers did not exit")
    # the workers give their tasks back and leave; whichever still holds one
    # when the drop commits logs that it abandoned it
    log = wait_log(node, offset, "extension dropped in database")
    nudge = f"DROP EXTENSION waits for a lock on the task table; asked {BUSY} worker(s)"
    assert log.count(nudge) == 2, "once for the rolled-back drop, once for this one"
    assert_clean_exit(log)
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started_at
    assert scalar(node, "SELECT count(*) FROM effects") == 0

    assert_extension_works_again(node)
    assert_clean_exit(log_since(node, offset))


def test_rolled_back_drop_leaves_workers_alone(make_cluster: MakeCluster) -> None:
    node = new_cluster(make_cluster)
    ids = start_busy(node)
    busy = worker_pids(node)
    offset = len(server_log(node))

    with connect(node, autocommit=False) as conn:
        conn.execute("DROP EXTENSION pg_background_queue")
        conn.rollback()
        conn.execute("SAVEPOINT s")
        conn.execute("DROP EXTENSION pg_background_queue")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.commit()

    time.sleep(1)
    assert worker_pids(node) == busy, "the workers were left alone"
    assert [task(node, i)["state"] for i in ids] == ["running"] * BUSY
    assert "extension dropped" not in log_since(node, offset)

    query(node, "INSERT INTO gate DEFAULT VALUES")
    rows = wait_tasks(node, ids, timeout=30)
    assert [r["state"] for r in rows] == ["finished"] * BUSY
    assert [r["attempts"] for r in rows] == [1] * BUSY
    assert_clean_exit(log_since(node, offset))


def test_tasks_queued_under_1_0_run_after_update(make_cluster: MakeCluster) -> None:
    node = make_cluster(
        create_extension=False,
        extra_conf={**CONF, "pg_background_queue.max_parallel_running_tasks_count": 0},
    )
    query(node, "CREATE EXTENSION pg_background_queue VERSION '1.0'")
    query(node, "CREATE TABLE effects (x int)")
    ids = [enqueue(node, f"INSERT INTO public.effects VALUES ({i})", "upgrade") for i in range(3)]
    time.sleep(1)
    assert [task(node, i)["state"] for i in ids] == ["pending"] * 3, "nothing may run yet"
    assert scalar(node, "SELECT to_regclass('pg_background_queue_task_stats')") is None

    query(node, "ALTER EXTENSION pg_background_queue UPDATE")
    assert scalar(
        node,
        "SELECT extversion = (SELECT default_version FROM pg_available_extensions "
        "WHERE name = 'pg_background_queue') FROM pg_extension "
        "WHERE extname = 'pg_background_queue'",
    )
    assert scalar(node, EXTVERSION) == "1.5"

    set_config(node, max_parallel_running_tasks_count=BUSY)
    rows = wait_tasks(node, ids, timeout=30)
    assert [r["state"] for r in rows] == ["finished"] * 3
    assert scalar(node, "SELECT count(*) FROM effects") == 3
    stats = query(
        node,
        "SELECT state::text, tasks FROM pg_background_queue_task_stats WHERE topic = 'upgrade'",
    )
    assert stats == [{"state": "finished", "tasks": 3}]


def test_new_library_with_old_sql_objects_keeps_cancel_and_retry(
    make_cluster: MakeCluster,
) -> None:
    """Between installing a new library and ALTER EXTENSION ... UPDATE the SQL objects are
    1.1's. Regression: cancel failed with 22P02 (1.1's enum has no 'waiting') and retry with
    42703 (no column "after") until the update."""
    # nothing runs: retry makes the task eligible at once
    node = make_cluster(
        create_extension=False,
        extra_conf={**CONF, "pg_background_queue.max_parallel_running_tasks_count": 0},
    )
    query(node, "CREATE EXTENSION pg_background_queue VERSION '1.1'")
    far = "2999-01-01 00:00:00+00"
    tid = int(scalar(node, "SELECT pg_background_enqueue('SELECT 1', run_at => %s)", (far,)))
    assert scalar(node, "SELECT pg_background_cancel(%s)", (tid,)) is True
    assert task(node, tid)["state"] == "cancelled"
    assert scalar(node, "SELECT pg_background_retry(%s)", (tid,)) is True
    assert task(node, tid)["state"] == "pending"
    assert scalar(node, "SELECT pg_background_cancel(%s)", (tid,)) is True

    query(node, "ALTER EXTENSION pg_background_queue UPDATE")
    assert scalar(node, "SELECT pg_background_retry(%s)", (tid,)) is True
    assert task(node, tid)["state"] == "pending"
    assert scalar(node, "SELECT pg_background_cancel(%s)", (tid,)) is True


def test_create_extension_without_preload_explains_the_fix(make_cluster: MakeCluster) -> None:
    node = make_cluster(preload=False)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
        query(node, "CREATE EXTENSION pg_background_queue")
    assert err.value.sqlstate == "55000"
    assert "shared_preload_libraries" in (err.value.diag.message_primary or "")
    hint = err.value.diag.message_hint or ""
    assert "shared_preload_libraries = 'pg_background_queue'" in hint
    assert scalar(node, EXTVERSION) is None
