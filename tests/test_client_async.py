"""AsyncClient mirrors Client: the same methods, awaitable, on a real cluster."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from core_helpers import make_role, query
from pg_background_queue import (
    AsyncClient,
    Client,
    InvalidSQLError,
    NotInstalledError,
    PermissionDeniedError,
    TaskNotFoundError,
    TaskState,
    WaitTimeout,
)
from pg_background_queue.testing.cluster import conninfo

pytestmark = pytest.mark.pgbq_node(
    extra_conf={"pg_background_queue.max_parallel_running_tasks_count": 4}
)
NO_POLL = 3600.0


@pytest.fixture(scope="module")
def prepared(node: Any) -> Any:
    make_role(node, "dave")
    query(node, "CREATE ROLE erin LOGIN")
    query(node, "CREATE DATABASE noext")
    return node


@pytest.fixture
async def aclient(prepared: Any) -> AsyncIterator[AsyncClient]:
    async with await AsyncClient.connect(conninfo(prepared), poll_interval=NO_POLL) as c:
        yield c


def test_same_public_methods_and_signatures() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync, aio = public(Client), public(AsyncClient)
    assert set(sync) - {"close"} == set(aio) - {"close", "connect"}
    for name, signature in sync.items():
        if name in ("__init__", "close"):
            continue
        # the async mirror of a psycopg connection is an AsyncConnection
        expected = str(signature).replace("psycopg.Connection", "psycopg.AsyncConnection")
        assert str(aio[name]) == expected, name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


async def test_enqueue_wait_get_tasks(aclient: AsyncClient) -> None:
    one = await aclient.enqueue("SELECT pg_sleep(0.05)", topic="a", priority=3)
    many = await aclient.enqueue_many(["SELECT 1", "SELECT 1/0"], topic="a")
    tasks = await aclient.wait([one, *many], timeout=30)
    assert [t.state for t in tasks] == [TaskState.FINISHED, TaskState.FINISHED, TaskState.FAILED]
    assert (await aclient.get(one)).priority == 3
    failed = await aclient.tasks(state="failed", topic="a")
    assert [t.id for t in failed] == [many[1]]
    assert failed[0].error_history[0].sqlstate == "22012"
    assert await aclient.get_many(many) == tasks[1:]


async def test_concurrent_waits_on_separate_clients(prepared: Any) -> None:
    async with (
        await AsyncClient.connect(conninfo(prepared), poll_interval=NO_POLL) as a,
        await AsyncClient.connect(conninfo(prepared), poll_interval=NO_POLL) as b,
    ):
        ids = await a.enqueue_many([f"SELECT pg_sleep(0.{i})" for i in range(1, 5)])
        first, second = await asyncio.gather(a.wait(ids[:2], timeout=30), b.wait(ids, timeout=30))
        assert [t.id for t in first] == ids[:2]
        assert all(t.done for t in second)


async def test_timeout_cancel_retry_purge(aclient: AsyncClient) -> None:
    slow = await aclient.enqueue("SELECT pg_sleep(60)")
    with pytest.raises(WaitTimeout) as err:
        await aclient.wait([slow], timeout=0.5)
    assert err.value.unfinished == [slow]
    assert await aclient.cancel(slow) is True
    [task] = await aclient.wait([slow], timeout=30)
    assert task.state is TaskState.CANCELLED
    assert await aclient.retry(slow) is True
    assert await aclient.cancel(slow) is True
    await aclient.wait([slow], timeout=30)
    assert await aclient.purge(timedelta(0)) >= 1
    with pytest.raises(TaskNotFoundError):
        await aclient.get(slow)


async def test_stats_workers_topics_totals(aclient: AsyncClient) -> None:
    ids = await aclient.enqueue_many(["SELECT 1"] * 3, topic="s")
    await aclient.wait(ids, timeout=30)
    stats = {(s.topic, s.state): s.tasks for s in await aclient.stats()}
    assert stats[("s", TaskState.FINISHED)] == 3
    assert await aclient.workers()
    assert None in {t.topic for t in await aclient.topics()}
    assert any(t.topic == "s" for t in await aclient.totals())


async def test_errors(prepared: Any, aclient: AsyncClient) -> None:
    with pytest.raises(InvalidSQLError) as err:
        await aclient.enqueue("SELEC 1")
    assert (err.value.sqlstate, err.value.position) == ("42601", 1)
    async with await AsyncClient.connect(conninfo(prepared, user="erin")) as erin:
        with pytest.raises(PermissionDeniedError):
            await erin.enqueue("SELECT 1")
    async with await AsyncClient.connect(conninfo(prepared, dbname="noext")) as other:
        with pytest.raises(NotInstalledError, match="shared_preload_libraries"):
            await other.tasks()


async def test_given_connection_in_a_transaction(prepared: Any) -> None:
    async with await psycopg.AsyncConnection.connect(conninfo(prepared, user="dave")) as conn:
        client = AsyncClient(conn, poll_interval=NO_POLL)
        task_id = await client.enqueue("SELECT current_user")
        await conn.commit()
        [task] = await client.wait([task_id], timeout=30)
        assert (task.owner, task.state) == ("dave", TaskState.FINISHED)
        await client.close()
        assert not conn.closed
