"""Faults on real clusters: a worker killed with SIGKILL, immediate and clean
shutdowns, a hot standby and its promotion, the launcher terminated, and
ensure_workers() called from a real pg_cron job."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from core_helpers import enqueue, query, scalar, set_config, task, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until

TOPICS = {
    "crashy": {"retry_count": 2},
    "held": {"max_parallel_running_tasks_count": 0},
    "once": {"retry_count": 0},
}

# Sleeps until the test creates table public.go, then finishes quickly; its
# INSERT commits only together with the task's finished mark.
LONG_TASK = (
    "INSERT INTO public.effects VALUES (1); "
    "SELECT pg_sleep(CASE WHEN to_regclass('public.go') IS NULL THEN 120 ELSE 0 END)"
)


@pytest.fixture
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.topic_config": json.dumps(TOPICS),
            "pg_background_queue.worker_idle_timeout": "30s",
            "restart_after_crash": "on",
        }
    )
    query(n, "CREATE TABLE effects (x int)")
    yield n
    destroy_node(n)


def survive(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Wrap a poll condition so that a restarting server counts as 'not yet'."""

    def wrapped() -> Any:
        try:
            return fn()
        except psycopg.OperationalError:
            return None

    return wrapped


def start_long_task(node: Any) -> tuple[int, int]:
    t = enqueue(node, LONG_TASK, "crashy")
    poll_until(
        lambda: task(node, t)["state"] == "running", timeout=20, message="task did not start"
    )
    pid = task(node, t)["worker_pid"]
    assert pid
    return t, int(pid)


def check_recovered_once(node: Any, t: int) -> dict[str, Any]:
    query(node, "CREATE TABLE IF NOT EXISTS go ()")
    row = poll_until(
        survive(lambda: (r := task(node, t))["state"] == "finished" and r),
        timeout=60,
        message="task did not finish after recovery",
    )
    assert row["attempts"] == 2, "the interrupted attempt is counted"
    assert row["error_history"][0]["sqlstate"] == "57P02"
    assert scalar(node, "SELECT count(*) FROM effects") == 1, "effects exactly once"
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks WHERE state = 'running'") == 0
    return row


def test_sigkill_of_a_worker_counts_the_attempt_and_retries(node: Any) -> None:
    t, pid = start_long_task(node)
    os.kill(pid, signal.SIGKILL)
    poll_until(
        survive(lambda: task(node, t)["state"] in ("retrying", "pending")),
        timeout=60,
        message="crashed task was not recovered",
    )
    check_recovered_once(node, t)


def test_immediate_shutdown_counts_the_attempt(node: Any) -> None:
    t, _ = start_long_task(node)
    node.stop(["-m", "immediate"])
    node.start()
    check_recovered_once(node, t)


def test_clean_shutdown_burns_no_attempt(node: Any) -> None:
    # Long tasks on four workers (each inserts its own value), and queued work behind a
    # held topic; a fast shutdown must interrupt them (pg_ctl gives up after 60 s, the
    # attempts would sleep 120 s) and give every one back without burning an attempt.
    long_ids = [
        enqueue(node, LONG_TASK.replace("VALUES (1)", f"VALUES ({i})"), "crashy") for i in range(4)
    ]
    held = [enqueue(node, "INSERT INTO effects VALUES (-1)", "held") for _ in range(3)]
    running = poll_until(
        lambda: (
            len(rows := [task(node, t) for t in long_ids]) == 4
            and all(r["state"] == "running" for r in rows)
            and rows
        ),
        timeout=20,
        message="four long tasks running",
    )
    assert len({r["worker_pid"] for r in running}) == 4, "one task per worker"
    before = {r["id"]: r["attempts"] for r in running}
    assert set(before.values()) == {1}
    query(node, "CREATE TABLE go ()")  # the sleeping attempts will not notice
    node.stop(["-m", "fast"])
    node.start()

    def all_finished() -> list[dict[str, Any]] | None:
        rows = [task(node, t) for t in long_ids]
        return rows if all(r["state"] == "finished" for r in rows) else None

    rows = poll_until(survive(all_finished), timeout=60, message="tasks ran after restart")
    for row in rows:
        # given back (attempts - 1), then the re-run counted: the same 1 as before the stop
        assert row["attempts"] == before[row["id"]]
        assert row["error_history"] == []
        assert row["retry_count"] == 0
    assert sorted(r["x"] for r in query(node, "SELECT x FROM effects")) == [0, 1, 2, 3]
    for t in held:  # queued work is still there, untouched
        assert (task(node, t)["state"], task(node, t)["attempts"]) == ("pending", 0)
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks WHERE state = 'running'") == 0


