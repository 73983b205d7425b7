"""SQL of the client, shared by the sync and async APIs.

Each method returns a :class:`Query`: a composed statement, its parameters, and the function
that turns the fetched rows into the method's result.  :class:`~pg_background_queue.Client`
and :class:`~pg_background_queue.AsyncClient` only differ in how they execute it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from psycopg import sql

from pg_background_queue.errors import InvalidArgumentError, TaskNotFoundError, WaitTimeout
from pg_background_queue.models import (
    Task,
    TaskState,
    Topic,
    TopicStats,
    Totals,
    Worker,
)

T = TypeVar("T")
Row = Mapping[str, Any]
RunAt = datetime | timedelta | None
StateFilter = TaskState | str | Iterable[TaskState | str] | None

NOTIFY_CHANNEL = "pg_background_queue"
TASK_COLUMNS = (
    "id", "sql_statement", "topic", "owner", "priority", "state", "joined_at", "run_at",
    "next_run_at", "started_at", "closed_at", "attempts", "retry_count", "retry_delay_in_sec",
    "errors", "error_history", "worker_pid", "dedupe_key", "after",
)  # fmt: skip
TERMINAL = ("finished", "failed", "cancelled")
SERVER_WAIT = "pg_background_wait"
#: SQLSTATE of ``pg_background_wait`` running out of time (the tasks go on).
SERVER_WAIT_TIMEOUT = "PBQ01"
#: Longest single server-side wait (s): a broken connection is noticed at least this often.
SERVER_WAIT_CHUNK = 30.0
#: Pause (s) between attempts to reconnect while a wait() resumes.
RECONNECT_PAUSE = 0.25


@dataclass(frozen=True, slots=True)
class Query(Generic[T]):
    """A statement, its parameters, and the parser of its rows."""

    statement: sql.Composed
    params: Mapping[str, Any]
    parse: Callable[[Sequence[Row]], T]
    #: Only reads: a client may run it again on a new connection when its connection broke.
    retry_safe: bool = False


def _states(state: StateFilter) -> list[str] | None:
    if state is None:
        return None
    items = [state] if isinstance(state, str | TaskState) else list(state)
    try:
        return [TaskState(s).value for s in items]
    except ValueError as exc:
        valid = ", ".join(s.value for s in TaskState)
        raise InvalidArgumentError(f"{exc} (valid states: {valid})") from None


def _run_at(run_at: RunAt) -> tuple[datetime | None, timedelta | None]:
    if run_at is None or isinstance(run_at, datetime):
        return run_at, None
    if isinstance(run_at, timedelta):
        return None, run_at
    raise InvalidArgumentError(f"run_at must be a datetime or a timedelta, not {run_at!r}")


def is_pool(obj: object, *, asynchronous: bool) -> bool:
    """Whether ``obj`` is a psycopg_pool pool of the right kind (without importing it)."""
    if not type(obj).__module__.startswith("psycopg_pool"):
        return False
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    return isinstance(obj, AsyncConnectionPool if asynchronous else ConnectionPool)


def _first(rows: Sequence[Row]) -> Any:
    return next(iter(rows[0].values())) if rows else None


class Queries:
    """Builds the client's statements for the extension installed in ``schema``."""

    def __init__(self, schema: str | None = None) -> None:
        self.schema = schema

    def name(self, obj: str) -> sql.Identifier:
        """An object of the extension, qualified when a schema was given."""
        return sql.Identifier(self.schema, obj) if self.schema else sql.Identifier(obj)

    def _task_select(self) -> sql.Composed:
        cols = sql.SQL(", ").join(
            sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c))
            if c in ("owner", "state")
            else sql.Identifier(c)
            for c in TASK_COLUMNS
        )
        # result and result_truncated (1.3) through the row's JSON: the same text works
        # against 1.2's table, which lacks them
        extra = sql.SQL(
            ", to_jsonb(t) -> 'result' AS result"
            ", COALESCE((to_jsonb(t) ->> 'result_truncated')::boolean, false) AS result_truncated"
        )
        return sql.SQL("SELECT {}{} FROM {} t").format(
            cols, extra, self.name("pg_background_tasks")
        )

    def enqueue(
        self,
        sql_text: str,
        topic: str | None,
        priority: int | None,
        run_at: RunAt,
        dedupe_key: str | None = None,
        after: Sequence[int] | None = None,
    ) -> Query[int]:
        """``pg_background_enqueue``: the new task's id (with ``dedupe_key``: the queued
        task of that key, if there is one; with ``after``: waiting for those tasks)."""
        if after is not None and isinstance(after, int | str):
            raise InvalidArgumentError("after takes a sequence of task ids")
        return self._enqueue(
            "pg_background_enqueue",
            sql_text,
            topic,
            priority,
            run_at,
            _first,
            dedupe_key,
            None if after is None else [int(i) for i in after],
        )

    def enqueue_many(
        self,
        sqls: Sequence[str],
        topic: str | None,
        priority: int | None,
        run_at: RunAt,
        dedupe_keys: Sequence[str | None] | None = None,
    ) -> Query[list[int]]:
        """``pg_background_enqueue_many``: the ids, in input order, in one round trip."""
        if isinstance(sqls, str):
            raise InvalidArgumentError("enqueue_many() takes a sequence of SQL strings, not a str")
        if isinstance(dedupe_keys, str):
            raise InvalidArgumentError("dedupe_keys takes a sequence of keys (or None), not a str")
        if dedupe_keys is not None and len(dedupe_keys) != len(sqls):
            raise InvalidArgumentError(
                f"dedupe_keys has {len(dedupe_keys)} elements for {len(sqls)} statements"
            )
        return self._enqueue(
            "pg_background_enqueue_many",
            list(sqls),
            topic,
            priority,
            run_at,
            lambda rows: [next(iter(r.values())) for r in rows],
            None if dedupe_keys is None else list(dedupe_keys),
        )

    def _enqueue(
        self,
        function: str,
        payload: Any,
        topic: str | None,
        priority: int | None,
        run_at: RunAt,
        parse: Callable[[Sequence[Row]], T],
        dedupe: str | list[str | None] | None = None,
        after: list[int] | None = None,
    ) -> Query[T]:
        at, delay = _run_at(run_at)
        # 1.2's arguments only when given (by name): the call stays valid for extension 1.1
        key: sql.Composable = sql.SQL("")
        if dedupe is not None:
            name = "dedupe_key" if isinstance(dedupe, str) else "dedupe_keys"
            key += sql.SQL(", {} => %(dedupe)s").format(sql.Identifier(name))
        if after is not None:
            key += sql.SQL(", after => %(after)s::bigint[]")
        stmt = sql.SQL(
            "SELECT * FROM {}(%(sql)s, %(topic)s, %(priority)s::integer, "
            "coalesce(%(at)s::timestamptz, statement_timestamp() + %(delay)s::interval){})"
        ).format(self.name(function), key)
        params = {
            "sql": payload,
            "topic": topic,
            "priority": priority,
            "at": at,
            "delay": delay,
            "dedupe": dedupe,
            "after": after,
        }
        return Query(stmt, params, parse)

    def get(self, task_id: int) -> Query[Task]:
        """One task; :class:`TaskNotFoundError` when it is not visible."""

        def parse(rows: Sequence[Row]) -> Task:
            if not rows:
                raise TaskNotFoundError(f"task {task_id} does not exist or is not yours")
            return Task.from_row(rows[0])

        stmt = sql.SQL("{} WHERE id = %(id)s").format(self._task_select())
        return Query(stmt, {"id": task_id}, parse, retry_safe=True)

    def get_many(self, ids: Sequence[int]) -> Query[list[Task]]:
        """Tasks in the order of ``ids``; :class:`TaskNotFoundError` names missing ones."""

        def parse(rows: Sequence[Row]) -> list[Task]:
            found = {r["id"]: Task.from_row(r) for r in rows}
            missing = [i for i in ids if i not in found]
            if missing:
                raise TaskNotFoundError(
                    f"task(s) {', '.join(map(str, missing))} do not exist or are not yours"
                )
            return [found[i] for i in ids]

        stmt = sql.SQL("{} WHERE id = ANY(%(ids)s)").format(self._task_select())
        return Query(stmt, {"ids": list(ids)}, parse, retry_safe=True)

    def tasks(self, state: StateFilter, topic: str | None, limit: int) -> Query[list[Task]]:
        """Newest tasks first, filtered by state(s) and topic."""
        if limit < 1:
            raise InvalidArgumentError(f"limit must be at least 1, not {limit}")
        stmt = sql.SQL(
            "{} WHERE (%(states)s::text[] IS NULL OR state::text = ANY(%(states)s)) "
            "AND (%(topic)s::text IS NULL OR topic = %(topic)s) ORDER BY id DESC LIMIT %(limit)s"
        ).format(self._task_select())
        params = {"states": _states(state), "topic": topic, "limit": limit}
        return Query(stmt, params, lambda rows: [Task.from_row(r) for r in rows], retry_safe=True)

    def done_ids(self, ids: Sequence[int]) -> Query[tuple[set[int], set[int]]]:
        """Of ``ids``: (visible ids, ids in a terminal state)."""
        stmt = sql.SQL(
            "SELECT id, state::text = ANY(%(terminal)s) AS done FROM {} WHERE id = ANY(%(ids)s)"
        ).format(self.name("pg_background_tasks"))
        return Query(
            stmt,
            {"ids": list(ids), "terminal": list(TERMINAL)},
            lambda rows: ({r["id"] for r in rows}, {r["id"] for r in rows if r["done"]}),
            retry_safe=True,
        )

    def cancel(self, task_id: int) -> Query[bool]:
        """``pg_background_cancel``."""
        return self._call_bool("pg_background_cancel", task_id)

    def retry(self, task_id: int) -> Query[bool]:
        """``pg_background_retry``."""
        return self._call_bool("pg_background_retry", task_id)

    def _call_bool(self, function: str, task_id: int) -> Query[bool]:
        stmt = sql.SQL("SELECT {}(%(id)s::bigint) AS ok").format(self.name(function))
        return Query(stmt, {"id": task_id}, lambda rows: bool(_first(rows)))

    def reschedule(self, task_id: int, priority: int | None, run_at: RunAt) -> Query[bool]:
        """``pg_background_reschedule``: False if the task is not queued (or not yours)."""
        at, delay = _run_at(run_at)
        stmt = sql.SQL(
            "SELECT {}(%(id)s::bigint, %(priority)s::integer, "
            "coalesce(%(at)s::timestamptz, statement_timestamp() + %(delay)s::interval)) AS ok"
        ).format(self.name("pg_background_reschedule"))
        params = {"id": task_id, "priority": priority, "at": at, "delay": delay}
        return Query(stmt, params, lambda rows: bool(_first(rows)))

    def pause(self, topic: str | None) -> Query[bool]:
        """``pg_background_queue_pause``: False if the topic was paused already."""
        return self._call_topic("pg_background_queue_pause", topic)

    def resume(self, topic: str | None) -> Query[bool]:
        """``pg_background_queue_resume``: False if the topic was not paused."""
        return self._call_topic("pg_background_queue_resume", topic)

    def _call_topic(self, function: str, topic: str | None) -> Query[bool]:
        stmt = sql.SQL("SELECT {}(%(topic)s::text) AS ok").format(self.name(function))
        return Query(stmt, {"topic": topic}, lambda rows: bool(_first(rows)))

    def purge(self, older_than: timedelta | str) -> Query[int]:
        """``pg_background_queue_purge``: number of tasks deleted."""
        stmt = sql.SQL("SELECT {}(%(older)s::interval) AS n").format(
            self.name("pg_background_queue_purge")
        )
        return Query(stmt, {"older": older_than}, lambda rows: int(_first(rows) or 0))

    def stats(self) -> Query[list[TopicStats]]:
        """Per topic and state: counts, oldest age, run-time percentiles."""
        stmt = sql.SQL("SELECT * FROM {} ORDER BY topic NULLS FIRST, state").format(
            self.name("pg_background_queue_task_stats")
        )
        return Query(stmt, {}, lambda rows: [TopicStats.from_row(r) for r in rows], retry_safe=True)

    def totals(self) -> Query[list[Totals]]:
        """Cumulative terminal counts and run time per topic: live rows + pruned statistics."""
        stmt = sql.SQL(
            "SELECT topic, state, sum(tasks)::bigint AS tasks, sum(run_s)::float8 AS run_s FROM ("
            " SELECT topic, state::text AS state, count(*) AS tasks,"
            "  coalesce(sum(extract(epoch FROM closed_at - started_at)), 0) AS run_s"
            " FROM {tasks} WHERE state::text = ANY(%(terminal)s) GROUP BY 1, 2"
            " UNION ALL"
            " SELECT nullif(topic, ''), state::text, sum(tasks), sum(total_run_seconds)"
            " FROM {stats} GROUP BY 1, 2) AS t GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2"
        ).format(
            tasks=self.name("pg_background_tasks"), stats=self.name("pg_background_queue_stats")
        )
        return Query(
            stmt,
            {"terminal": list(TERMINAL)},
            lambda rows: [
                Totals(r["topic"], TaskState(r["state"]), int(r["tasks"]), float(r["run_s"]))
                for r in rows
            ],
            retry_safe=True,
        )

    def workers(self) -> Query[list[Worker]]:
        """Live workers of the cluster."""
        stmt = sql.SQL("SELECT * FROM {} ORDER BY database, role, pid").format(
            self.name("pg_background_queue_workers")
        )
        return Query(stmt, {}, lambda rows: [Worker(**r) for r in rows], retry_safe=True)

    def topics(self) -> Query[list[Topic]]:
        """Effective configuration and queue counts of every known topic."""
        stmt = sql.SQL("SELECT * FROM {} ORDER BY topic NULLS FIRST").format(
            self.name("pg_background_queue_topics")
        )
        return Query(stmt, {}, lambda rows: [Topic(**r) for r in rows], retry_safe=True)

    def has_server_wait(self) -> Query[bool]:
        """Whether ``pg_background_wait(bigint[], interval)`` exists (extension 1.3 and later)."""
        signature = f"{SERVER_WAIT}(bigint[], interval)"
        if self.schema:
            signature = sql.Identifier(self.schema).as_string(None) + "." + signature
        stmt = sql.SQL("SELECT to_regprocedure(%(sig)s) IS NOT NULL AS ok")
        return Query(stmt.format(), {"sig": signature}, lambda rows: bool(_first(rows)), True)

    def server_wait(self, ids: Sequence[int], seconds: float) -> Query[None]:
        """``pg_background_wait``: block in the server until the tasks end or time runs out."""
        stmt = sql.SQL(
            "SELECT count(*) FROM {}(%(ids)s::bigint[], make_interval(secs => %(s)s)) AS w"
        ).format(self.name(SERVER_WAIT))
        return Query(stmt, {"ids": list(ids), "s": seconds}, lambda rows: None, True)

    @staticmethod
    def listen(on: bool) -> sql.Composed:
        """LISTEN / UNLISTEN on the extension's notification channel."""
        verb = sql.SQL("LISTEN" if on else "UNLISTEN")
        return sql.SQL("{} {}").format(verb, sql.Identifier(NOTIFY_CHANNEL))


