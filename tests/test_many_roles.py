"""Many roles share the workers (issue 14, section 3): hand-overs between roles stay cheap
(a worker start each, not one per task), a busy role yields a slot after its current task, and
a role cannot exhaust a shared-memory table for the others.

How close many roles come to the task-time ideal is a benchmark, not a test (it depends on the
machine): ``python -m pg_background_queue.bench.roles``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from core_helpers import make_role, query, scalar, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until

# src/pgbq.h: PGBQ_MAX_RATE_TOPICS, PGBQ_RATE_TOPICS_RESERVE
RATE_TABLE = 512
RESERVE = 128


@pytest.fixture
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            # every topic may start one task a minute
            "pg_background_queue.delay_in_sec": 60,
        }
    )
    yield n
    destroy_node(n)


def test_one_role_cannot_fill_the_rate_limit_table(node: Any) -> None:
    make_role(node, "hog")
    make_role(node, "victim")
    # more distinct rate-limited topics than the table has entries, all started at once
    query(
        node,
        "SELECT pg_background_enqueue('SELECT 1', 'hog_' || i) FROM generate_series(1, %s) i",
        (RATE_TABLE + 100,),
        user="hog",
    )
    finished = "SELECT count(*) FROM pg_background_tasks WHERE state = 'finished'"
    last = [-1, time.monotonic()]

    def settled() -> bool:
        n = scalar(node, finished)
        if n != last[0]:
            last[:] = [n, time.monotonic()]
        return n >= RATE_TABLE - RESERVE and time.monotonic() - last[1] > 2

    poll_until(settled, timeout=60, message="the hog's tasks did not settle")
    hog_started = scalar(node, finished)
    assert hog_started < RATE_TABLE + 100, "the hog was not held back at all"
    # another role's rate-limited topic still gets an entry: it starts at once
    t = int(
        scalar(
            node,
            "SELECT pg_background_enqueue('SELECT 2', 'victim_topic')",
            user="victim",
        )
    )
    row = wait_tasks(node, [t], timeout=15)[0]
    assert row["state"] == "finished"
    print(f"hog started {hog_started} of {RATE_TABLE + 100} topics; victim ran at once")


MANY_ROLES = 24
SLOTS = 4


@pytest.fixture
def pool_node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": SLOTS,
            "max_worker_processes": SLOTS + 8,
        }
    )
    # every task notes the worker process that ran it
    query(n, "CREATE TABLE public.ran_by (owner text, pid integer)")
    query(n, "GRANT INSERT ON public.ran_by TO PUBLIC")
    yield n
    destroy_node(n)


def test_many_roles_hand_over_with_one_start_each(pool_node: Any) -> None:
    """24 roles, each with a burst of short tasks, on 4 slots: every task runs once, every
    role is served, and the slots change hands about once per role. Before, a role took all
    four slots and the launcher evicted workers between tasks, in the middle of their next
    claim (the task given back, a new worker started): ~330 worker starts for 960 tasks."""
    per_role = 20
    roles = [f"many{i:02d}" for i in range(MANY_ROLES)]
    for role in roles:
        make_role(pool_node, role)
    body = (
        "INSERT INTO public.ran_by VALUES (current_user, pg_backend_pid()); SELECT pg_sleep(0.01)"
    )
    ids: list[int] = []
    for role in roles:
        ids += [
            int(r["id"])
            for r in query(
                pool_node,
                "SELECT pg_background_enqueue(%s) AS id FROM generate_series(1, %s)",
                (body, per_role),
                user=role,
            )
        ]
    rows = wait_tasks(pool_node, ids, timeout=120)
    assert {r["state"] for r in rows} == {"finished"}
    assert {r["attempts"] for r in rows} == {1}
    per_owner = {
        r["owner"]: r["n"]
        for r in query(pool_node, "SELECT owner, count(*) AS n FROM public.ran_by GROUP BY owner")
    }
    assert per_owner == dict.fromkeys(roles, per_role), "every role ran all its tasks once"
    starts = int(scalar(pool_node, "SELECT count(DISTINCT pid) FROM public.ran_by"))
    print(f"{MANY_ROLES} roles x {per_role} tasks on {SLOTS} slots: {starts} worker starts")
    # one start per role, plus extra workers for the last roles when slots are left over
    assert starts <= 2 * MANY_ROLES, f"{starts} worker starts for {MANY_ROLES} roles"


def test_busy_role_yields_a_slot_after_its_current_task(pool_node: Any) -> None:
    """A role whose stream of tasks holds every slot gives one up when another role's task
    arrives: the yielding worker finishes its current task, claims no next one, and the other
    role's task starts before the busy role starts more than a few tasks."""
    make_role(pool_node, "busy")
    make_role(pool_node, "late")
    busy = [
        int(r["id"])
        for r in query(
            pool_node,
            "SELECT pg_background_enqueue('SELECT pg_sleep(0.5)') AS id "
            "FROM generate_series(1, 40)",
            user="busy",
        )
    ]
    running = "SELECT count(*) FROM pg_background_tasks WHERE state = 'running'"
    poll_until(
        lambda: int(scalar(pool_node, running)) == SLOTS,
        timeout=30,
        message="the busy role did not take every slot",
    )
    late = int(scalar(pool_node, "SELECT pg_background_enqueue('SELECT 1')", user="late"))
    row = wait_tasks(pool_node, [late], timeout=60)[0]
    assert row["state"] == "finished"
    overtaken = int(
        scalar(
            pool_node,
            "SELECT count(*) FROM pg_background_tasks WHERE id = ANY(%s) "
            "AND started_at > %s AND started_at < %s",
            (busy, row["joined_at"], row["started_at"]),
        )
    )
    # about one more task per slot (the others go on while one finishes its task), with
    # room for a slow worker start on a loaded machine
    assert overtaken <= 2 * SLOTS, f"the busy role started {overtaken} tasks before the late one"
    query(
        pool_node,
        "SELECT pg_background_cancel(id) FROM unnest(%s::bigint[]) id",
        (busy,),
        user="busy",
    )


def test_more_busy_roles_than_slots_take_turns(pool_node: Any) -> None:
    """Five roles with a stream of work each on four slots: a role's only worker yields
    after it has served a while (PGBQ_YIELD_AFTER_MS, 1 s), so the fifth role starts long
    before any role has run all its tasks (it used to wait for one of them to finish)."""
    roles = [f"turn{i}" for i in range(SLOTS + 1)]
    ids: list[int] = []
    for role in roles:
        make_role(pool_node, role)
        ids += [
            int(r["id"])
            for r in query(
                pool_node,
                "SELECT pg_background_enqueue('SELECT pg_sleep(0.1)') AS id "
                "FROM generate_series(1, 30)",
                user=role,
            )
        ]
    rows = wait_tasks(pool_node, ids, timeout=120)
    assert {r["state"] for r in rows} == {"finished"}
    first_start = {role: min(r["started_at"] for r in rows if r["owner"] == role) for role in roles}
    done = {role: max(r["closed_at"] for r in rows if r["owner"] == role) for role in roles}
    first_done = min(done.values())
    late = [role for role in roles if first_start[role] >= first_done]
    assert not late, f"{late} started only after a role had run all its tasks"
