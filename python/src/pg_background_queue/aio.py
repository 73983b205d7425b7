"""Asynchronous client: :class:`AsyncClient`, the awaitable mirror of ``Client``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow, dict_row

from pg_background_queue._queries import (
    RECONNECT_PAUSE,
    SERVER_WAIT_CHUNK,
    SERVER_WAIT_TIMEOUT,
    Queries,
    Query,
    RunAt,
    StateFilter,
    WaitState,
    is_pool,
)
from pg_background_queue.errors import InvalidArgumentError, translate
from pg_background_queue.models import Task, Topic, TopicStats, Totals, Worker

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")


class AsyncClient:
    """Enqueue, watch and administer pg_background_queue, with asyncio.

    The methods are those of :class:`~pg_background_queue.Client`, awaitable, and ``conn``
    takes the same three kinds of source: a libpq connection string (opened on the first
    call, or at once by ``await AsyncClient.connect(conninfo)``; reopened after it broke),
    a ``psycopg.AsyncConnection`` used as it is, or a ``psycopg_pool.AsyncConnectionPool``
    that every call borrows from.  ``pooled`` and ``schema`` mean what they mean for
    :class:`~pg_background_queue.Client`.
    """

    def __init__(
        self,
        conn: str | psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any],
        *,
        schema: str | None = None,
        poll_interval: float = 1.0,
        pooled: bool = False,
    ) -> None:
        self.queries = Queries(schema)
        self.poll_interval = poll_interval
        self.pooled = pooled
        self._conninfo: str | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._pool: AsyncConnectionPool[Any] | None = None
        self._owned = isinstance(conn, str)
        self._listener: psycopg.AsyncConnection[Any] | None = None
        if isinstance(conn, str):
            self._conninfo = conn
        elif isinstance(conn, psycopg.AsyncConnection):
            self._conn = conn
        elif is_pool(conn, asynchronous=True):
            self._pool = conn
        else:
            raise InvalidArgumentError(
                "AsyncClient() takes a conninfo string, a psycopg.AsyncConnection or a "
                f"psycopg_pool.AsyncConnectionPool, not {type(conn).__name__}"
            )

    @classmethod
    async def connect(
        cls,
        conninfo: str = "",
        *,
        schema: str | None = None,
        poll_interval: float = 1.0,
        pooled: bool = False,
    ) -> AsyncClient:
        """Make a client on ``conninfo`` and open its connection now (errors surface here)."""
        client = cls(conninfo, schema=schema, poll_interval=poll_interval, pooled=pooled)
        await client.connection()
        return client

    @property
    def conn(self) -> psycopg.AsyncConnection[Any]:
        """The client's connection as it is (see :meth:`connection`); not for a pool client."""
        if self._conn is None:
            raise InvalidArgumentError(
                "a client on a connection pool has no own connection"
                if self._pool is not None
                else "no connection: await connection() first (or the client is closed)"
            )
        return self._conn

    async def _current(self) -> psycopg.AsyncConnection[Any]:
        """The client's connection, (re)opened if needed; raises psycopg's errors as they are."""
        if self._conninfo is not None and (self._conn is None or _unusable(self._conn)):
            self._conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        return self.conn

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The client's connection, opened (again) first if needed; not for a pool client."""
        try:
            return await self._current()
        except psycopg.Error as exc:
            raise translate(exc) from exc

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connections the client opened (not one or a pool it was given)."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._owned:
            self._conninfo = None  # closed for good: no reconnect
            if self._conn is not None:
                await self._conn.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection of one call: borrowed from the pool, or the client's own."""
        if self._pool is not None:
            async with self._pool.connection() as conn:
                yield conn
        else:
            yield await self._current()

    def _reconnects(self) -> bool:
        """Whether a broken connection is replaced (conninfo or pool) rather than fatal."""
        return self._conninfo is not None or self._pool is not None

    async def _execute(self, query: Query[T], conn: psycopg.AsyncConnection[Any]) -> T:
        # prepare=False: see Client._execute
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query.statement, query.params, prepare=False)
            rows: list[DictRow] = await cur.fetchall() if cur.description else []
        return query.parse(rows)

    async def _run(self, query: Query[T], conn: psycopg.AsyncConnection[Any] | None = None) -> T:
        retry = query.retry_safe and conn is None and self._reconnects()
        while True:
            try:
                if conn is not None:
                    return await self._execute(query, conn)
                async with self._connection() as borrowed:
                    return await self._execute(query, borrowed)
            except psycopg.OperationalError as exc:
                if not retry:
                    raise translate(exc) from exc
                retry = False  # once, on a new connection
                if self._pool is not None:
                    await self._pool.check()  # drop the pool's other broken connections
            except psycopg.Error as exc:
                raise translate(exc) from exc

    async def enqueue(
        self,
        sql: str,
        topic: str | None = None,
        priority: int | None = None,
        run_at: RunAt = None,
        *,
        dedupe_key: str | None = None,
        after: Sequence[int] | None = None,
    ) -> int:
        """Queue one SQL statement or script; ``run_at`` is a datetime or a delay.

        With ``dedupe_key``, while a task of yours with the same topic and key is queued
        (pending, retrying, waiting), nothing is added and that task's id is returned.
        With ``after`` (task ids), the task waits until all of them are finished, and is
        cancelled if one of them fails or is cancelled."""
        return await self._run(
            self.queries.enqueue(sql, topic, priority, run_at, dedupe_key, after)
        )

    async def enqueue_many(
        self,
        sqls: Sequence[str],
        topic: str | None = None,
        priority: int | None = None,
        run_at: RunAt = None,
        *,
        dedupe_keys: Sequence[str | None] | None = None,
    ) -> list[int]:
        """Queue many statements in one round trip; ids in input order.

        ``dedupe_keys``: one key (or None) per statement, as ``enqueue``'s ``dedupe_key``."""
        return await self._run(
            self.queries.enqueue_many(sqls, topic, priority, run_at, dedupe_keys)
        )

    async def get(self, task_id: int) -> Task:
        """One task (:class:`~pg_background_queue.errors.TaskNotFoundError` if not visible)."""
        return await self._run(self.queries.get(task_id))

    async def get_many(self, ids: Sequence[int]) -> list[Task]:
        """Tasks in the order of ``ids`` (one query); missing ids raise ``TaskNotFoundError``."""
        return await self._run(self.queries.get_many(ids))

    async def tasks(
        self, state: StateFilter = None, topic: str | None = None, limit: int = 100
    ) -> list[Task]:
        """Newest tasks first, optionally filtered by state(s) and topic."""
        return await self._run(self.queries.tasks(state, topic, limit))

    async def wait(
        self,
        ids: Iterable[int],
        timeout: float | None = None,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> list[Task]:
        """Block until every task is finished, failed or cancelled; return them in order.

        See :meth:`Client.wait <pg_background_queue.Client.wait>`: the server-side wait where
        it exists, else NOTIFY (not when ``pooled``) and polling; resumes after a reconnect.
        """
        state = WaitState(ids, timeout, self.poll_interval, on_progress)
        while state.remaining:
            try:
                async with self._wait_connection() as conn:
                    await self._wait_on(conn, state)
            except psycopg.OperationalError as exc:
                if not self._reconnects():
                    raise translate(exc) from exc
                if self._pool is not None:
                    await self._pool.check()
                await asyncio.sleep(min(state.block_time(RECONNECT_PAUSE), RECONNECT_PAUSE))
            except psycopg.Error as exc:
                raise translate(exc) from exc
        return await self._run(self.queries.get_many(state.ids)) if state.ids else []

    async def _wait_on(self, conn: psycopg.AsyncConnection[Any], state: WaitState) -> None:
        """One wait on ``conn`` (in autocommit mode) until done; raises if it breaks."""
        if await self._execute(self.queries.has_server_wait(), conn):
            while True:
                poll = self.queries.done_ids(list(state.remaining))
                state.polled(*await self._execute(poll, conn))
                if not state.remaining:
                    return
                wait = self.queries.server_wait(
                    list(state.remaining), state.block_time(SERVER_WAIT_CHUNK)
                )
                try:
                    await self._execute(wait, conn)
                except psycopg.Error as exc:
                    if exc.sqlstate != SERVER_WAIT_TIMEOUT:
                        raise
        listen = not self.pooled
        if listen:
            await conn.execute(self.queries.listen(True), prepare=False)
        try:
            while state.remaining:
                if state.poll_due():
                    poll = self.queries.done_ids(list(state.remaining))
                    state.polled(*await self._execute(poll, conn))
                    if not state.remaining:
                        break
                if not listen:
                    await asyncio.sleep(state.wait_time())
                    continue
                notes = conn.notifies(timeout=state.wait_time())
                async with aclosing(notes):  # releases the connection's lock
                    async for note in notes:
                        if state.notified(note.payload):
                            break  # poll to confirm: a notification proves nothing
        finally:
            if listen and not _unusable(conn):
                await conn.execute(self.queries.listen(False), prepare=False)

    @asynccontextmanager
    async def _wait_connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit connection for :meth:`wait`: borrowed, the client's, or our own."""
        if self._pool is not None:
            async with self._pool.connection() as conn:
                autocommit = conn.autocommit
                await conn.set_autocommit(True)
                try:
                    yield conn
                finally:
                    if not _unusable(conn):
                        await conn.set_autocommit(autocommit)
            return
        conn = await self._current()
        if conn.autocommit:
            yield conn
            return
        if self._listener is None or _unusable(self._listener):
            info = conn.info
            try:
                self._listener = await psycopg.AsyncConnection.connect(
                    make_conninfo(info.dsn, password=info.password), autocommit=True
                )
            except psycopg.Error as exc:
                raise translate(exc) from exc
        yield self._listener

    async def cancel(self, task_id: int) -> bool:
        """Cancel a pending/retrying task or interrupt a running one; False if already done."""
        return await self._run(self.queries.cancel(task_id))

    async def retry(self, task_id: int) -> bool:
        """Queue a failed or cancelled task again; False if it is not in such a state."""
        return await self._run(self.queries.retry(task_id))

    async def reschedule(
        self, task_id: int, priority: int | None = None, run_at: RunAt = None
    ) -> bool:
        """Change the priority and/or start time of your pending, retrying or waiting task;
        False for any other.  ``run_at`` is a datetime or a delay."""
        return await self._run(self.queries.reschedule(task_id, priority, run_at))

    async def pause(self, topic: str | None) -> bool:
        """Start no more tasks of ``topic`` (None: the default topic) in any database until
        :meth:`resume`; running tasks finish.  Administrators only.  False if already paused."""
        return await self._run(self.queries.pause(topic))

    async def resume(self, topic: str | None) -> bool:
        """Start tasks of a paused topic again.  False if it was not paused."""
        return await self._run(self.queries.resume(topic))

    async def purge(self, older_than: timedelta | str = timedelta(0)) -> int:
        """Delete your tasks closed more than ``older_than`` ago (statistics are kept)."""
        return await self._run(self.queries.purge(older_than))

    async def stats(self) -> list[TopicStats]:
        """Per topic and state: counts, age of the oldest task, p50/p95 run time."""
        return await self._run(self.queries.stats())

    async def totals(self) -> list[Totals]:
        """Cumulative finished/failed/cancelled counts and run time, including purged tasks."""
        return await self._run(self.queries.totals())

    async def workers(self) -> list[Worker]:
        """Live workers (cluster-wide)."""
        return await self._run(self.queries.workers())

    async def topics(self) -> list[Topic]:
        """Effective configuration and queue counts of every known topic."""
        return await self._run(self.queries.topics())


def _unusable(conn: psycopg.AsyncConnection[Any]) -> bool:
    return conn.closed or conn.broken