class WaitState:
    """Bookkeeping of :meth:`Client.wait`, shared by the sync and async loops.

    A notification (``NOTIFY pg_background_queue '<id> <state>'``) naming one of the ids is
    only a hint: any role may NOTIFY that channel, so it brings the next poll of the
    remaining ids forward (notifications arriving within ``NOTIFY_BATCH`` seconds of a poll
    share the next one) and only a poll removes ids.  The slow poll covers a missed or
    disabled notification.
    """

    NOTIFY_BATCH = 0.01

    def __init__(
        self,
        ids: Iterable[int],
        timeout: float | None,
        poll_interval: float,
        on_progress: Callable[[int, int], None] | None,
    ) -> None:
        self.ids = list(dict.fromkeys(ids))
        self.remaining = set(self.ids)
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.on_progress = on_progress
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.next_poll = 0.0
        self.last_poll = 0.0

    def poll_due(self) -> bool:
        """True when the remaining ids should be queried now."""
        return bool(self.remaining) and time.monotonic() >= self.next_poll

    def polled(self, visible: set[int], done: set[int]) -> None:
        """Apply a poll's result (see :meth:`Queries.done_ids`)."""
        missing = self.remaining - visible
        if missing:
            raise TaskNotFoundError(
                f"task(s) {', '.join(map(str, sorted(missing)))} do not exist or are not yours"
            )
        self._finish(done)
        self.last_poll = time.monotonic()
        self.next_poll = self.last_poll + self.poll_interval

    def notified(self, payload: str) -> bool:
        """Take one notification as a hint; True if it names a remaining id (poll soon)."""
        parts = payload.split()
        if not (len(parts) == 2 and parts[0].isdigit() and parts[1] in TERMINAL):
            return False
        if int(parts[0]) not in self.remaining:
            return False
        soon = max(time.monotonic(), self.last_poll + self.NOTIFY_BATCH)
        self.next_poll = min(self.next_poll, soon)
        return True

    def _finish(self, done: set[int]) -> None:
        before = len(self.remaining)
        self.remaining -= done
        if self.on_progress is not None and len(self.remaining) != before:
            self.on_progress(len(self.ids) - len(self.remaining), len(self.ids))

    def block_time(self, cap: float) -> float:
        """Seconds a server-side wait may block (at most ``cap``); raises on timeout."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            assert self.timeout is not None
            raise WaitTimeout(self.remaining, self.timeout)
        return cap if self.deadline is None else min(cap, self.deadline - now)

    def wait_time(self) -> float:
        """Seconds to wait for notifications before the next poll; raises on timeout."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            assert self.timeout is not None
            raise WaitTimeout(self.remaining, self.timeout)
        until = self.next_poll if self.deadline is None else min(self.next_poll, self.deadline)
        return max(until - now, 0.0)
