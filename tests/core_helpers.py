"""Small helpers shared by the core behaviour suites (test_core_*.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pg_background_queue.testing.cluster import (
    PollTimeout,
    conninfo,
    destroy_node,
    make_node,
    poll_until,
    server_log,
)

TERMINAL = ("finished", "failed", "cancelled")


def worker_node(workers: int, idle_timeout: str = "30s", **conf: str) -> Iterator[Any]:
    """For a fixture: a node with this many workers, which stay for idle_timeout (so for the
    whole module, as a rule), and more settings; removed afterwards."""
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": workers,
            "pg_background_queue.worker_idle_timeout": idle_timeout,
            **conf,
        }
    )
    try:
        yield n
    finally:
        destroy_node(n)


def connect(
    node: Any, *, user: str | None = None, dbname: str = "postgres", autocommit: bool = True
) -> psycopg.Connection[dict[str, Any]]:
    """A psycopg 3 connection to a testgres node (dict rows)."""
    return psycopg.connect(
        conninfo(node, dbname=dbname, user=user), autocommit=autocommit, row_factory=dict_row
    )


def query(
    node: Any,
    sql: str,
    params: Sequence[Any] | None = None,
    *,
    user: str | None = None,
    dbname: str = "postgres",
) -> list[dict[str, Any]]:
    """Run one statement in a fresh autocommit session and return its rows."""
    with connect(node, user=user, dbname=dbname) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def scalar(node: Any, sql: str, params: Sequence[Any] | None = None, **kw: Any) -> Any:
    """First column of the first row."""
    rows = query(node, sql, params, **kw)
    return next(iter(rows[0].values())) if rows else None


def enqueue(
    node: Any,
    sql: str,
    topic: str | None = None,
    priority: int | None = None,
    *,
    user: str | None = None,
    dbname: str = "postgres",
) -> int:
    """Enqueue one task and return its id."""
    return int(
        scalar(
            node,
            "SELECT pg_background_enqueue(%s, %s, %s)",
            (sql, topic, priority),
            user=user,
            dbname=dbname,
        )
    )


def enqueue_copies(
    node: Any, sql: str, n: int, topic: str | None = None, priority: int | None = None
) -> list[int]:
    """Enqueue n copies of one statement with pg_background_enqueue_many (one transaction);
    return their ids in order."""
    rows = query(
        node,
        "SELECT pg_background_enqueue_many(array_fill(%s::text, ARRAY[%s]), %s, %s) AS id",
        (sql, n, topic, priority),
    )
    return [int(r["id"]) for r in rows]


def install_signals(node: Any) -> None:
    """A table of signals and public.wait_for(name): a task that calls it waits (at most a
    minute) until the test inserts that signal."""
    query(node, "CREATE TABLE signals (s text)")
    query(
        node,
        "CREATE FUNCTION public.wait_for(name text) RETURNS void LANGUAGE plpgsql AS $$ "
        "BEGIN FOR i IN 1..3000 LOOP "
        "EXIT WHEN EXISTS (SELECT 1 FROM public.signals WHERE s = name); "
        "PERFORM pg_sleep(0.02); END LOOP; END $$",
    )


def task(node: Any, task_id: int, *, dbname: str = "postgres") -> dict[str, Any]:
    """The task's row, read as superuser."""
    rows = query(node, "SELECT * FROM pg_background_tasks WHERE id = %s", (task_id,), dbname=dbname)
    assert rows, f"task {task_id} does not exist"
    return rows[0]


def wait_tasks(
    node: Any,
    ids: Iterable[int],
    states: Sequence[str] = TERMINAL,
    timeout: float = 30.0,
    *,
    dbname: str = "postgres",
) -> list[dict[str, Any]]:
    """Poll until every task is in one of states; return their rows (by id).

    On timeout the error shows the tasks still elsewhere and the extension's workers."""
    id_list = list(ids)
    last: list[dict[str, Any]] = []

    def check() -> list[dict[str, Any]] | None:
        nonlocal last
        last = query(
            node,
            "SELECT * FROM pg_background_tasks WHERE id = ANY(%s) ORDER BY id",
            (id_list,),
            dbname=dbname,
        )
        if len(last) == len(id_list) and all(r["state"] in states for r in last):
            return last
        return None

    try:
        return poll_until(check, timeout=timeout, message=f"tasks {id_list} did not reach {states}")
    except AssertionError as exc:
        behind = [
            {k: r[k] for k in ("id", "state", "owner", "topic", "attempts", "worker_pid")}
            for r in last
            if r["state"] not in states
        ]
        workers = query(node, "SELECT * FROM pg_background_queue_workers", dbname=dbname)
        log = "\n".join(server_log(node).splitlines()[-40:])
        raise PollTimeout(
            f"{exc}\nbehind: {behind}\nworkers: {workers}\nserver log (end):\n{log}"
        ) from exc


def set_config(node: Any, **settings: Any) -> None:
    """ALTER SYSTEM the extension's settings, reload, and wait until visible."""
    with connect(node) as conn:
        for name, value in settings.items():
            if isinstance(value, dict):
                value = json.dumps(value)
            conn.execute(f"ALTER SYSTEM SET pg_background_queue.{name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")

    def visible() -> bool:
        for name, value in settings.items():
            shown = scalar(node, f"SHOW pg_background_queue.{name}")
            if isinstance(value, dict):
                if json.loads(shown or "{}") != value:
                    return False
            elif str(shown).rstrip("s") != str(value).rstrip("s"):
                return False
        return True

    poll_until(visible, timeout=10, message=f"settings {settings} not applied")


def worker_pids(node: Any) -> list[int]:
    """PIDs of live task workers according to the server's process list."""
    rows = query(
        node,
        "SELECT pid FROM pg_stat_activity "
        "WHERE backend_type = 'pg_background_queue worker' ORDER BY pid",
    )
    return [r["pid"] for r in rows]


def make_role(node: Any, name: str, *, login: bool = True, dbname: str = "postgres") -> None:
    """Create a role allowed to use the queue, with rights on schema public."""
    query(node, f"DROP ROLE IF EXISTS {name}")
    query(node, f"CREATE ROLE {name} {'LOGIN' if login else 'NOLOGIN'}")
    query(node, f"GRANT CREATE, USAGE ON SCHEMA public TO {name}", dbname=dbname)
    query(node, f"SELECT pg_background_queue_grant_usage('{name}')", dbname=dbname)
