"""What the workers do reaches PostgreSQL's cumulative statistics while they live.

A backend's table, database, WAL and I/O counters stay in its own memory until it
flushes them (pgstat_report_stat; a client backend does it when it goes idle). Autovacuum
decides from those counters when a table needs vacuuming, so a worker that kept them until
it exits would hide every row its tasks updated or deleted, and the queue's own updates,
for as long as it is busy: the tables would bloat without autovacuum ever looking. These
tests hold a worker alive (a long idle timeout, its pid checked) and watch the counters
come, both while it is busy and once it has gone idle.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core_helpers import enqueue_copies, query, scalar, wait_tasks, worker_node, worker_pids
from pg_background_queue.testing.cluster import poll_until


@pytest.fixture
def node() -> Iterator[Any]:
    # one worker that stays; nothing but the workers touches the counters under test
    for n in worker_node(1, "300s", autovacuum="off"):
        query(n, "CREATE TABLE counted (id int PRIMARY KEY, n int NOT NULL)")
        query(n, "INSERT INTO counted VALUES (1, 0)")
        # the insert's own counters are flushed when this session ends
        poll_until(
            lambda node=n: (
                scalar(node, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'counted'")
                == 1
            ),
            timeout=30,
            message="the setup's insert is not counted",
        )
        yield n


def counters(node: Any) -> dict[str, int]:
    """The counters autovacuum reads for the task's table and the queue's."""
    rows = query(
        node,
        "SELECT relname, n_tup_upd, n_dead_tup FROM pg_stat_user_tables "
        "WHERE relname IN ('counted', 'pg_background_tasks')",
    )
    out: dict[str, int] = {}
    for r in rows:
        out[f"{r['relname']}.n_tup_upd"] = int(r["n_tup_upd"])
        out[f"{r['relname']}.n_dead_tup"] = int(r["n_dead_tup"])
    return out


def test_counters_arrive_once_the_worker_is_idle(node: Any) -> None:
    ids = enqueue_copies(node, "UPDATE counted SET n = n + 1 WHERE id = 1", 200)
    rows = wait_tasks(node, ids, timeout=60)
    assert {r["state"] for r in rows} == {"finished"}
    (pid,) = worker_pids(node)

    def arrived() -> dict[str, int] | None:
        c = counters(node)
        return c if c.get("counted.n_tup_upd", 0) >= 200 else None

    got = poll_until(arrived, timeout=30, message="the tasks' updates are not counted")
    # the same worker, still there: the counters came without it exiting
    assert worker_pids(node) == [pid]
    assert got["counted.n_tup_upd"] == 200
    assert got["counted.n_dead_tup"] >= 1
    # each task is claimed, marked running and marked finished: queue rows updated too
    assert got["pg_background_tasks.n_tup_upd"] >= 200
    assert got["pg_background_tasks.n_dead_tup"] >= 1


def test_counters_arrive_while_the_worker_is_busy(node: Any) -> None:
    """Several seconds of back-to-back tasks: the counters must come while tasks are still
    queued (PostgreSQL flushes a backend's counters at most once a second)."""
    ids = enqueue_copies(
        node, "UPDATE counted SET n = n + 1 WHERE id = 1; SELECT pg_sleep(0.02)", 400
    )

    def arrived() -> tuple[int, int] | None:
        updated = scalar(
            node, "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'counted'"
        )
        if not updated:
            return None
        left = scalar(
            node,
            "SELECT count(*) FROM pg_background_tasks "
            "WHERE id = ANY(%s) AND state NOT IN ('finished', 'failed', 'cancelled')",
            (ids,),
        )
        return int(updated), int(left)

    updated, left = poll_until(arrived, timeout=60, message="no update counted")
    assert left > 0, f"the counters came only once all {len(ids)} tasks had run"
    assert 0 < updated < len(ids)
    wait_tasks(node, ids, timeout=120)
