"""Synchronous client: :class:`Client` (mirrored by :class:`~pg_background_queue.AsyncClient`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
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
    from psycopg_pool import ConnectionPool

T = TypeVar("T")


class Client:
    """Enqueue, watch and administer pg_background_queue.

    ``conn`` is one of:

    * a libpq connection string (``""`` uses the PG* environment variables): the client opens
      it in autocommit mode, closes it in :meth:`close`, and opens it again on the next call
      after it broke (server restart, failover: with several hosts and
      ``target_session_attrs=read-write`` libpq finds the new primary).  A read that fails
      because the connection broke is run once more on a new connection; a write
      (enqueue, cancel, ...) raises, as the server may or may not have committed it.
    * an existing ``psycopg.Connection``, used as it is: with ``autocommit=False`` an
      :meth:`enqueue` is part of your transaction and its task runs after your COMMIT.
    * a ``psycopg_pool.ConnectionPool`` (``pip install pg-background-queue[pool]``): every
      call borrows a connection and gives it back (its transaction committed by the pool).

    ``pooled=True`` says the connections go through a transaction-pooling PgBouncer, where
    LISTEN cannot work: :meth:`wait` then polls (or uses the server-side wait) instead.  The
    client never uses server-side prepared statements, so it needs no other adaptation.
    ``schema`` qualifies the extension's objects when its schema is not on the search_path.
    """

    def __init__(
        self,
        conn: str | psycopg.Connection[Any] | ConnectionPool[Any],
        *,
        schema: str | None = None,
        poll_interval: float = 1.0,
        pooled: bool = False,
    ) -> None:
        self.queries = Queries(schema)
        self.poll_interval = poll_interval
        self.pooled = pooled
        self._conninfo: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool[Any] | None = None
        self._owned = isinstance(conn, str)
        self._listener: psycopg.Connection[Any] | None = None
        if isinstance(conn, str):
            self._conninfo = conn
            self._conn = self.conn  # connect now: a bad conninfo fails here
        elif isinstance(conn, psycopg.Connection):
            self._conn = conn
        elif is_pool(conn, asynchronous=False):
            self._pool = conn
        else:
            raise InvalidArgumentError(
                "Client() takes a conninfo string, a psycopg.Connection or a "
                f"psycopg_pool.ConnectionPool, not {type(conn).__name__}"
            )

    def _current(self) -> psycopg.Connection[Any]:
        """The client's connection, (re)opened if needed; raises psycopg's errors as they are."""
        if self._conn is None or (self._conninfo is not None and _unusable(self._conn)):
            if self._conninfo is None:
                raise InvalidArgumentError("a client on a connection pool has no own connection")
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
        return self._conn

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The client's connection (reopened first if it broke); not for a pool client."""
        try:
            return self._current()
        except psycopg.Error as exc:
            raise translate(exc) from exc

    def connection(self) -> psycopg.Connection[Any]:
        """The client's connection, opened (again) first if needed; not for a pool client."""
        return self.conn

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
        """Close the connections the client opened (not one or a pool it was given)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._owned:
            self._conninfo = None  # closed for good: no reconnect
            if self._conn is not None:
                self._conn.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection of one call: borrowed from the pool, or the client's own."""
        if self._pool is not None:
            with self._pool.connection() as conn:
                yield conn
        else:
            yield self._current()

    def _reconnects(self) -> bool:
        """Whether a broken connection is replaced (conninfo or pool) rather than fatal."""
        return self._conninfo is not None or self._pool is not None

    def _execute(self, query: Query[T], conn: psycopg.Connection[Any]) -> T:
        # prepare=False: no server-side prepared statement, which a transaction-pooling
        # PgBouncer would hand to another client's session
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query.statement, query.params, prepare=False)
            rows: list[DictRow] = cur.fetchall() if cur.description else []
        return query.parse(rows)

    def _run(self, query: Query[T], conn: psycopg.Connection[Any] | None = None) -> T:
        retry = query.retry_safe and conn is None and self._reconnects()
        while True:
            try:
                if conn is not None:
                    return self._execute(query, conn)
                with self._connection() as borrowed:
                    return self._execute(query, borrowed)
            except psycopg.OperationalError as exc:
                if not retry:
                    raise translate(exc) from exc
                retry = False  # once, on a new connection
                if self._pool is not None:
                    self._pool.check()  # drop the pool's other broken connections
            except psycopg.Error as exc:
                raise translate(exc) from exc

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

        Uses the server's ``pg_background_wait()`` where the extension has it; otherwise
        wakes up on the extension's NOTIFY (not with ``pooled=True``) and polls the remaining
        ids every ``poll_interval`` seconds.  A client on a conninfo or a pool reconnects and
        resumes the wait when its connection breaks.  Raises
        :class:`~pg_background_queue.errors.WaitTimeout` (a ``TimeoutError``) naming the
        unfinished ids when ``timeout`` seconds pass.  ``on_progress(done, total)`` is
        called as tasks end; it must not use this client's connection.
        """
        state = WaitState(ids, timeout, self.poll_interval, on_progress)
        while state.remaining:
            try:
                with self._wait_connection() as conn:
                    self._wait_on(conn, state)
            except psycopg.OperationalError as exc:
                if not self._reconnects():
                    raise translate(exc) from exc
                if self._pool is not None:
                    self._pool.check()
                time.sleep(min(state.block_time(RECONNECT_PAUSE), RECONNECT_PAUSE))
            except psycopg.Error as exc:
                raise translate(exc) from exc
        return self._run(self.queries.get_many(state.ids)) if state.ids else []

    def _wait_on(self, conn: psycopg.Connection[Any], state: WaitState) -> None:
        """One wait on ``conn`` (in autocommit mode) until done; raises if it breaks."""
        if self._execute(self.queries.has_server_wait(), conn):
            while True:
                state.polled(*self._execute(self.queries.done_ids(list(state.remaining)), conn))
                if not state.remaining:
                    return
                wait = self.queries.server_wait(
                    list(state.remaining), state.block_time(SERVER_WAIT_CHUNK)
                )
                try:
                    self._execute(wait, conn)
                except psycopg.Error as exc:
                    if exc.sqlstate != SERVER_WAIT_TIMEOUT:
                        raise
        listen = not self.pooled
        if listen:
            conn.execute(self.queries.listen(True), prepare=False)
        try:
            while state.remaining:
                if state.poll_due():
                    poll = self.queries.done_ids(list(state.remaining))
                    state.polled(*self._execute(poll, conn))
                    if not state.remaining:
                        break
                if not listen:
                    time.sleep(state.wait_time())
                    continue
                notes = conn.notifies(timeout=state.wait_time())
                with closing(notes):  # releases the connection's lock
                    for note in notes:
                        if state.notified(note.payload):
                            break  # poll to confirm: a notification proves nothing
        finally:
            if listen and not _unusable(conn):
                conn.execute(self.queries.listen(False), prepare=False)

    @contextmanager
    def _wait_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection for :meth:`wait`: borrowed, the client's, or our own."""
        if self._pool is not None:
            with self._pool.connection() as conn:
                autocommit = conn.autocommit
                conn.autocommit = True
                try:
                    yield conn
                finally:
                    if not _unusable(conn):
                        conn.autocommit = autocommit
            return
        conn = self._current()
        if conn.autocommit:
            yield conn
            return
        if self._listener is None or _unusable(self._listener):
            info = conn.info
            try:
                self._listener = psycopg.connect(
                    make_conninfo(info.dsn, password=info.password), autocommit=True
                )
            except psycopg.Error as exc:
                raise translate(exc) from exc
        yield self._listener

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


def _unusable(conn: psycopg.Connection[Any]) -> bool:
    return conn.closed or conn.broken
