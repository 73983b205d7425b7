"""What the dashboard reads and does, over one connection as the user's role.

Every read runs as the role the dashboard connected as, so row level security decides which
tasks it sees.  Features of newer extension versions (the ``waiting`` state, ``result``,
dependencies, pause/resume) are detected from the catalog once per connection, and the
queries only name what exists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pg_background_queue.aio import AsyncClient
from pg_background_queue.errors import NotInstalledError, PgbqError, translate

EXTENSION = "pg_background_queue"
#: States counted per topic, in the order the page shows them (those the server has).
COUNTED_STATES = ("pending", "waiting", "running", "retrying", "failed")
#: Columns that name a task's prerequisites, by extension version.
DEPENDENCY_COLUMNS = ("after", "depends_on", "dependencies")
CHART_MINUTES = 15
SQL_PREVIEW = 160
#: An overview is served again while younger than this many times what it took to compute...
OVERVIEW_DUTY = 5.0
#: ... and at least this old (seconds).
OVERVIEW_MIN_AGE_S = 0.5

Row = dict[str, Any]


@dataclass(frozen=True)
class Features:
    """What the connected database's extension offers, and who we are there."""

    version: str
    schema: str
    role: str
    superuser: bool
    states: tuple[str, ...]
    task_columns: tuple[str, ...]
    functions: frozenset[str]
    executable: frozenset[str] = field(default_factory=frozenset)

    @property
    def dependency_column(self) -> str | None:
        """The column listing a task's prerequisites, if this version has one."""
        return next((c for c in DEPENDENCY_COLUMNS if c in self.task_columns), None)

    @property
    def can_pause(self) -> bool:
        """Pause/resume exist and this role may execute them."""
        names = {"pg_background_queue_pause", "pg_background_queue_resume"}
        return names <= self.executable

    def as_json(self) -> Row:
        """What the page needs to know to show or hide columns and actions."""
        return {
            "version": self.version,
            "schema": self.schema,
            "role": self.role,
            "superuser": self.superuser,
            "states": list(self.states),
            "counted_states": [s for s in COUNTED_STATES if s in self.states],
            "result": "result" in self.task_columns,
            "dependencies": self.dependency_column,
            "pause": "pg_background_queue_pause" in self.functions,
            "can_pause": self.can_pause,
        }


_FEATURES = sql.SQL(
    """
SELECT e.extversion AS version,
       n.nspname::text AS schema,
       current_user::text AS role,
       (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) AS superuser,
       ARRAY(SELECT en.enumlabel::text
               FROM pg_catalog.pg_enum en
               JOIN pg_catalog.pg_type ty ON ty.oid = en.enumtypid
              WHERE ty.typname = 'pg_background_queue_task_state'
                AND ty.typnamespace = n.oid
              ORDER BY en.enumsortorder) AS states,
       ARRAY(SELECT a.attname::text
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
              WHERE c.relname = 'pg_background_tasks' AND c.relnamespace = n.oid
                AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum) AS task_columns,
       ARRAY(SELECT p.proname::text
               FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                AND d.refobjid = e.oid AND d.deptype = 'e') AS functions,
       ARRAY(SELECT p.proname::text
               FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_proc p ON p.oid = d.objid
              WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                AND d.refobjid = e.oid AND d.deptype = 'e'
                AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')) AS executable
  FROM pg_catalog.pg_extension e
  JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = {name}
"""
).format(name=sql.Literal(EXTENSION))


class ActionRefused(PgbqError):
    """The server said no (an error) or the action did not apply (``sqlstate`` None)."""


