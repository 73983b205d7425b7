"""``pgbq demo``: a short tour of the queue on a throwaway cluster (or an existing server).

It configures topics with different limits and priorities, enqueues a mixed workload (inserts
in several topics, tasks of a second role, tasks that fail and retry with 2^n backoff, a
VACUUM), shows progress, and ends with a summary of what ran, as whom, how long, and what
failed and why.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from tqdm import tqdm

TOPICS: dict[str, dict[str, float]] = {
    "critical": {"priority": 1, "max_parallel_running_tasks_count": 2},
    "reports": {"priority": 50, "max_parallel_running_tasks_count": 2, "delay_in_sec": 0.2},
    "flaky": {"retry_count": 2},
    "maintenance": {"max_parallel_running_tasks_count": 1, "timeout_in_sec": 60},
}
DEMO_ROLE = "pgbq_demo_user"


@contextmanager
def _server(dsn: str | None) -> Iterator[tuple[str, str | None]]:
    """Yield (superuser conninfo, conninfo template for the demo role) of the target server."""
    if dsn is not None:
        yield dsn, None
        return
    from pg_background_queue.testing.cluster import conninfo, destroy_node, make_node

    print("Creating a throwaway cluster with pg_background_queue preloaded ...", flush=True)
    node = make_node(
        extra_conf={
            "pg_background_queue.topic_config": json.dumps(TOPICS),
            "pg_background_queue.max_parallel_running_tasks_count": 4,
        }
    )
    try:
        yield conninfo(node), conninfo(node, user=DEMO_ROLE)
    finally:
        destroy_node(node)


def _setup(conn: psycopg.Connection[dict[str, Any]], with_role: bool) -> None:
    conn.execute("DROP TABLE IF EXISTS pgbq_demo_events")
    conn.execute(
        "CREATE TABLE pgbq_demo_events (topic text, who text, at timestamptz "
        "DEFAULT clock_timestamp())"
    )
    if with_role:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(DEMO_ROLE)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(DEMO_ROLE)))
        conn.execute("SELECT pg_background_queue_grant_usage(%s)", (DEMO_ROLE,))
        conn.execute(
            sql.SQL("GRANT INSERT ON pgbq_demo_events TO {}").format(sql.Identifier(DEMO_ROLE))
        )


def _insert(topic: str, seconds: float = 0.0) -> str:
    sleep = f"SELECT pg_sleep({seconds}); " if seconds else ""
    return f"{sleep}INSERT INTO pgbq_demo_events (topic, who) VALUES ('{topic}', current_user)"


def _enqueue_workload(conn: psycopg.Connection[dict[str, Any]], role_dsn: str | None) -> list[int]:
    ids: list[int] = []
    with conn.transaction():
        for topic, n, secs in (("reports", 6, 0.3), ("critical", 3, 0.1), (None, 4, 0.05)):
            cur = conn.execute(
                "SELECT pg_background_enqueue_many(%s, %s) AS id",
                ([_insert(topic or "default", secs)] * n, topic),
            )
            ids += [r["id"] for r in cur.fetchall()]
        for bad in ("SELECT 1/0", "SELECT * FROM no_such_table"):
            cur = conn.execute("SELECT pg_background_enqueue(%s, 'flaky') AS id", (bad,))
            ids += [r["id"] for r in cur.fetchall()]
        cur = conn.execute(
            "SELECT pg_background_enqueue('VACUUM (ANALYZE) pgbq_demo_events', 'maintenance') AS id"
        )
        ids += [r["id"] for r in cur.fetchall()]
    if role_dsn is not None:
        with psycopg.connect(role_dsn, autocommit=True, row_factory=dict_row) as other:
            cur = other.execute(
                "SELECT pg_background_enqueue_many(%s, 'critical') AS id",
                ([_insert("critical")] * 2,),
            )
            ids += [r["id"] for r in cur.fetchall()]
    print(f"Enqueued {len(ids)} tasks.")
    try:
        conn.execute("SELECT pg_background_enqueue('SELEC 1')")
    except psycopg.Error as exc:
        print(f"A bad task is refused at enqueue: {exc.sqlstate} {exc.diag.message_primary}")
    return ids


def _wait(conn: psycopg.Connection[dict[str, Any]], ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with tqdm(total=len(ids), desc="tasks done", unit="task") as bar:
        done = 0
        while done < len(ids) and time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state IN ('finished', 'failed', "
                "'cancelled')) AS done, count(*) FILTER (WHERE state = "
                "'retrying') AS retrying FROM pg_background_tasks "
                "WHERE id = ANY(%s)",
                (ids,),
            ).fetchone()
            assert row is not None
            bar.set_postfix(retrying=row["retrying"])
            bar.update(row["done"] - done)
            done = row["done"]
            time.sleep(0.2)


def _summary(conn: psycopg.Connection[dict[str, Any]], ids: list[int]) -> int:
    rows = conn.execute(
        "SELECT id, coalesce(topic, '(default)') AS topic, owner::text AS owner, state, "
        "attempts, round(extract(epoch FROM closed_at - started_at)::numeric, 2) AS secs, "
        "left(sql_statement, 40) AS sql, errors FROM pg_background_tasks "
        "WHERE id = ANY(%s) ORDER BY id",
        (ids,),
    ).fetchall()
    print(f"\n{'id':>4}  {'topic':<12} {'as':<15} {'state':<9} {'tries':>5} {'secs':>5}  sql")
    for r in rows:
        print(
            f"{r['id']:>4}  {r['topic']:<12} {r['owner']:<15} {r['state']:<9} "
            f"{r['attempts']:>5} {r['secs'] or 0:>5}  {r['sql']}"
        )
    failed = [r for r in rows if r["state"] != "finished"]
    print(f"\n{len(rows) - len(failed)} finished, {len(failed)} did not:")
    for r in failed:
        hist = conn.execute(
            "SELECT error_history FROM pg_background_tasks WHERE id = %s", (r["id"],)
        ).fetchone()
        attempts = ", ".join(
            f"#{h['attempt']} {h['sqlstate']}" for h in (hist or {}).get("error_history", [])
        )
        print(f"  task {r['id']} ({r['state']}): {r['errors']}  [attempts: {attempts}]")
    order = conn.execute(
        "SELECT topic, count(*) AS n, min(at) AS first FROM pgbq_demo_events "
        "GROUP BY topic ORDER BY min(at)"
    ).fetchall()
    print(
        "\nFirst effect per topic (priorities at work): "
        + ", ".join(f"{o['topic']} ({o['n']} rows)" for o in order)
    )
    who = conn.execute(
        "SELECT who, count(*) AS n FROM pgbq_demo_events GROUP BY who ORDER BY who"
    ).fetchall()
    print("Rows written as: " + ", ".join(f"{w['who']} ({w['n']})" for w in who))
    return 0


def run(dsn: str | None = None, timeout: float = 60.0) -> int:
    """Run the demo; returns a process exit code."""
    with (
        _server(dsn) as (superuser_dsn, role_dsn),
        psycopg.connect(superuser_dsn, autocommit=True, row_factory=dict_row) as conn,
    ):
        is_super = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        with_role = bool(is_super and is_super["rolsuper"]) and role_dsn is not None
        _setup(conn, with_role)
        ids = _enqueue_workload(conn, role_dsn if with_role else None)
        _wait(conn, ids, timeout)
        return _summary(conn, ids)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else None))