def test_task_terminating_its_own_worker_fails_instead_of_looping(node: Any) -> None:
    """pg_terminate_backend() of the task's own worker is not a shutdown: given back, the task
    would run again forever; its attempt fails and the worker carries on."""
    t = enqueue(node, "SELECT pg_terminate_backend(pg_backend_pid()); SELECT pg_sleep(10)", "once")
    (row,) = wait_tasks(node, [t], timeout=8)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert "terminated its own worker" in row["error_history"][0]["message"]
    after = enqueue(node, "SELECT 1")
    (done,) = wait_tasks(node, [after])
    assert done["state"] == "finished"


def test_launcher_comes_back_after_termination(node: Any) -> None:
    def launcher() -> int | None:
        return scalar(
            node,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue launcher'",
        )

    old = poll_until(launcher, timeout=10, message="no launcher")
    query(node, "SELECT pg_terminate_backend(%s)", (old,))
    new = poll_until(
        lambda: (p := launcher()) and p != old and p,
        timeout=20,
        message="launcher did not come back",
    )
    assert new != old
    t = enqueue(node, "SELECT 1")
    assert wait_tasks(node, [t])[0]["state"] == "finished"


def test_standby_runs_nothing_and_promotion_resumes_the_queue(node: Any) -> None:
    ids = [enqueue(node, f"INSERT INTO effects VALUES ({i})", "held") for i in range(5)]
    backup = node.backup()
    replica = backup.spawn_replica("standby").start()
    try:
        replica.catchup()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            enqueue(replica, "SELECT 1")
        assert (
            scalar(
                replica,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type LIKE 'pg_background_queue%%'",
            )
            == 0
        )
        assert (
            scalar(replica, "SELECT count(*) FROM pg_background_tasks WHERE state = 'pending'") == 5
        )
        node.stop(["-m", "immediate"])
        replica.promote()
        set_config(replica, topic_config={**TOPICS, "held": {}})
        rows = wait_tasks(replica, ids, timeout=60)
        assert all(r["state"] == "finished" for r in rows)
        assert scalar(replica, "SELECT count(*) FROM effects") == 5
        node.start()
    finally:
        destroy_node(replica)


@pytest.mark.pg_cron
def test_ensure_workers_from_a_real_pg_cron_job() -> None:
    n = make_node(cron=True)
    try:
        query(n, "CREATE TABLE hits (at timestamptz)")
        # pg_cron 1.4 (Debian 12) schedules at minute granularity at best
        query(
            n,
            "SELECT cron.schedule('pgbq-ensure', '* * * * *', "
            "'SELECT pg_background_queue_ensure_workers()')",
        )
        poll_until(
            lambda: (
                scalar(
                    n,
                    "SELECT count(*) FROM cron.job_run_details "
                    "WHERE command LIKE '%%ensure_workers%%' "
                    "AND status = 'succeeded'",
                )
                >= 1
            ),
            timeout=75,
            interval=0.5,
            message="pg_cron never ran ensure_workers successfully",
        )
        t = enqueue(n, "INSERT INTO hits VALUES (now())")
        assert wait_tasks(n, [t])[0]["state"] == "finished"
    finally:
        destroy_node(n)
