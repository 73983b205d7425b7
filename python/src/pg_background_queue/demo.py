"""``pgbq demo``: a short tour of the queue on a throwaway cluster (or an existing server).

It configures topics with different limits and priorities, enqueues a mixed workload (inserts
in several topics, tasks of a second role, tasks that fail and retry with 2^n backoff, a
VACUUM), shows progress, and ends with a summary of what ran, as whom, how long, and what
failed and why.  Then a small workflow: a DAG of steps (``after``) where one step fails and
cancels what depends on it, and a dedupe key that keeps a refresh from being queued twice.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from tqdm import tqdm

from pg_background_queue._table import duration, render
from pg_background_queue.client import Client
from pg_background_queue.errors import InvalidSQLError, WaitTimeout
from pg_background_queue.models import Task, TaskState

TOPICS: dict[str, dict[str, float]] = {
    "critical": {"priority": 1, "max_parallel_running_tasks_count": 2},
    "reports": {"priority": 50, "max_parallel_running_tasks_count": 2, "delay_in_sec": 0.2},
    "flaky": {"retry_count": 2},
    "maintenance": {"max_parallel_running_tasks_count": 1, "timeout_in_sec": 60},
    "dag": {"retry_count": 0},
}
DEMO_ROLE = "pgbq_demo_user"


@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    """Yield the conninfo of the target server: ``dsn``, or a throwaway cluster's."""
    if dsn is not None:
        yield dsn
        return
    from pg_background_queue._pgconfig import pg_config_value
    from pg_background_queue.tempcluster import TempCluster

    print(
        f"Creating a throwaway {pg_config_value('--version')} cluster "
        "with pg_background_queue preloaded ...",
        flush=True,
    )
    settings: dict[str, str | int | float] = {
        "pg_background_queue.topic_config": json.dumps(TOPICS),
        "pg_background_queue.max_parallel_running_tasks_count": 4,
    }
    with TempCluster(settings) as target:
        yield target


def _setup(conn: psycopg.Connection[dict[str, Any]], with_role: bool) -> None:
    conn.execute("DROP TABLE IF EXISTS pgbq_demo_events")
    conn.execute(
        "CREATE TABLE pgbq_demo_events (topic text, who text, at timestamptz "
        "DEFAULT clock_timestamp())"
    )
    if with_role:
        role = sql.Identifier(DEMO_ROLE)
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DEMO_ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
        conn.execute("SELECT pg_background_queue_grant_usage(%s)", (DEMO_ROLE,))
        conn.execute(sql.SQL("GRANT INSERT ON pgbq_demo_events TO {}").format(role))


def _insert(topic: str, seconds: float = 0.0) -> str:
    sleep = f"SELECT pg_sleep({seconds}); " if seconds else ""
    return f"{sleep}INSERT INTO pgbq_demo_events (topic, who) VALUES ('{topic}', current_user)"


def _enqueue_workload(
    conn: psycopg.Connection[dict[str, Any]], client: Client, with_role: bool
) -> list[int]:
    ids: list[int] = []
    with conn.transaction():  # all or nothing: the tasks start at COMMIT
        for topic, n, secs in (("reports", 6, 0.3), ("critical", 3, 0.1), (None, 4, 0.05)):
            ids += client.enqueue_many([_insert(topic or "default", secs)] * n, topic=topic)
        for bad in ("SELECT 1/0", "SELECT * FROM no_such_table"):
            ids.append(client.enqueue(bad, topic="flaky"))
        ids.append(client.enqueue("VACUUM (ANALYZE) pgbq_demo_events", topic="maintenance"))
        if with_role:  # tasks run as the role that enqueues them
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(DEMO_ROLE)))
            ids += client.enqueue_many([_insert("critical")] * 2, topic="critical")
    print(f"Enqueued {len(ids)} tasks.")
    try:
        client.enqueue("SELEC 1")
    except InvalidSQLError as exc:
        print(f"A bad task is refused at enqueue: {exc.sqlstate} {exc} (position {exc.position})")
    return ids


def _wait(
    client: Client, side: Client, ids: list[int], timeout: float, progress: bool | None
) -> list[Task]:
    disable = not sys.stderr.isatty() if progress is None else not progress
    with tqdm(total=len(ids), desc="tasks done", unit="task", disable=disable) as bar:

        def update(done: int, _total: int) -> None:
            retrying = side.tasks(state=TaskState.RETRYING, limit=len(ids))
            bar.set_postfix(retrying=len(retrying), refresh=False)
            bar.update(done - bar.n)

        try:
            return client.wait(ids, timeout=timeout, on_progress=update)
        except WaitTimeout as exc:
            print(f"\n{exc}; the summary shows them as they are.")
            return client.get_many(ids)


