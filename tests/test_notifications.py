"""NOTIFY pg_background_queue from busy workers: the workers of a database share the
transactions that carry their notifications (one worker sends everyone's while the others
go on, see catalog.c), so these tests check what a listener must still get from it: every
terminal state of every task exactly once, in its own database only, including tasks whose
worker exits while its notifications wait to be sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from core_helpers import connect, enqueue_copies, query, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until

WORKERS = 8


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": WORKERS,
            "pg_background_queue.worker_idle_timeout": "30s",
        }
    )
    yield n
    destroy_node(n)


def collect(
    listener: psycopg.Connection[Any], expected: int, timeout: float = 120
) -> Counter[tuple[int, str]]:
    """Read notifications until ``expected`` have come (or the deadline); count each
    (id, state) payload."""
    got: Counter[tuple[int, str]] = Counter()

    def enough() -> bool:
        for n in listener.notifies(timeout=0.2, stop_after=expected - sum(got.values())):
            task_id, state = n.payload.split(" ")
            got[(int(task_id), state)] += 1
        return sum(got.values()) >= expected

    poll_until(enough, timeout=timeout, interval=0, message=f"{expected} notifications")
    # nothing more may come: a duplicate would arrive with the rest
    for n in listener.notifies(timeout=0.5):
        task_id, state = n.payload.split(" ")
        got[(int(task_id), state)] += 1
    return got


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param({"SELECT 1": 600}, id="finished"),
        pytest.param({"SELECT 1": 300, "SELECT 1/0": 300}, id="finished-and-failed"),
    ],
)
def test_every_end_is_notified_exactly_once(node: Any, statements: dict[str, int]) -> None:
    with connect(node) as listener:
        listener.execute("LISTEN pg_background_queue")
        ids: list[int] = []
        for sql, count in statements.items():
            ids += enqueue_copies(node, sql, count)
        rows = wait_tasks(node, ids, timeout=120)
        expected = Counter((int(r["id"]), str(r["state"])) for r in rows)
        got = collect(listener, len(ids))
    assert got == expected


def test_each_burst_is_announced_without_waiting_for_the_next(node: Any) -> None:
    """Bursts of two tasks per worker, each awaited before the next is enqueued: the last
    ends of a burst are the ones a flusher could leave behind, with no later task end to
    send them."""
    with connect(node) as listener:
        listener.execute("LISTEN pg_background_queue")
        for _ in range(40):
            ids = enqueue_copies(node, "SELECT 1", 2 * WORKERS)
            rows = wait_tasks(node, ids, timeout=60)
            expected = Counter((int(r["id"]), str(r["state"])) for r in rows)
            assert collect(listener, len(ids), timeout=10) == expected


def test_notifications_stay_in_their_database(node: Any) -> None:
    """The shared buffer holds every database's notifications: each listener must get all
    of its own database's and none of another's (the id sequences are moved apart so that
    an id names one database's task)."""
    query(node, "DROP DATABASE IF EXISTS notify_other")
    query(node, "CREATE DATABASE notify_other")
    query(node, "CREATE EXTENSION pg_background_queue", dbname="notify_other")
    query(
        node,
        "SELECT setval(pg_get_serial_sequence('pg_background_tasks', 'id'), 10000000)",
        dbname="notify_other",
    )
    with (
        connect(node) as here,
        connect(node, dbname="notify_other") as there,
    ):
        here.execute("LISTEN pg_background_queue")
        there.execute("LISTEN pg_background_queue")
        mine = enqueue_copies(node, "SELECT 1", 400)
        theirs = [
            int(r["id"])
            for r in query(
                node,
                "SELECT pg_background_enqueue_many(array_fill('SELECT 1'::text, ARRAY[400])) AS id",
                dbname="notify_other",
            )
        ]
        wait_tasks(node, mine, timeout=120)
        wait_tasks(node, theirs, timeout=120, dbname="notify_other")
        got_here = collect(here, len(mine))
        got_there = collect(there, len(theirs))
    assert got_here == Counter((i, "finished") for i in mine)
    assert got_there == Counter((i, "finished") for i in theirs)
    query(node, "DROP DATABASE notify_other WITH (FORCE)")


def test_workers_leaving_leave_no_notification_behind(node: Any) -> None:
    """Workers terminated while tasks end (the flusher among them, whenever one is at work)
    give their notifications to the next worker or send them before they exit."""
    with connect(node) as listener:
        listener.execute("LISTEN pg_background_queue")
        ids = enqueue_copies(node, "SELECT pg_sleep(0.001)", 1500)

        def some_done() -> bool:
            n = query(
                node,
                "SELECT count(*) AS n FROM pg_background_tasks "
                "WHERE id = ANY(%s) AND state = 'finished'",
                (ids,),
            )[0]["n"]
            return int(n) >= 300

        poll_until(some_done, timeout=60, message="300 tasks finished")
        query(
            node,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'pg_background_queue worker'",
        )
        rows = wait_tasks(node, ids, timeout=180)
        ended = [r for r in rows if r["state"] in ("finished", "failed")]
        got = collect(listener, len(ended))
    # a task interrupted by the termination ends as its retry policy says; every end
    # that was committed is announced once
    for r in ended:
        assert got[(int(r["id"]), str(r["state"]))] == 1, r["id"]
