"""Asynchronous client: :class:`AsyncClient`, the awaitable mirror of ``Client``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import DictRow, dict_row

from pg_background_queue._queries import Queries, Query, RunAt, StateFilter, WaitState
from pg_background_queue.errors import translate
from pg_background_queue.models import Task, Topic, TopicStats, Totals, Worker

T = TypeVar("T")


class AsyncClient:
    """Enqueue, watch and administer pg_background_queue over one async connection.

    Create it with ``await AsyncClient.connect(conninfo)`` or ``AsyncClient(aconn)``; the
    methods are those of :class:`~pg_background_queue.Client`, awaitable.

    ``conn`` is a libpq connection string (``""`` uses the PG* environment variables), which
    the client opens in autocommit mode and closes in :meth:`close`, or an existing
    ``psycopg.Connection``, which the client uses as it is: with ``autocommit=False`` an
    :meth:`enqueue` is part of your transaction and its task runs after your COMMIT.
    ``schema`` qualifies the extension's objects when its schema is not on the search_path.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        schema: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.queries = Queries(schema)
        self.poll_interval = poll_interval
        self._owned = False
        self._listener: psycopg.AsyncConnection[Any] | None = None
        self.conn: psycopg.AsyncConnection[Any] = conn

    @classmethod
    async def connect(
        cls, conninfo: str = "", *, schema: str | None = None, poll_interval: float = 1.0
    ) -> AsyncClient:
        """Open an autocommit connection (closed by :meth:`close`) and wrap it."""
        try:
            conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise translate(exc) from exc
        client = cls(conn, schema=schema, poll_interval=poll_interval)
        client._owned = True
        return client

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
        """Close the connections the client opened (not one it was given)."""
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._owned:
            await self.conn.close()

    async def _run(self, query: Query[T], conn: psycopg.AsyncConnection[Any] | None = None) -> T:
        try:
            async with (conn or self.conn).cursor(row_factory=dict_row) as cur:
                await cur.execute(query.statement, query.params)
                rows: list[DictRow] = await cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc) from exc
        return query.parse(rows)

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

        Wakes up on the extension's NOTIFY and polls the remaining ids every
        ``poll_interval`` seconds as a fallback.  Raises
        :class:`~pg_background_queue.errors.WaitTimeout` (a ``TimeoutError``) naming the
        unfinished ids when ``timeout`` seconds pass.  ``on_progress(done, total)`` is
        called as tasks end; it must not use this client's connection.
        """
        state = WaitState(ids, timeout, self.poll_interval, on_progress)
        if not state.ids:
            return []
        conn = await self._listen_connection()
        await conn.execute(self.queries.listen(True))
        try:
            while state.remaining:
                if state.poll_due():
                    poll = self.queries.done_ids(list(state.remaining))
                    state.polled(*await self._run(poll, conn))
                    if not state.remaining:
                        break
                notes = conn.notifies(timeout=state.wait_time())
                async with aclosing(notes):  # releases the connection's lock
                    async for note in notes:
                        if state.notified(note.payload):
                            break  # poll to confirm: a notification proves nothing
        except psycopg.Error as exc:
            raise translate(exc) from exc
        finally:
            if not conn.closed:
                await conn.execute(self.queries.listen(False))
        return await self._run(self.queries.get_many(state.ids))

    async def _listen_connection(self) -> psycopg.AsyncConnection[Any]:
        """The client's connection if it is in autocommit mode, else one of our own."""
        if self.conn.autocommit:
            return self.conn
        if self._listener is None:
            info = self.conn.info
            try:
                self._listener = await psycopg.AsyncConnection.connect(
                    make_conninfo(info.dsn, password=info.password), autocommit=True
                )
            except psycopg.Error as exc:
                raise translate(exc) from exc
        return self._listener

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
