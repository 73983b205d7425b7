"""Scheduling on a real cluster: concurrency limits (global and per topic),
rate limits, priority order, retries with 2^n backoff, timeouts, cancel,
and configuration reloads picked up by running workers."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core_helpers import (
    connect,
    enqueue,
    make_role,
    query,
    scalar,
    set_config,
    task,
    wait_tasks,
    worker_pids,
)
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until

TOPICS = {
    "one": {"max_parallel_running_tasks_count": 1},
    "two": {"max_parallel_running_tasks_count": 2},
    "spaced": {"delay_in_sec": 0.6},
    "flaky": {"retry_count": 2},
    "never": {"retry_count": 0},
    "slowpoke": {"timeout_in_sec": 1, "retry_count": 3},
    "urgent": {"priority": 1},
}


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 3,
            "pg_background_queue.topic_config": json.dumps(TOPICS),
            "pg_background_queue.worker_idle_timeout": "30s",
        }
    )
    # every task logs its start and end; overlaps are computed from this table
    query(n, "CREATE TABLE spans (tag text, started timestamptz, ended timestamptz)")
    query(n, "GRANT ALL ON spans TO PUBLIC")
    make_role(n, "alice")
    make_role(n, "bob")
    yield n
    destroy_node(n)


def span(tag: str, seconds: float) -> str:
    return (
        f"INSERT INTO public.spans SELECT '{tag}', clock_timestamp(), NULL; "
        f"SELECT pg_sleep({seconds}); "
        f"UPDATE public.spans SET ended = clock_timestamp() "
        f"WHERE tag = '{tag}' AND ended IS NULL"
    )


def max_overlap(node: Any, prefix: str) -> int:
    """Largest number of spans with this tag prefix that ran at one instant."""
    return int(
        scalar(
            node,
            """
        SELECT max(c) FROM (
            SELECT (SELECT count(*) FROM spans o
                     WHERE o.tag LIKE %(p)s AND o.started <= s.started
                       AND o.ended > s.started) AS c
              FROM spans s WHERE s.tag LIKE %(p)s) x""",
            {"p": prefix + "%"},
        )
    )


def test_global_limit_across_roles_and_pools(node: Any) -> None:
    ids = [enqueue(node, span(f"g{i}", 0.4), user=("alice" if i % 2 else "bob")) for i in range(9)]
    seen = 0

    def done() -> bool:
        nonlocal seen
        seen = max(
            seen,
            int(scalar(node, "SELECT count(*) FROM pg_background_tasks WHERE state = 'running'")),
        )
        assert seen <= 3
        return scalar(
            node,
            "SELECT count(*) FROM pg_background_tasks WHERE id = ANY(%s) AND state = 'finished'",
            (ids,),
        ) == len(ids)

    poll_until(done, timeout=60, interval=0.02, message="global limit test did not finish")
    assert max_overlap(node, "g") <= 3
    assert max_overlap(node, "g") >= 2, "tasks should run in parallel up to the limit"


@pytest.mark.parametrize(("topic", "limit"), [("one", 1), ("two", 2)])
def test_topic_limit_is_never_exceeded(node: Any, topic: str, limit: int) -> None:
    ids = [
        enqueue(node, span(f"{topic}-{i}", 0.3), topic, user=("alice" if i % 2 else "bob"))
        for i in range(6)
    ]
    rows = wait_tasks(node, ids, timeout=60)
    assert all(r["state"] == "finished" for r in rows)
    assert max_overlap(node, f"{topic}-") == limit


def test_delay_in_sec_spaces_starts_without_parking_workers(node: Any) -> None:
    spaced = [enqueue(node, span(f"sp{i}", 0), "spaced") for i in range(4)]
    fast = [enqueue(node, span(f"fast{i}", 0)) for i in range(6)]
    rows = wait_tasks(node, spaced + fast, timeout=60)
    assert all(r["state"] == "finished" for r in rows)
    # spacing of the starts, in the order they happened (two claims racing at the same
    # instant may take two tasks of a topic out of id order)
    starts = sorted(r["started_at"] for r in rows[:4])
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert all(g >= 0.6 - 0.005 for g in gaps), gaps
    # the default-topic tasks did not wait behind the rate-limited ones
    last_fast = max(r["closed_at"] for r in rows[4:])
    last_spaced = max(r["started_at"] for r in rows[:4])
    assert last_fast < last_spaced


def test_priority_then_eligible_time_then_id(node: Any) -> None:
    query(node, "CREATE TABLE ord (n int, seq serial)")
    # hold the single-slot topic busy so the queue builds up, then let it drain
    blocker = enqueue(node, "SELECT pg_sleep(1)", "one")
    poll_until(
        lambda: task(node, blocker)["state"] == "running",
        timeout=15,
        message="blocker did not start",
    )
    specs = [(5, "a"), (1, "b"), (3, "c"), (1, "d"), (5, "e"), (0, "f")]
    # one transaction: all six become visible together, whether or not the blocker is still
    # running by then (on a loaded machine six separate sessions can outlast it)
    with connect(node) as conn, conn.transaction():
        ids = [
            int(
                conn.execute(
                    "SELECT pg_background_enqueue(%s, 'one', %s) AS id",
                    (f"INSERT INTO ord (n) VALUES (ascii('{name}'))", prio),
                ).fetchone()["id"]
            )
            for prio, name in specs
        ]
    wait_tasks(node, [*ids, blocker], timeout=60)
    order = [chr(r["n"]) for r in query(node, "SELECT n FROM ord ORDER BY seq")]
    assert order == ["f", "b", "d", "c", "a", "e"]


def test_topic_priority_is_the_default(node: Any) -> None:
    t = enqueue(node, "SELECT 1", "urgent")
    assert task(node, t)["priority"] == 1
    u = enqueue(node, "SELECT 1", "urgent", 50)
    assert task(node, u)["priority"] == 50
    wait_tasks(node, [t, u])


def test_retries_wait_two_to_the_n_seconds(node: Any) -> None:
    t = enqueue(node, "SELECT 1/0", "flaky")
    row = wait_tasks(node, [t], timeout=30)[0]
    assert row["state"] == "failed"
    assert row["attempts"] == 3
    assert row["retry_count"] == 2
    hist = row["error_history"]
    assert [h["attempt"] for h in hist] == [1, 2, 3]
    assert {h["sqlstate"] for h in hist} == {"22012"}
    assert row["errors"] == "division by zero"
    at = [datetime.fromisoformat(h["at"]) for h in hist]
    assert (at[1] - at[0]) >= timedelta(seconds=2)
    assert (at[2] - at[1]) >= timedelta(seconds=4)


def test_retrying_state_and_delay_are_visible(node: Any) -> None:
    t = enqueue(node, "SELECT 1/0", "flaky")
    poll_until(
        lambda: task(node, t)["state"] == "retrying",
        timeout=15,
        message="task did not go to retrying",
    )
    row = task(node, t)
    assert row["retry_delay_in_sec"] == 2
    assert row["next_run_at"] > row["joined_at"]
    query(node, "SELECT pg_background_cancel(%s)", (t,))
    assert task(node, t)["state"] == "cancelled"


def test_no_retries_means_failed_at_once(node: Any) -> None:
    t = enqueue(node, "SELECT * FROM no_such_table", "never")
    row = wait_tasks(node, [t])[0]
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert row["error_history"][0]["sqlstate"] == "42P01"


def test_timeout_fails_the_attempt_with_57014(node: Any) -> None:
    set_config(node, topic_config={**TOPICS, "slowpoke": {"timeout_in_sec": 1, "retry_count": 0}})
    t = enqueue(node, "SELECT pg_sleep(30)", "slowpoke")
    row = wait_tasks(node, [t], timeout=15)[0]
    assert row["state"] == "failed"
    assert row["error_history"][0]["sqlstate"] == "57014"
    assert "timeout" in row["errors"]
    assert (row["closed_at"] - row["started_at"]).total_seconds() < 5
    set_config(node, topic_config=TOPICS)


def test_cancel_interrupts_a_running_task_and_never_retries(node: Any) -> None:
    t = enqueue(node, "SELECT pg_sleep(60)", "flaky", user="alice")
    poll_until(
        lambda: task(node, t)["state"] == "running", timeout=15, message="task did not start"
    )
    assert scalar(node, "SELECT pg_background_cancel(%s)", (t,), user="bob") is False
    assert scalar(node, "SELECT pg_background_cancel(%s)", (t,), user="alice") is True
    row = wait_tasks(node, [t], timeout=10)[0]
    assert row["state"] == "cancelled"
    assert row["attempts"] == 1
    assert row["error_history"][-1]["sqlstate"] == "57014"
    # the worker goes on with other work
    u = enqueue(node, "SELECT 1", user="alice")
    assert wait_tasks(node, [u])[0]["state"] == "finished"


def test_reload_is_picked_up_by_running_workers(node: Any) -> None:
    # a worker of alice exists (idle) from earlier tests; change the retry policy
    first = enqueue(node, "SELECT 1", "reloaded", user="alice")
    wait_tasks(node, [first])
    set_config(node, topic_config={**TOPICS, "reloaded": {"retry_count": 1}})
    t = enqueue(node, "SELECT 1/0", "reloaded", user="alice")
    row = wait_tasks(node, [t], timeout=20)[0]
    assert row["attempts"] == 2, "retry_count 1 from the reloaded config applies"
    set_config(node, topic_config=TOPICS)


def test_topics_view_merges_json_over_gucs(node: Any) -> None:
    rows = {r["topic"]: r for r in query(node, "SELECT * FROM pg_background_queue_topics")}
    assert rows["one"]["max_parallel_running_tasks_count"] == 1
    assert rows["one"]["configured"] is True
    assert rows["spaced"]["delay_in_sec"] == pytest.approx(0.6)
    assert rows["urgent"]["priority"] == 1
    assert rows[None]["max_parallel_running_tasks_count"] == 3
    assert rows[None]["priority"] == 100


def test_eviction_never_strands_a_role_under_the_cap() -> None:
    """Six roles competing for two worker slots, a burst at a time: the launcher evicts idle
    workers of other roles to make room, and must never evict a worker started for work it
    has not looked at yet (that work would stay pending with nobody to announce it)."""
    roles = [f"evict{i}" for i in range(6)]
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 2,
            "pg_background_queue.worker_idle_timeout": "60s",
        }
    )
    try:
        for role in roles:
            make_role(n, role)
        for _ in range(10):
            ids = [enqueue(n, "SELECT pg_sleep(0.05)", user=r) for r in roles + roles[::-1]]
            rows = wait_tasks(n, ids, timeout=20)
            assert {r["state"] for r in rows} == {"finished"}
    finally:
        destroy_node(n)


def enqueue_sleepers(node: Any, role: str, count: int, seconds: float) -> list[int]:
    """Enqueue ``count`` tasks sleeping ``seconds`` each as ``role``, in one call."""
    return [
        int(r["id"])
        for r in query(
            node,
            "SELECT pg_background_enqueue_many(array_fill(%s::text, ARRAY[%s])) AS id",
            (f"SELECT pg_sleep({seconds})", count),
            user=role,
        )
    ]


@pytest.mark.parametrize("before", [0, 2])
def test_raising_the_worker_limit_by_reload_starts_workers_for_queued_work(before: int) -> None:
    """max_parallel_running_tasks_count raised by reload while more work is queued than the
    old limit let run: the launcher starts workers up to the new limit at once, whether the
    role's workers were all busy (2 -> 4) or none could start (0 -> 4: work queued while the
    queue was stopped). Regressions: the work announced at enqueue was counted up to the old
    limit (at least one), so no worker was added until the queue drained - after 4 -> 8 the
    throughput stayed that of 4 workers (issue 15, `pgbq bench --regime reload`), and after
    0 -> 8 one worker ran the whole backlog (the bench's backlog regime, and any queue resumed
    by raising the limit)."""
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": before,
            "pg_background_queue.worker_idle_timeout": "600s",
        }
    )
    try:
        make_role(n, "grow")
        ids = enqueue_sleepers(n, "grow", 400, 0.05)
        if before:
            poll_until(lambda: len(worker_pids(n)) == before, timeout=30, message="busy workers")
        else:
            assert not worker_pids(n), "no worker may run while the limit is 0"
        set_config(n, max_parallel_running_tasks_count=4)
        poll_until(
            lambda: len(worker_pids(n)) == 4,
            timeout=30,
            message="no worker was added for the queued work after the limit was raised",
        )
        pending = scalar(
            n, "SELECT count(*) FROM pg_background_tasks WHERE state IN ('pending', 'retrying')"
        )
        assert pending > 0, "the workers must come while work is still queued, not after"
        rows = wait_tasks(n, ids, timeout=120)
        assert {r["state"] for r in rows} == {"finished"}
        assert {r["attempts"] for r in rows} == {1}
    finally:
        destroy_node(n)


def test_lowering_the_worker_limit_by_reload_retires_the_surplus_workers() -> None:
    """max_parallel_running_tasks_count lowered by reload while the queue is busy: the workers
    above the new limit leave at their next claim instead of being woken by every finish to
    claim in vain until their idle timeout (which is long here); the rest carry on and every
    task runs once. Regression: the surplus stayed, and throughput after 8 -> 4 fell to a
    fraction of a fresh start at 4 (issue 15, `pgbq bench --regime reload`)."""
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            "pg_background_queue.worker_idle_timeout": "600s",
        }
    )
    try:
        make_role(n, "shrink")
        ids = [enqueue(n, "SELECT pg_sleep(0.02)", user="shrink") for _ in range(10)]
        ids += enqueue_sleepers(n, "shrink", 600, 0.02)
        poll_until(lambda: len(worker_pids(n)) == 4, timeout=30, message="4 workers busy")
        set_config(n, max_parallel_running_tasks_count=2)
        poll_until(
            lambda: len(worker_pids(n)) <= 2,
            timeout=60,
            message="the 2 workers above the lowered limit never left",
        )
        pending = scalar(
            n, "SELECT count(*) FROM pg_background_tasks WHERE state IN ('pending', 'retrying')"
        )
        # the surplus announced the work it left, more than the limit lets run: the launcher
        # must not be woken by every task's end for that (it can do nothing about it)
        launcher = scalar(
            n,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue launcher'",
        )
        finished = "SELECT count(*) FROM pg_background_tasks WHERE state = 'finished'"
        done_before, wakes_before = scalar(n, finished), launcher_wakeups(launcher)
        rows = wait_tasks(n, ids, timeout=120)
        tasks_meanwhile = len(ids) - done_before
        wakes = launcher_wakeups(launcher) - wakes_before
        assert {r["state"] for r in rows} == {"finished"}
        assert {r["attempts"] for r in rows} == {1}
        assert pending > 0, "the surplus must leave while work is still queued, not after"
        assert tasks_meanwhile >= 200
        assert wakes < tasks_meanwhile / 10, (
            f"the launcher woke {wakes} times for {tasks_meanwhile} tasks"
        )
    finally:
        destroy_node(n)


def launcher_wakeups(pid: int) -> int:
    """How often the launcher process has slept and been woken (voluntary context switches)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches for the launcher ({pid})")
