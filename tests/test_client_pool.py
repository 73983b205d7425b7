"""Client sources other than one connection: psycopg_pool pools, a conninfo given to
AsyncClient, and reconnects (next call, resumed wait()) after a server restart."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pg_background_queue import (
    AsyncClient,
    Client,
    DatabaseError,
    InvalidArgumentError,
    Task,
    TaskState,
)
from pg_background_queue.testing.cluster import conninfo, poll_until, query

pytestmark = [
    pytest.mark.pgbq_node(extra_conf={"pg_background_queue.max_parallel_running_tasks_count": 4}),
    pytest.mark.timeout(180),
]
WAIT = 60.0


def state_of(node: Any, task_id: int) -> str:
    rows = query(node, "SELECT state::text FROM pg_background_tasks WHERE id = %s", [task_id])
    return str(rows[0][0]) if rows else "missing"


def test_client_borrows_from_a_pool_per_call(node: Any) -> None:
    with ConnectionPool(conninfo(node), min_size=1, max_size=2, open=True) as pool:
        client = Client(pool, poll_interval=0.1)
        before = pool.get_stats().get("requests_num", 0)
        ids = client.enqueue_many(["SELECT 1", "SELECT 2"], topic="pool")
        one = client.enqueue("SELECT 3", topic="pool")  # committed when given back
        tasks = client.wait([*ids, one], timeout=WAIT)
        assert {t.state for t in tasks} == {TaskState.FINISHED}
        assert client.get(one).id == one
        assert pool.get_stats()["requests_num"] - before >= 4  # one borrow per call
        with pool.connection() as conn:
            assert conn.autocommit is False  # wait() gave it back as it found it
        client.close()
        assert not pool.closed
        with pytest.raises(InvalidArgumentError):
            _ = client.conn


async def test_async_client_borrows_from_a_pool(node: Any) -> None:
    async with AsyncConnectionPool(conninfo(node), min_size=1, max_size=2, open=False) as pool:
        client = AsyncClient(pool, poll_interval=0.1)
        ids = await client.enqueue_many(["SELECT 1", "SELECT 2"], topic="apool")
        tasks = await client.wait(ids, timeout=WAIT)
        assert {t.state for t in tasks} == {TaskState.FINISHED}
        assert [t.id for t in await client.get_many(ids)] == ids
        await client.close()


def test_rejects_other_sources() -> None:
    with pytest.raises(InvalidArgumentError, match="conninfo string"):
        Client(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="conninfo string"):
        AsyncClient(object())  # type: ignore[arg-type]


async def test_async_client_takes_a_conninfo(node: Any) -> None:
    """Regression: AsyncClient("...") failed with AttributeError: 'str' object has no
    attribute 'cursor'."""
    async with AsyncClient(conninfo(node), poll_interval=0.1) as client:
        task_id = await client.enqueue("SELECT 1", topic="astr")
        assert (await client.wait([task_id], timeout=WAIT))[0].state is TaskState.FINISHED
        assert client.conn.autocommit


def test_conninfo_client_reconnects_after_restart(make_cluster: Any) -> None:
    node = make_cluster()
    with Client(conninfo(node), poll_interval=0.1) as client:
        first = client.enqueue("SELECT 1")
        old = client.conn
        node.restart()
        assert client.get(first).id == first  # a read runs again on a new connection
        assert client.conn is not old
        node.restart()
        with pytest.raises(DatabaseError):
            client.enqueue("SELECT 2")  # a write on the dead connection is not repeated
        second = client.enqueue("SELECT 3")  # the next call reconnects
        tasks = client.wait([first, second], timeout=WAIT)
        assert {t.state for t in tasks} == {TaskState.FINISHED}


def test_pool_client_survives_restart(make_cluster: Any) -> None:
    node = make_cluster()
    with ConnectionPool(conninfo(node), min_size=2, max_size=2, open=True) as pool:
        client = Client(pool, poll_interval=0.1)
        task_id = client.enqueue("SELECT 1")
        node.restart()
        assert client.get(task_id).id == task_id


def _wait_in_thread(
    client: Client, task_id: int
) -> tuple[threading.Thread, list[list[Task]], list[Exception]]:
    """Start client.wait([task_id]) in a thread; its result or error lands in the lists."""
    results: list[list[Task]] = []
    errors: list[Exception] = []

    def wait() -> None:
        try:
            results.append(client.wait([task_id], timeout=WAIT))
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    return waiter, results, errors


def test_wait_resumes_after_restart(make_cluster: Any) -> None:
    node = make_cluster()
    with Client(conninfo(node), poll_interval=0.2) as client:
        task_id = client.enqueue("SELECT pg_sleep(1)")
        waiter, results, errors = _wait_in_thread(client, task_id)
        poll_until(lambda: state_of(node, task_id) == "running", timeout=WAIT)
        node.restart()  # interrupts the task (no attempt burnt) and the wait's connection
        waiter.join(WAIT + 30)
        assert not waiter.is_alive()
        assert errors == []
        assert results[0][0].state is TaskState.FINISHED


async def test_async_wait_resumes_after_restart(make_cluster: Any) -> None:
    node = make_cluster()
    async with AsyncClient(conninfo(node), poll_interval=0.2) as client:
        task_id = await client.enqueue("SELECT pg_sleep(1)")
        waiting = asyncio.create_task(client.wait([task_id], timeout=WAIT))
        poll_until(lambda: state_of(node, task_id) == "running", timeout=WAIT)
        await asyncio.to_thread(node.restart)
        tasks = await asyncio.wait_for(waiting, WAIT + 30)
        assert tasks[0].state is TaskState.FINISHED


def test_closed_client_does_not_reconnect(node: Any) -> None:
    client = Client(conninfo(node))
    client.close()
    with pytest.raises(DatabaseError):
        client.tasks()


async def test_closed_async_client_does_not_reconnect(node: Any) -> None:
    client = AsyncClient(conninfo(node))
    await client.tasks()
    await client.close()
    with pytest.raises(DatabaseError):
        await client.tasks()
    never_used = AsyncClient(conninfo(node))
    await never_used.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        await never_used.tasks()


def test_wait_rides_out_an_outage(make_cluster: Any) -> None:
    """Regression: a reconnect that failed while the server was still down ended wait() with
    DatabaseError; it now keeps trying until its timeout."""
    node = make_cluster()
    with Client(conninfo(node), poll_interval=0.2) as client:
        task_id = client.enqueue("SELECT pg_sleep(1)")
        waiter, results, errors = _wait_in_thread(client, task_id)
        poll_until(lambda: state_of(node, task_id) == "running", timeout=WAIT)
        node.stop()
        # down for a while: the waiter's reconnects (every 0.25 s) fail meanwhile
        time.sleep(1.5)
        assert waiter.is_alive()
        assert errors == []
        node.start()
        waiter.join(WAIT + 30)
        assert not waiter.is_alive()
        assert errors == []
        assert results[0][0].state is TaskState.FINISHED
