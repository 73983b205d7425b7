"""The claim floor (issue 15): a worker's claim starts where its role's last claim ended, so
that a long transaction (which keeps the dead index entries of claimed tasks) cannot slow it
down. These tests check that no task is ever passed over because of it: a task that becomes
claimable behind the floor (a higher priority, a delay that ends) is the next one claimed.

Every assertion is causal, never timed: a claim whose start time is after a task became
claimable and committed must take that task if it is the first in claim order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core_helpers import (
    connect,
    enqueue,
    enqueue_copies,
    query,
    scalar,
    task,
    wait_tasks,
    worker_node,
)
from pg_background_queue.testing.cluster import poll_until

#: Tasks of the background stream, and how long each runs (s).
STREAM = 12
STEP = 0.15


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    # one worker: claims happen one after another, in claim order
    yield from worker_node(1)


def stream(node: Any, tag: str, priority: int = 5) -> list[int]:
    """Enqueue STREAM short tasks of one priority; return their ids."""
    return [
        enqueue(node, f"SELECT pg_sleep({STEP}) /* {tag} {i} */", None, priority)
        for i in range(STREAM)
    ]


def started_after(node: Any, ids: list[int], instant: Any) -> list[int]:
    """Tasks among ids that were claimed after instant, in the order they were claimed."""
    rows = query(
        node,
        "SELECT id FROM pg_background_tasks WHERE id = ANY(%s) AND started_at > %s "
        "ORDER BY started_at, id",
        (ids, instant),
    )
    return [int(r["id"]) for r in rows]


def wait_started(node: Any, ids: list[int], count: int) -> None:
    """Wait until at least count of the tasks have started (the floor has moved past them)."""
    wait_tasks(node, ids[:count], states=("running", "finished"))


def blocks_read_once_workers_exit(node: Any, kind: str, name: str) -> int:
    """Blocks of a table or index (kind: "tables" or "indexes") read so far, counted once the
    workers are gone (a worker flushes its statistics at most once a second while it lives,
    and all of them when it exits)."""
    column, name_column = {
        "tables": ("heap_blks", "relname"),
        "indexes": ("idx_blks", "indexrelname"),
    }[kind]
    query(node, "SELECT pg_terminate_backend(pid) FROM pg_background_queue_workers")
    hits = poll_until(
        lambda: scalar(
            node,
            f"SELECT nullif({column}_hit + {column}_read, 0) FROM pg_statio_user_{kind} "
            f"WHERE {name_column} = %s AND NOT EXISTS "
            "(SELECT 1 FROM pg_background_queue_workers)",
            (name,),
        ),
        timeout=30,
        message="the workers' statistics",
    )
    return int(hits)


def test_claimable_trigger_installed(node: Any) -> None:
    """The trigger that lowers the floor is part of the extension (1.3)."""
    assert (
        scalar(
            node,
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'pg_background_tasks_claimable' "
            "AND tgrelid = 'pg_background_tasks'::regclass AND tgenabled = 'O'",
        )
        == 1
    )


def assert_claimed_next(node: Any, task: int, ids: list[int], instant: Any, when: str) -> None:
    """Once task and the stream ids have run: the first of them claimed after instant (when
    task became claimable, said as "when") is task."""
    wait_tasks(node, [task, *ids])
    order = started_after(node, [task, *ids], instant)
    assert order, f"no task was claimed after task {task} {when}"
    assert order[0] == task, f"claims after task {task} {when} took {order} (it was passed over)"


def test_higher_priority_behind_floor_runs_next(node: Any) -> None:
    """A task enqueued with a higher priority than the floor's (so behind it) runs next."""
    ids = stream(node, "prio")
    wait_started(node, ids, 3)
    urgent = enqueue(node, "SELECT 1 /* urgent */", None, 1)
    committed = scalar(node, "SELECT clock_timestamp()")
    assert_claimed_next(node, urgent, ids, committed, "committed")


def test_task_an_update_moves_behind_floor_runs_next(node: Any) -> None:
    """A task an UPDATE makes claimable behind the floor (a reschedule to a higher priority)
    runs next: the AFTER UPDATE trigger of 1.4, which has no WHEN clause, notes it in C."""
    ids = stream(node, "resched")
    wait_started(node, ids, 3)
    moved = enqueue(node, "SELECT 1 /* rescheduled */", None, 9)
    assert scalar(node, "SELECT pg_background_reschedule(%s, 1)", (moved,)) is True
    committed = scalar(node, "SELECT clock_timestamp()")
    assert_claimed_next(node, moved, ids, committed, "was rescheduled")


def test_delayed_task_behind_floor_runs_when_due(node: Any) -> None:
    """A task that was delayed when the floor moved past its key runs as soon as it is due."""
    delayed = int(
        scalar(
            node,
            "SELECT pg_background_enqueue('SELECT 2 /* delayed */', NULL, 1, "
            "clock_timestamp() + interval '0.8 s')",
        )
    )
    ids = stream(node, "delay")
    wait_tasks(node, [delayed, *ids])
    assert_claimed_next(node, delayed, ids, task_due(node, delayed), "was due")


