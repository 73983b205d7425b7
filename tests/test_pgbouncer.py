"""The client and the CLI through PgBouncer 1.18, in transaction and in session pooling mode.

Transaction pooling hands each transaction to whichever server connection is free: LISTEN
cannot deliver, and a server-side prepared statement lands in another client's session. The
bouncers here have 2 server connections, so clients share them and any such leak shows.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pg_background_queue import AsyncClient, Client, TaskState, WaitTimeout
from pg_background_queue.cli import main
from pg_background_queue.testing.cluster import query
from pg_background_queue.testing.stack import PgBouncer, Stack, missing_tools

pytestmark = [
    pytest.mark.pgbq_node(extra_conf={"pg_background_queue.max_parallel_running_tasks_count": 4}),
    pytest.mark.timeout(120),
]
MODES = ("transaction", "session")
WAIT = 60.0


def require_stack() -> None:
    missing = missing_tools()
    if missing:
        message = f"PgBouncer/Patroni/etcd not installed: {', '.join(missing)}"
        if os.environ.get("PGBQ_REQUIRE_STACK"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module")
def bouncers(node: Any) -> Iterator[dict[str, PgBouncer]]:
    require_stack()
    with Stack(prefix="pgbq-bouncer-") as stack:
        made = {mode: stack.start_pgbouncer(node.host, node.port, mode) for mode in MODES}
        yield made
        failed = [b.log()[-3000:] for b in made.values() if "ERROR" in b.log()]
        print("\n".join(failed))


@pytest.fixture(params=MODES)
def bouncer(request: pytest.FixtureRequest, bouncers: dict[str, PgBouncer]) -> PgBouncer:
    return bouncers[request.param]


def pooled(bouncer: PgBouncer) -> bool:
    return bouncer.pool_mode == "transaction"


def test_client_everything(bouncer: PgBouncer) -> None:
    with Client(bouncer.conninfo(), pooled=pooled(bouncer), poll_interval=0.1) as c:
        one = c.enqueue("SELECT pg_sleep(0.05)", topic="pgb", priority=3)
        many = c.enqueue_many(["SELECT 1", "SELECT 1/0"], topic="pgb")
        tasks = c.wait([one, *many], timeout=WAIT)
        assert [t.state for t in tasks] == [
            TaskState.FINISHED,
            TaskState.FINISHED,
            TaskState.FAILED,
        ]
        assert c.get(one).priority == 3
        assert many[1] in [t.id for t in c.tasks(state="failed", topic="pgb")]
        failed_at = tasks[2].closed_at
        assert failed_at is not None
        assert c.retry(many[1]) is True
        again = c.wait([many[1]], timeout=WAIT)[0]
        assert again.state is TaskState.FAILED
        assert again.closed_at is not None
        assert again.closed_at > failed_at
        later = c.enqueue("SELECT 1", topic="pgb", run_at=timedelta(hours=1))
        assert c.cancel(later) is True
        assert c.get(later).state is TaskState.CANCELLED
        assert any(s.topic == "pgb" for s in c.stats())
        assert any(t.topic == "pgb" for t in c.totals())
        assert isinstance(c.topics(), list)
        assert isinstance(c.workers(), list)


def test_many_clients_share_server_connections(bouncer: PgBouncer) -> None:
    """Regression: psycopg prepares a statement run 5 times; through transaction pooling two
    clients' ``_pg3_0`` collided on a shared server connection ("already exists" / "does
    not exist"). The client never prepares now."""
    errors: list[Exception] = []
    task_ids: list[int] = []

    def work() -> None:
        try:
            with Client(bouncer.conninfo(), pooled=pooled(bouncer)) as c:
                task_id = c.enqueue("SELECT 1", topic="share")
                task_ids.append(task_id)
                for _ in range(12):
                    c.get(task_id)
                    c.tasks(topic="share", limit=5)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    with Client(bouncer.conninfo(), pooled=pooled(bouncer), poll_interval=0.1) as c:
        assert {t.state for t in c.wait(task_ids, timeout=WAIT)} == {TaskState.FINISHED}


def test_wait_untold_does_not_hang(bouncers: dict[str, PgBouncer]) -> None:
    """A client not told it is behind transaction pooling LISTENs in vain: its poll ends the
    wait, with no error; and a timeout still fires on time."""
    with Client(bouncers["transaction"].conninfo(), poll_interval=0.2) as c:
        ids = c.enqueue_many(["SELECT pg_sleep(0.2)"] * 3, topic="untold")
        assert {t.state for t in c.wait(ids, timeout=WAIT)} == {TaskState.FINISHED}
        later = c.enqueue("SELECT 1", run_at=timedelta(hours=1))
        with pytest.raises(WaitTimeout):
            c.wait([later], timeout=0.5)
        assert c.cancel(later)