def _summary(conn: psycopg.Connection[dict[str, Any]], tasks: list[Task]) -> int:
    rows = [
        (
            t.id,
            t.topic or "(default)",
            t.owner,
            t.state.value,
            t.attempts,
            None if t.run_time is None else duration(t.run_time.total_seconds()),
            t.sql_statement[:44],
        )
        for t in tasks
    ]
    print()
    print(render(("id", "topic", "as", "state", "tries", "run", "sql"), rows))
    failed = [t for t in tasks if t.state is not TaskState.FINISHED]
    print(f"\n{len(tasks) - len(failed)} finished, {len(failed)} did not:")
    for t in failed:
        attempts = ", ".join(
            f"#{e.attempt} {e.sqlstate} at {(e.at or '')[11:23]}" for e in t.error_history
        )
        print(f"  task {t.id} ({t.state}): {t.errors}  [attempts: {attempts}]")
    first: dict[str, datetime] = {}
    for t in tasks:
        if t.started_at is not None and t.retry_count == 0:
            key = t.topic or "(default)"
            first[key] = min(first.get(key, t.started_at), t.started_at)
    order = sorted(first, key=first.__getitem__)
    print("\nFirst start per topic (lower priority number first): " + " < ".join(order))
    who = conn.execute(
        "SELECT who, count(*) AS n FROM pgbq_demo_events GROUP BY who ORDER BY who"
    ).fetchall()
    print("Rows written as: " + ", ".join(f"{w['who']} ({w['n']})" for w in who))
    return 0


def _workflow(client: Client, timeout: float) -> None:
    """A DAG with a failure cascade, and a dedupe key."""
    print("\nA workflow (1.2): load -> (clean, enrich) -> report; enrich fails.")
    load = client.enqueue(_insert("dag", 0.1), topic="dag")
    clean = client.enqueue(_insert("dag"), topic="dag", after=[load])
    enrich = client.enqueue("SELECT 1 / 0 AS enrich", topic="dag", after=[load])
    report = client.enqueue(_insert("dag"), topic="dag", after=[clean, enrich])
    archive = client.enqueue(_insert("dag"), topic="dag", after=[report])
    first = client.enqueue("SELECT 'refresh'", topic="dag", dedupe_key="refresh", after=[load])
    again = client.enqueue("SELECT 'refresh'", topic="dag", dedupe_key="refresh", after=[load])
    print(f"A second refresh with the same dedupe key returned the queued one: {again == first}")
    names = {load: "load", clean: "clean", enrich: "enrich", report: "report", archive: "archive"}
    names[first] = "refresh"
    try:
        tasks = client.wait(list(names), timeout=timeout)
    except WaitTimeout as exc:
        print(f"{exc}; showing them as they are.")
        tasks = client.get_many(list(names))
    rows = [
        (names[t.id], ",".join(names.get(a, str(a)) for a in t.after) or None, t.state.value,
         (t.errors or "")[:60] or None)
        for t in tasks
    ]  # fmt: skip
    print(render(("step", "after", "state", "why"), rows))


def run(
    dsn: str | None = None,
    timeout: float = 120.0,
    progress: bool | None = None,
    web: tuple[str, int] | None = None,
) -> int:
    """Run the demo; returns a process exit code.

    With ``web`` (host, port), serve ``pgbq web`` on the demo's server afterwards, until
    interrupted (the throwaway cluster is removed then); it needs the ``[web]`` extra,
    which is checked before anything starts.
    """
    serve: Callable[..., None] | None = None
    if web is not None:  # fail before the demo if the [web] extra is missing
        from pg_background_queue import web as web_module

        serve = web_module.serve
    with (
        _server(dsn) as target,
        psycopg.connect(target, autocommit=True, row_factory=dict_row) as conn,
        Client(conn) as client,
        Client(target) as side,
    ):
        if dsn is not None:
            print("Using the server's pg_background_queue.topic_config for topic limits.")
        is_super = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        with_role = bool(is_super and is_super["rolsuper"])
        _setup(conn, with_role)
        ids = _enqueue_workload(conn, client, with_role)
        tasks = _wait(client, side, ids, timeout, progress)
        status = _summary(conn, tasks)
        _workflow(client, timeout)
        if serve is not None and web is not None:
            print("\nThe dashboard of this cluster, until Ctrl-C:", flush=True)
            serve(target, web[0], web[1])
        return status


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else None))
