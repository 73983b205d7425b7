"""Many roles share the workers (issue 14, section 3): a role cannot exhaust a shared-memory
table for the others."""

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
    t = int(scalar(node, "SELECT pg_background_enqueue('SELECT 2', 'victim_topic')", user="victim"))
    row = wait_tasks(node, [t], timeout=15)[0]
    assert row["state"] == "finished"
    print(f"hog started {hog_started} of {RATE_TABLE + 100} topics; victim ran at once")
