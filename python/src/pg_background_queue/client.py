"""Synchronous client: :class:`Client` (mirrored by :class:`~pg_background_queue.AsyncClient`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
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


class Client:
    """Enqueue, watch and administer pg_background_queue over one connection.

    ``conn`` is a libpq connection string (``""`` uses the PG* environment variables), which
    the client opens in autocommit mode and closes in :meth:`close`, or an existing
    ``psycopg.Connection``, which the client uses as it is: with ``autocommit=False`` an
    :meth:`enqueue` is part of your transaction and its task runs after your COMMIT.
    ``schema`` qualifies the extension's objects when its schema is not on the search_path.
    """

    def __init__(
        self,
        conn: str | psycopg.Connection[Any],
        *,
        schema: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.queries = Queries(schema)
        self.poll_interval = poll_interval
        self._owned = isinstance(conn, str)
        self._listener: psycopg.Connection[Any] | None = None
        if isinstance(conn, str):
            try:
                self.conn: psycopg.Connection[Any] = psycopg.connect(conn, autocommit=True)
            except psycopg.Error as exc:
                raise translate(exc) from exc
        else:
            self.conn = conn

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections the client opened (not one it was given)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._owned:
            self.conn.close()

    def _run(self, query: Query[T], conn: psycopg.Connection[Any] | None = None) -> T:
        try:
            with (conn or self.conn).cursor(row_factory=dict_row) as cur:
                cur.execute(query.statement, query.params)
                rows: list[DictRow] = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc) from exc
        return query.parse(rows)

    def enqueue(
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
        return self._run(self.queries.enqueue(sql, topic, priority, run_at, dedupe_key, after))

    def enqueue_many(
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
        return self._run(self.queries.enqueue_many(sqls, topic, priority, run_at, dedupe_keys))

    def get(self, task_id: int) -> Task:
        """One task (:class:`~pg_background_queue.errors.TaskNotFoundError` if not visible)."""
        return self._run(self.queries.get(task_id))

    def get_many(self, ids: Sequence[int]) -> list[Task]:
        """Tasks in the order of ``ids`` (one query); missing ids raise ``TaskNotFoundError``."""
        return self._run(self.queries.get_many(ids))

    def tasks(
        self, state: StateFilter = None, topic: str | None = None, limit: int = 100
    ) -> list[Task]:
        """Newest tasks first, optionally filtered by state(s) and topic."""
        return self._run(self.queries.tasks(state, topic, limit))

    def wait(
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
        conn = self._listen_connection()
        conn.execute(self.queries.listen(True))
        try:
            while state.remaining:
                if state.poll_due():
                    poll = self.queries.done_ids(list(state.remaining))
                    state.polled(*self._run(poll, conn))
                    if not state.remaining:
                        break
                notes = conn.notifies(timeout=state.wait_time())
                with closing(notes):  # releases the connection's lock
                    for note in notes:
                        if state.notified(note.payload):
                            break  # poll to confirm: a notification proves nothing
        except psycopg.Error as exc:
            raise translate(exc) from exc
        finally:
            if not conn.closed:
                conn.execute(self.queries.listen(False))
        return self._run(self.queries.get_many(state.ids))

    def _listen_connection(self) -> psycopg.Connection[Any]:
        """The client's connection if it is in autocommit mode, else one of our own."""
        if self.conn.autocommit:
            return self.conn
        if self._listener is None:
            info = self.conn.info
            try:
                self._listener = psycopg.connect(
                    make_conninfo(info.dsn, password=info.password), autocommit=True
                )
            except psycopg.Error as exc:
                raise translate(exc) from exc
        return self._listener

    def cancel(self, task_id: int) -> bool:
        """Cancel a pending/retrying task or interrupt a running one; False if already done."""
        return self._run(self.queries.cancel(task_id))

    def retry(self, task_id: int) -> bool:
        """Queue a failed or cancelled task again; False if it is not in such a state."""
        return self._run(self.queries.retry(task_id))

    def reschedule(self, task_id: int, priority: int | None = None, run_at: RunAt = None) -> bool:
        """Change the priority and/or start time of your pending, retrying or waiting task;
        False for any other.  ``run_at`` is a datetime or a delay."""
        return self._run(self.queries.reschedule(task_id, priority, run_at))

    def pause(self, topic: str | None) -> bool:
        """Start no more tasks of ``topic`` (None: the default topic) in any database until
        :meth:`resume`; running tasks finish.  Administrators only.  False if already paused."""
        return self._run(self.queries.pause(topic))

    def resume(self, topic: str | None) -> bool:
        """Start tasks of a paused topic again.  False if it was not paused."""
        return self._run(self.queries.resume(topic))

    def purge(self, older_than: timedelta | str = timedelta(0)) -> int:
        """Delete your tasks closed more than ``older_than`` ago (statistics are kept)."""
        return self._run(self.queries.purge(older_than))

    def stats(self) -> list[TopicStats]:
        """Per topic and state: counts, age of the oldest task, p50/p95 run time."""
        return self._run(self.queries.stats())

    def totals(self) -> list[Totals]:
        """Cumulative finished/failed/cancelled counts and run time, including purged tasks."""
        return self._run(self.queries.totals())

    def workers(self) -> list[Worker]:
        """Live workers (cluster-wide)."""
        return self._run(self.queries.workers())

    def topics(self) -> list[Topic]:
        """Effective configuration and queue counts of every known topic."""
        return self._run(self.queries.topics())
