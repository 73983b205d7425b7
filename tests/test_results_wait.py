"""Results and pg_background_wait (extension 1.3) on a real cluster: what the workers
store, what the client and CLI show, a waiting backend woken by a worker's finish and by
pg_background_cancel, cancelled by pg_cancel_backend, and the 1.3 library on 1.2's SQL
objects until ALTER EXTENSION UPDATE."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from core_helpers import connect, enqueue, query, scalar, task, wait_tasks
from pg_background_queue import Client, TaskState, cli
from pg_background_queue.testing.cluster import (
    conninfo,
    destroy_node,
    make_node,
    poll_until,
)


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 2,
            "pg_background_queue.worker_idle_timeout": "60s",
        }
    )
    yield n
    destroy_node(n)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as p:
        yield p


def start_wait(node: Any, pool: ThreadPoolExecutor, ids: list[int]) -> tuple[int, Future[Any]]:
    """pg_background_wait(ids) in a thread; returns the waiting backend's pid once it sleeps."""
    conn = connect(node)
    pid = conn.info.backend_pid

    def run() -> list[dict[str, Any]]:
        with conn:
            return conn.execute("SELECT * FROM pg_background_wait(%s)", (ids,)).fetchall()

    future = pool.submit(run)
    poll_until(
        lambda: (
            future.done()
            or scalar(
                node,
                "SELECT wait_event_type = 'Extension' FROM pg_stat_activity WHERE pid = %s",
                (pid,),
            )
        ),
        timeout=30,
        message="the waiter did not sleep",
    )
    return pid, future


def test_results_through_client_and_cli(node: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(conninfo(node)) as c:
        rows = c.enqueue("SELECT g AS n, 'row ' || g AS label FROM generate_series(1, 3) g")
        cut = c.enqueue(
            "SET pg_background_queue.max_result_size = '100B';"
            "SELECT g AS n FROM generate_series(1, 1000) g"
        )
        quiet = c.enqueue("CREATE TEMP TABLE t_quiet (n int)")
        tasks = {t.id: t for t in c.wait([rows, cut, quiet], timeout=60)}
    assert tasks[rows].result == [
        {"n": 1, "label": "row 1"},
        {"n": 2, "label": "row 2"},
        {"n": 3, "label": "row 3"},
    ]
    assert tasks[rows].result_truncated is False
    assert tasks[cut].result_truncated is True
    assert tasks[cut].result is not None
    assert 0 < len(tasks[cut].result) < 1000
    assert tasks[cut].result[0] == {"n": 1}
    assert tasks[quiet].result is None
    assert tasks[quiet].state is TaskState.FINISHED

    dsn = ["--dsn", conninfo(node)]
    assert cli.main([*dsn, "show", str(rows)]) == 0
    out = capsys.readouterr().out
    assert '"label": "row 3"' in out
    assert cli.main([*dsn, "tasks", "--limit", "5"]) == 0
    assert '[{"n":1}' in capsys.readouterr().out
    assert cli.main([*dsn, "show", str(cut)]) == 0
    assert "truncated" in capsys.readouterr().out


def test_wait_wakes_when_a_worker_finishes(node: Any, pool: ThreadPoolExecutor) -> None:
    assert scalar(node, "SELECT pg_background_queue_pause('held')") is True
    try:
        t1 = enqueue(node, "SELECT 42 AS answer", "held")
        _, future = start_wait(node, pool, [t1])
        assert not future.done()
        assert task(node, t1)["state"] == "pending"
    finally:
        scalar(node, "SELECT pg_background_queue_resume('held')")
    rows = future.result(timeout=60)
    assert [(r["id"], r["state"], r["result"]) for r in rows] == [
        (t1, "finished", [{"answer": 42}])
    ]


def test_wait_wakes_on_cancel_of_a_pending_task(node: Any, pool: ThreadPoolExecutor) -> None:
    later = int(scalar(node, "SELECT pg_background_enqueue('SELECT 1', run_at => now() + '1 day')"))
    _, future = start_wait(node, pool, [later])
    assert scalar(node, "SELECT pg_background_cancel(%s)", (later,)) is True
    rows = future.result(timeout=60)
    assert [(r["id"], r["state"]) for r in rows] == [(later, "cancelled")]


def test_cancel_request_ends_the_wait(node: Any, pool: ThreadPoolExecutor) -> None:
    later = int(scalar(node, "SELECT pg_background_enqueue('SELECT 1', run_at => now() + '1 day')"))
    pid, future = start_wait(node, pool, [later])
    assert scalar(node, "SELECT pg_cancel_backend(%s)", (pid,)) is True
    with pytest.raises(psycopg.errors.QueryCanceled):
        future.result(timeout=60)
    assert task(node, later)["state"] == "pending"
    scalar(node, "SELECT pg_background_cancel(%s)", (later,))


def test_library_keeps_working_with_1_2_objects_until_the_update(node: Any) -> None:
    query(node, "CREATE DATABASE old12")
    query(node, "CREATE EXTENSION pg_background_queue VERSION '1.2'", dbname="old12")
    first = enqueue(node, "SELECT 1 AS n", dbname="old12")
    row = wait_tasks(node, [first], dbname="old12")[0]
    assert row["state"] == "finished"
    assert "result" not in row
    query(node, "ALTER EXTENSION pg_background_queue UPDATE TO '1.3'", dbname="old12")
    # the same worker (idle timeout 60 s) stores results from the update on
    second = enqueue(node, "SELECT 2 AS n", dbname="old12")
    rows = wait_tasks(node, [first, second], dbname="old12")
    assert [(r["state"], r["result"]) for r in rows] == [
        ("finished", None),
        ("finished", [{"n": 2}]),
    ]
