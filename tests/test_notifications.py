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

from core_helpers import connect, enqueue_copies, query, scalar, wait_tasks, worker_node
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


@pytest.fixture(scope="module")
def lone() -> Iterator[Any]:
    """One worker: it sends the notifications of each task in a transaction of its own, so
    whether it sent any shows in the transaction ids it took."""
    yield from worker_node(1)


# (what the other session did, whether it must get the notifications)
LISTENERS: dict[str, tuple[list[str] | None, bool]] = {
    "nobody": (None, False),
    "listening": (["LISTEN pg_background_queue"], True),
    "other-channel": (["LISTEN pg_background_queue_not"], False),
    "other-database": (["LISTEN pg_background_queue"], False),
    "unlisten": (["LISTEN pg_background_queue", "UNLISTEN pg_background_queue"], False),
    "unlisten-all": (["LISTEN pg_background_queue", "UNLISTEN *"], False),
    "discard-all": (["LISTEN pg_background_queue", "DISCARD ALL"], False),
    "unlisten-rolled-back": (
        ["LISTEN pg_background_queue", "BEGIN", "UNLISTEN *", "ROLLBACK"],
        True,
    ),
    "unlisten-in-rolled-back-savepoint": (
        ["LISTEN pg_background_queue", "BEGIN", "SAVEPOINT s", "UNLISTEN *",
         "ROLLBACK TO SAVEPOINT s", "COMMIT"],
        True,
    ),
    "unlisten-then-listen": (
        ["LISTEN pg_background_queue", "BEGIN", "UNLISTEN *", "LISTEN pg_background_queue",
         "COMMIT"],
        True,
    ),
    "disconnected": (["LISTEN pg_background_queue", "CLOSE"], False),
}  # fmt: skip


@pytest.mark.parametrize("case", list(LISTENERS))
def test_notifications_are_sent_while_someone_listens(lone: Any, case: str) -> None:
    """Workers send no notification while no session of their database listens on the
    channel (the transaction that carries them is a fifth of a trivial task's cost): what
    counts is the listening state the session committed to, every way of leaving it
    (UNLISTEN, UNLISTEN *, DISCARD ALL, disconnecting) and of keeping it (an UNLISTEN rolled
    back, a LISTEN after it). A session that listens gets every task's notification."""
    steps, notified = LISTENERS[case]
    n = 60
    dbname = "notify_elsewhere" if case == "other-database" else "postgres"
    if dbname != "postgres":
        query(lone, f"DROP DATABASE IF EXISTS {dbname}")
        query(lone, f"CREATE DATABASE {dbname}")
    with connect(lone, dbname=dbname) as other:
        for step in steps or []:
            if step == "CLOSE":
                other.close()
            else:
                other.execute(step)
        warm = enqueue_copies(lone, "SELECT 1", 5)
        wait_tasks(lone, warm, timeout=60)
        before = int(scalar(lone, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
        ids = enqueue_copies(lone, "SELECT 1", n)
        wait_tasks(lone, ids, timeout=60)
        # the worker sends after the commit that ended the last task: let it
        poll_until(
            lambda: (
                scalar(
                    lone,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE backend_type = 'pg_background_queue worker' AND state = 'active'",
                )
                == 0
            ),
            timeout=30,
            message="worker idle",
        )
        taken = int(scalar(lone, "SELECT pg_snapshot_xmax(pg_current_snapshot())::text")) - before
        if notified:
            got = collect(other, n + len(warm))
            assert got == Counter((i, "finished") for i in warm + ids)
    # each task's end takes one transaction id; its notification, when sent, another
    # (one enqueue too)
    if notified:
        assert taken >= n * 3 // 2, f"{taken} transaction ids for {n} tasks: none sent?"
    else:
        assert taken <= n + n // 4, f"{taken} transaction ids for {n} tasks: notifications sent"
    if dbname != "postgres":
        query(lone, f"DROP DATABASE {dbname} WITH (FORCE)")