def test_wait_pooled_polls_without_listen(bouncers: dict[str, PgBouncer]) -> None:
    with Client(bouncers["transaction"].conninfo(), pooled=True, poll_interval=0.1) as c:
        task_id = c.enqueue("SELECT pg_sleep(0.3)")
        seen: list[tuple[int, int]] = []
        c.wait([task_id], timeout=WAIT, on_progress=lambda d, t: seen.append((d, t)))
        assert seen == [(1, 1)]


async def test_async_client(bouncer: PgBouncer) -> None:
    async with AsyncClient(bouncer.conninfo(), pooled=pooled(bouncer), poll_interval=0.1) as c:
        ids = await c.enqueue_many(["SELECT 1", "SELECT 1/0"], topic="apgb")
        one = await c.enqueue("SELECT 2", topic="apgb")
        tasks = await c.wait([*ids, one], timeout=WAIT)
        assert [t.state for t in tasks] == [
            TaskState.FINISHED,
            TaskState.FAILED,
            TaskState.FINISHED,
        ]
        assert await c.retry(ids[1]) is True
        later = await c.enqueue("SELECT 1", run_at=timedelta(hours=1))
        assert await c.cancel(later) is True
        for _ in range(8):  # past psycopg's prepare threshold
            await c.get(one)
        assert any(s.topic == "apgb" for s in await c.stats())
        await c.wait([ids[1]], timeout=WAIT)


async def test_async_clients_concurrently(bouncer: PgBouncer) -> None:
    async def one(n: int) -> TaskState:
        async with AsyncClient(bouncer.conninfo(), pooled=pooled(bouncer), poll_interval=0.1) as c:
            task_id = await c.enqueue(f"SELECT {n}", topic="aconc")
            for _ in range(6):
                await c.tasks(topic="aconc", limit=3)
            return (await c.wait([task_id], timeout=WAIT))[0].state

    states = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(4))), WAIT)
    assert set(states) == {TaskState.FINISHED}


def test_connection_pool_through_bouncer(bouncer: PgBouncer) -> None:
    with ConnectionPool(bouncer.conninfo(), min_size=1, max_size=3, open=True) as pool:
        c = Client(pool, pooled=pooled(bouncer), poll_interval=0.1)
        ids = c.enqueue_many(["SELECT 1"] * 5, topic="ppool")
        assert {t.state for t in c.wait(ids, timeout=WAIT)} == {TaskState.FINISHED}
        for _ in range(8):
            c.get(ids[0])
        c.close()
        assert not pool.closed


async def test_async_pool_through_bouncer(bouncer: PgBouncer) -> None:
    async with AsyncConnectionPool(bouncer.conninfo(), min_size=1, max_size=3, open=False) as pool:
        c = AsyncClient(pool, pooled=pooled(bouncer), poll_interval=0.1)
        ids = await c.enqueue_many(["SELECT 1"] * 5, topic="appool")
        assert {t.state for t in await c.wait(ids, timeout=WAIT)} == {TaskState.FINISHED}
        await c.close()


def test_cli(bouncer: PgBouncer, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--pooled"] if pooled(bouncer) else []
    dsn = ["--dsn", bouncer.conninfo(), *extra]
    assert main([*dsn, "enqueue", "SELECT 41 + 1", "--topic", "clipgb"]) == 0
    task_id = int(capsys.readouterr().out.split()[0])
    assert main([*dsn, "wait", str(task_id), "--timeout", str(WAIT)]) == 0
    capsys.readouterr()
    assert main([*dsn, "tasks", "--topic", "clipgb"]) == 0
    assert str(task_id) in capsys.readouterr().out
    for command in ("status", "workers", "topics", "metrics"):
        assert main([*dsn, command]) == 0, command
    capsys.readouterr()
    assert main([*dsn, "enqueue", "SELECT 1", "--at", "1h"]) == 0
    later = int(capsys.readouterr().out.split()[0])
    assert main([*dsn, "cancel", str(later)]) == 0
    assert main([*dsn, "retry", str(later)]) == 0
    capsys.readouterr()


def test_wait_prefers_the_server_side_wait(bouncers: dict[str, PgBouncer], node: Any) -> None:
    """With ``pg_background_wait(bigint[], interval)`` in the extension (1.3), a pooled wait
    blocks in the server instead of polling: with an hour between polls, only the server-side
    wait can see the task end within the timeout."""
    found = query(node, "SELECT to_regprocedure('pg_background_wait(bigint[], interval)')")
    if found[0][0] is None:
        pytest.skip("this extension version has no pg_background_wait(bigint[], interval)")
    with Client(bouncers["transaction"].conninfo(), pooled=True, poll_interval=3600) as c:
        task_id = c.enqueue("SELECT pg_sleep(0.5)")
        assert c.wait([task_id], timeout=30)[0].state is TaskState.FINISHED