def test_paused_task_among_same_key_rows_runs_next_when_resumed(node: Any) -> None:
    """Tasks enqueued in one transaction share priority and next_run_at, so their claim keys
    differ in the id alone, and a claim may skip the floor check when the slots list every id
    between the floor and the claimed row (pgbq_floor_span_settled). A task of a paused topic
    among them is in that id span but neither held nor started: the floor must stay at it,
    and it runs first once its topic is resumed."""
    assert scalar(node, "SELECT pg_background_queue_pause('floor_paused')") is True
    try:
        with connect(node) as conn, conn.transaction():
            ids = [
                int(
                    conn.execute(
                        "SELECT pg_background_enqueue(%s, %s, 5) AS id",
                        (sql, topic),
                    ).fetchone()["id"]  # type: ignore[index]
                )
                for sql, topic in [
                    *((f"SELECT pg_sleep({STEP}) /* span {i} */", None) for i in range(3)),
                    ("SELECT 4 /* paused */", "floor_paused"),
                    *((f"SELECT pg_sleep({STEP}) /* span {i} */", None) for i in range(3, STREAM)),
                ]
            ]
        paused = ids.pop(3)
        # the claims have passed the paused task's id
        wait_started(node, ids, 6)
        assert task(node, paused)["state"] == "pending"
    finally:
        assert scalar(node, "SELECT pg_background_queue_resume('floor_paused')") is True
    resumed = scalar(node, "SELECT clock_timestamp()")
    assert_claimed_next(node, paused, ids, resumed, "was resumed")


def task_due(node: Any, task_id: int) -> Any:
    """When a task became eligible."""
    return scalar(node, "SELECT next_run_at FROM pg_background_tasks WHERE id = %s", (task_id,))


def test_stale_floor_is_caught_by_a_front_scan(node: Any) -> None:
    """With the trigger disabled nothing lowers the floor: the periodic claim from the front
    still finds the task (later), so a missed lowering can delay a task, never lose it."""
    query(node, "ALTER TABLE pg_background_tasks DISABLE TRIGGER pg_background_tasks_claimable")
    try:
        ids = stream(node, "stale")
        wait_started(node, ids, 3)
        urgent = enqueue(node, "SELECT 3 /* urgent, unannounced */", None, 1)
        wait_tasks(node, [urgent, *ids])
    finally:
        query(node, "ALTER TABLE pg_background_tasks ENABLE TRIGGER pg_background_tasks_claimable")


def test_claims_read_a_bounded_part_of_the_claim_index_however_long_the_queue(node: Any) -> None:
    """Each claim reads a few pages of the claim index, not the role's whole queue.

    Regression: the floor check bounded its scan by "< the claimed row's key", a row comparison
    that a btree scan stops at only when its first column (priority) decides it (seen on 15);
    in a run of same-priority tasks every claim read the rest of the queue, so working through
    n tasks read O(n^2) index entries. Counted in index block reads per task
    (pg_statio, flushed when the workers exit), never timed."""
    tasks = 8000
    query(node, "SELECT pg_stat_reset()")
    ids = enqueue_copies(node, "SELECT 1", tasks, priority=7)
    wait_tasks(node, [ids[-1]], timeout=300)
    hits = blocks_read_once_workers_exit(node, "indexes", "pg_background_tasks_claim_idx")
    per_task = int(hits) / tasks
    # a claim and its floor check: a descent each (root + leaf), a page more at times; the
    # rest of the queue (30 leaf pages at the start) is not read again per claim
    assert per_task < 12, f"{per_task:.1f} claim index pages per task"


@pytest.fixture(scope="module")
def batch_node() -> Iterator[Any]:
    # eight workers, each holding up to 64 claimed rows locked in its batch's transaction
    yield from worker_node(
        8, **{"pg_background_queue.topic_config": '{"batched": {"tasks_per_commit": 64}}'}
    )


def test_claims_do_not_walk_the_rows_other_batches_hold(batch_node: Any) -> None:
    """A claim passes over the rows that other workers' open batches have claimed without
    reading each of them again.

    Regression: the floor stayed behind every row locked by a claim in flight, so with eight
    workers in batches of 64 each claim read up to 7 x 64 locked rows (a heap visit and a
    tuple lock attempt each) before finding a free one: batches ran at half the speed of
    single commits. Now a worker lists the rows its claims hold and lowers the floor to any
    it lets go (claim_floor.c). Counted in task-table heap blocks read per task, never
    timed."""
    tasks = 6000
    query(batch_node, "SELECT pg_stat_reset()")
    ids = enqueue_copies(batch_node, "SELECT 1", tasks, "batched")
    wait_tasks(batch_node, [ids[0], ids[-1]], timeout=300)
    assert (
        scalar(batch_node, "SELECT count(*) FROM pg_background_tasks WHERE state <> 'finished'")
        == 0
    )
    per_task = blocks_read_once_workers_exit(batch_node, "tables", "pg_background_tasks") / tasks
    print(f"{per_task:.1f} task-table heap blocks per task")
    # the enqueue, the claim, its check, the running and finished marks, the claims from the
    # front once a second: about 22 blocks per task (before: about 180)
    assert per_task < 60, f"{per_task:.1f} task-table heap blocks per task"