class Dashboard:
    """The dashboard's database side: one connection, one statement at a time.

    The connection is opened lazily and opened again after it is lost (a restart, a
    failover, an idle timeout of a pooler), so the page recovers by itself.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[Row] | None = None
        self._features: Features | None = None
        self._lock = asyncio.Lock()
        self._overview_cache: dict[tuple[str | None, str | None], tuple[float, Row]] = {}

    async def close(self) -> None:
        """Close the connection, if open."""
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn, self._features = self._conn, None, None
        if conn is not None and not conn.closed:
            await conn.close()

    async def _connection(self) -> tuple[psycopg.AsyncConnection[Row], Features]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self._drop()
            try:
                # no server-side prepared statements: the DSN may be a pooler in
                # transaction mode (PgBouncer before 1.21 loses them between transactions)
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, row_factory=dict_row, prepare_threshold=None
                )
            except psycopg.Error as exc:
                raise translate(exc) from exc
        if self._features is None:
            cur = await self._conn.execute(_FEATURES)
            row = await cur.fetchone()
            if row is None:
                raise NotInstalledError(
                    f"extension {EXTENSION} is not installed in this database "
                    "(CREATE EXTENSION pg_background_queue)"
                )
            self._features = Features(
                version=row["version"],
                schema=row["schema"],
                role=row["role"],
                superuser=bool(row["superuser"]),
                states=tuple(row["states"]),
                task_columns=tuple(row["task_columns"]),
                functions=frozenset(row["functions"]),
                executable=frozenset(row["executable"]),
            )
        return self._conn, self._features

    async def _guarded(self, work: Any, *, read_only: bool = True) -> Any:
        """Run ``work(conn, features)`` under the lock, translating errors.

        A connection found broken (the server restarted, a failover, a pooler closed it) is
        dropped; a read is then tried once more on a new connection, an action is not (it
        may have been applied) and reports the error.
        """
        async with self._lock:
            for attempt in (1, 2):
                had_connection = self._conn is not None
                try:
                    conn, features = await self._connection()
                    return await work(conn, features)
                except psycopg.Error as exc:
                    lost = self._conn is not None and (self._conn.broken or self._conn.closed)
                    if lost:
                        await self._drop()
                    if lost and had_connection and read_only and attempt == 1:
                        continue
                    raise translate(exc) from exc
            raise AssertionError("unreachable")

    @staticmethod
    def _name(features: Features, obj: str) -> sql.Identifier:
        return sql.Identifier(features.schema, obj)

    async def features(self) -> Features:
        """The extension's features (detected on connect)."""

        async def work(_conn: Any, features: Features) -> Features:
            return features

        result: Features = await self._guarded(work)
        return result

    # ----------------------------------------------------------------- reads

    async def overview(self, state: str | None = None, topic: str | None = None) -> Row:
        """Everything the main page shows, from one snapshot.

        The counts are exact, so with a large backlog one overview costs a scan of the
        queued rows (about 1 s at a million).  Pages in several tabs share the answer: one
        younger than ``OVERVIEW_DUTY`` times the time it took (at least
        ``OVERVIEW_MIN_AGE_S``) is served again, which keeps the dashboard's share of the
        database below ``1 / OVERVIEW_DUTY`` of one backend however many pages are open.
        """
        key = (state, topic)
        cached = self._overview_cache.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]

        async def work(conn: psycopg.AsyncConnection[Row], f: Features) -> Row:
            again = self._overview_cache.get(key)
            if again is not None and time.monotonic() < again[0]:
                return again[1]  # computed while this request waited for the lock
            started = time.monotonic()
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                result: Row = {
                    "features": f.as_json(),
                    "now": await _scalar(conn, "SELECT pg_catalog.now()"),
                    "topics": await self._topics(conn, f),
                    "running": await self._running(conn, f),
                    "failures": await self._failures(conn, f),
                    "tasks": await self._latest(conn, f, state, topic),
                    "chart": await self._chart(conn, f),
                    "workers": await _rows(
                        conn,
                        sql.SQL("SELECT * FROM {} ORDER BY database, role, pid").format(
                            self._name(f, "pg_background_queue_workers")
                        ),
                    ),
                }
            took = time.monotonic() - started
            result["took_ms"] = round(took * 1000, 1)
            expires = time.monotonic() + max(OVERVIEW_MIN_AGE_S, OVERVIEW_DUTY * took)
            if len(self._overview_cache) > 64:  # filters typed by hand: keep it small
                self._overview_cache.clear()
            self._overview_cache[key] = (expires, result)
            return result

        answer: Row = await self._guarded(work)
        return answer

    async def _topics(self, conn: psycopg.AsyncConnection[Row], f: Features) -> list[Row]:
        """Per topic: configuration (effective limits, paused) and counts per state."""
        config = await _rows(
            conn,
            sql.SQL("SELECT * FROM {} ORDER BY topic NULLS FIRST").format(
                self._name(f, "pg_background_queue_topics")
            ),
        )
        states = [s for s in COUNTED_STATES if s in f.states]
        counts = await _rows(
            conn,
            sql.SQL(
                "SELECT topic, state::text AS state, pg_catalog.count(*) AS n FROM {} "
                "WHERE state = ANY(%(states)s::{}[]) GROUP BY 1, 2"
            ).format(
                self._name(f, "pg_background_tasks"),
                self._name(f, "pg_background_queue_task_state"),
            ),
            {"states": states},
        )
        by_topic: dict[str | None, Row] = {}
        for row in config:
            entry = {
                "topic": row["topic"],
                "configured": row.get("configured"),
                "max_parallel": row.get("max_parallel_running_tasks_count"),
                "retry_count": row.get("retry_count"),
                "delay_in_sec": row.get("delay_in_sec"),
                "priority": row.get("priority"),
                "timeout_in_sec": row.get("timeout_in_sec"),
                "paused": row.get("paused"),
                "counts": dict.fromkeys(states, 0),
            }
            by_topic[row["topic"]] = entry
        for row in counts:
            entry = by_topic.setdefault(
                row["topic"], {"topic": row["topic"], "counts": dict.fromkeys(states, 0)}
            )
            entry["counts"][row["state"]] = int(row["n"])
        return sorted(by_topic.values(), key=lambda e: (e["topic"] is not None, e["topic"] or ""))

    async def _running(self, conn: psycopg.AsyncConnection[Row], f: Features) -> list[Row]:
        return await _rows(
            conn,
            sql.SQL(
                "SELECT id, topic, owner::text AS owner, worker_pid, started_at, attempts, "
                "pg_catalog.left(sql_statement, %(n)s) AS sql FROM {} "
                "WHERE state = 'running' ORDER BY started_at, id LIMIT 100"
            ).format(self._name(f, "pg_background_tasks")),
            {"n": SQL_PREVIEW},
        )

    async def _failures(self, conn: psycopg.AsyncConnection[Row], f: Features) -> list[Row]:
        """Failed tasks (latest first) and tasks waiting for a retry, with every attempt."""
        cols = sql.SQL(
            "id, topic, owner::text AS owner, state::text AS state, attempts, closed_at, "
            "next_run_at, pg_catalog.left(sql_statement, {n}) AS sql, error_history"
        ).format(n=sql.Literal(SQL_PREVIEW))
        return await _rows(
            conn,
            sql.SQL(
                "(SELECT {cols} FROM {t} WHERE state = 'failed' "
                " ORDER BY closed_at DESC LIMIT 10) "
                "UNION ALL "
                "(SELECT {cols} FROM {t} WHERE state = 'retrying' "
                " ORDER BY next_run_at DESC LIMIT 10)"
            ).format(cols=cols, t=self._name(f, "pg_background_tasks")),
        )

    async def _latest(
        self,
        conn: psycopg.AsyncConnection[Row],
        f: Features,
        state: str | None,
        topic: str | None,
    ) -> list[Row]:
        return await _rows(
            conn,
            sql.SQL(
                "SELECT id, topic, owner::text AS owner, state::text AS state, priority, "
                "attempts, joined_at, next_run_at, started_at, closed_at, errors, "
                "pg_catalog.left(sql_statement, %(n)s) AS sql FROM {} "
                "WHERE (%(state)s::text IS NULL OR state::text = %(state)s) "
                "AND (%(topic)s::text IS NULL OR topic = %(topic)s) "
                "ORDER BY id DESC LIMIT 50"
            ).format(self._name(f, "pg_background_tasks")),
            {"n": SQL_PREVIEW, "state": state or None, "topic": topic or None},
        )

    async def _chart(self, conn: psycopg.AsyncConnection[Row], f: Features) -> Row:
        """Finished and failed tasks per minute over the last ``CHART_MINUTES``, per topic.

        Read through the index on ``closed_at`` of terminal tasks.
        """
        rows = await _rows(
            conn,
            sql.SQL(
                "SELECT topic, "
                "  pg_catalog.floor(EXTRACT(epoch FROM pg_catalog.now() - closed_at) / 60)::int "
                "    AS ago, "
                "  pg_catalog.count(*) FILTER (WHERE state = 'finished') AS finished, "
                "  pg_catalog.count(*) FILTER (WHERE state = 'failed') AS failed "
                "FROM {} WHERE state IN ('finished', 'failed', 'cancelled') "
                "AND closed_at > pg_catalog.now() - pg_catalog.make_interval(mins => %(m)s) "
                "GROUP BY 1, 2"
            ).format(self._name(f, "pg_background_tasks")),
            {"m": CHART_MINUTES},
        )
        series: dict[str, Row] = {}
        for row in rows:
            key = row["topic"] if row["topic"] is not None else ""
            entry = series.setdefault(
                key,
                {
                    "topic": row["topic"],
                    "finished": [0] * CHART_MINUTES,
                    "failed": [0] * CHART_MINUTES,
                },
            )
            slot = CHART_MINUTES - 1 - min(max(int(row["ago"]), 0), CHART_MINUTES - 1)
            entry["finished"][slot] += int(row["finished"])
            entry["failed"][slot] += int(row["failed"])
        return {"minutes": CHART_MINUTES, "series": [series[k] for k in sorted(series)]}

    async def task(self, task_id: int) -> Row:
        """Every column of one task, with its prerequisites and dependents where they exist."""

        async def work(conn: psycopg.AsyncConnection[Row], f: Features) -> Row:
            tasks = self._name(f, "pg_background_tasks")
            found = await _rows(
                conn,
                sql.SQL(
                    "SELECT pg_catalog.to_jsonb(t) AS task FROM {} t WHERE t.id = %(id)s"
                ).format(tasks),
                {"id": task_id},
            )
            if not found:
                raise ActionRefused(
                    f"task {task_id} does not exist or is not yours", sqlstate="P0002"
                )
            task: Row = found[0]["task"]
            out: Row = {"features": f.as_json(), "columns": list(f.task_columns), "task": task}
            dep = f.dependency_column
            if dep is not None:
                col = sql.Identifier(dep)
                out["prerequisites"] = await _rows(
                    conn,
                    sql.SQL(
                        "SELECT id, state::text AS state FROM {t} WHERE id = ANY(ARRAY("
                        "SELECT pg_catalog.unnest({c}) FROM {t} WHERE id = %(id)s)) ORDER BY id"
                    ).format(t=tasks, c=col),
                    {"id": task_id},
                )
                out["dependents"] = await _rows(
                    conn,
                    sql.SQL(
                        "SELECT id, state::text AS state FROM {t} "
                        "WHERE {c} @> ARRAY[%(id)s::bigint] ORDER BY id LIMIT 200"
                    ).format(t=tasks, c=col),
                    {"id": task_id},
                )
            return out

        result: Row = await self._guarded(work)
        return result

    # --------------------------------------------------------------- actions

    async def cancel(self, task_id: int) -> Row:
        """``pg_background_cancel`` through the client; refused if it did not apply."""
        return await self._task_action(task_id, "cancel")

    async def retry(self, task_id: int) -> Row:
        """``pg_background_retry`` through the client; refused if it did not apply."""
        return await self._task_action(task_id, "retry")

    async def _task_action(self, task_id: int, action: str) -> Row:
        async def work(conn: psycopg.AsyncConnection[Any], f: Features) -> Row:
            self._overview_cache.clear()  # the page reloads right after an action
            client = AsyncClient(conn, schema=f.schema)
            done = await (client.cancel(task_id) if action == "cancel" else client.retry(task_id))
            rows = await _rows(
                conn,
                sql.SQL("SELECT state::text AS state FROM {} WHERE id = %(id)s").format(
                    self._name(f, "pg_background_tasks")
                ),
                {"id": task_id},
            )
            state = rows[0]["state"] if rows else None
            if not done:
                why = "it does not exist or is not yours" if state is None else f"it is {state}"
                verb = "cancelled" if action == "cancel" else "queued again"
                raise ActionRefused(f"task {task_id} was not {verb}: {why}")
            return {"id": task_id, "state": state}

        result: Row = await self._guarded(work, read_only=False)
        return result

    async def set_paused(self, topic: str | None, paused: bool) -> Row:
        """``pg_background_queue_pause`` / ``_resume`` of a topic (NULL: the default one)."""

        async def work(conn: psycopg.AsyncConnection[Row], f: Features) -> Row:
            self._overview_cache.clear()
            function = "pg_background_queue_pause" if paused else "pg_background_queue_resume"
            if function not in f.functions:
                raise ActionRefused(
                    f"extension version {f.version} has no {function}()", sqlstate="0A000"
                )
            rows = await _rows(
                conn,
                sql.SQL("SELECT {}(%(topic)s::text) AS changed").format(self._name(f, function)),
                {"topic": topic},
            )
            if rows and rows[0]["changed"] is False:  # 1.2 answers false for a no-op
                name = "the default topic" if topic is None else f"topic {topic}"
                state = "already paused" if paused else "not paused"
                raise ActionRefused(f"{name} was {state}")
            return {"topic": topic, "paused": paused}

        result: Row = await self._guarded(work, read_only=False)
        return result


async def _rows(
    conn: psycopg.AsyncConnection[Row],
    statement: sql.Composed | sql.SQL | str,
    params: Mapping[str, Any] | Sequence[Any] | None = None,
) -> list[Row]:
    cur = await conn.execute(statement, params)
    return await cur.fetchall() if cur.description else []


async def _scalar(conn: psycopg.AsyncConnection[Row], statement: str) -> Any:
    cur = await conn.execute(statement)
    row = await cur.fetchone()
    return next(iter(row.values())) if row else None
