"""A claim refused by a topic's limit must not lock the row it was refused: while the refused
claim's transaction lasts, every other claim skips that row (SKIP LOCKED) and takes the tasks
behind it, out of priority order (and a batch commits them without it).

To make "while the refused claim's transaction lasts" long enough to see, the refusing worker's
transaction is held at its commit: its task asks for a synchronous commit, and the standby it
would wait for does not exist (``synchronous_standby_names``) until the test removes it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from core_helpers import connect, install_signals, query, task, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.topic_config": json.dumps(
                {"one": {"max_parallel_running_tasks_count": 1}}
            ),
            "pg_background_queue.max_parallel_running_tasks_count": "2",
            "pg_background_queue.worker_idle_timeout": "120s",
            # commits wait for no standby unless a transaction asks for it
            "synchronous_standby_names": "nobody",
            "synchronous_commit": "local",
        }
    )
    query(n, "CREATE TABLE seen (tag text, at serial)")
    install_signals(n)
    yield n
    destroy_node(n)


def test_a_claim_refused_by_a_full_topic_leaves_the_row_to_the_next_claim(node: Any) -> None:
    first = "INSERT INTO public.seen (tag) VALUES ('first'); SELECT public.wait_for('first-go')"
    with connect(node) as conn:
        first_id = int(
            conn.execute("SELECT pg_background_enqueue(%s, 'one') AS id", (first,)).fetchone()["id"]
        )
    poll_until(
        lambda: task(node, first_id)["state"] == "running",
        timeout=30,
        message="the first task of the topic did not start",
    )
    # two more of the full topic, in order, then a task of the default topic whose commit
    # waits for the missing standby: the worker that runs it claims its next task in that
    # transaction, is refused the topic's next task, and commits no further
    with connect(node, autocommit=False) as conn:
        ordered = [
            int(
                conn.execute(
                    "SELECT pg_background_enqueue(%s, 'one') AS id",
                    (f"INSERT INTO public.seen (tag) VALUES ('{tag}')",),
                ).fetchone()["id"]
            )
            for tag in ("second", "third")
        ]
    with connect(node) as conn:
        held = int(
            conn.execute(
                "SELECT pg_background_enqueue("
                "'SELECT set_config(''synchronous_commit'', ''on'', true)') AS id"
            ).fetchone()["id"]
        )
    try:
        poll_until(
            lambda: query(
                node,
                "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep' "
                "AND backend_type = 'pg_background_queue worker'",
            ),
            timeout=30,
            message="the worker of the synchronous task did not wait at its commit",
        )
        query(node, "INSERT INTO signals VALUES ('first-go')")
        # the topic's worker goes on with its next tasks while the other commit waits
        poll_until(
            lambda: task(node, ordered[1])["state"] == "finished",
            timeout=30,
            message="the topic's last task did not run",
        )
    finally:
        query(node, "ALTER SYSTEM SET synchronous_standby_names = ''")
        query(node, "SELECT pg_reload_conf()")
    rows = wait_tasks(node, [first_id, *ordered, held])
    assert [r["state"] for r in rows] == ["finished"] * 4
    tags = [r["tag"] for r in query(node, "SELECT tag FROM seen ORDER BY at")]
    assert tags == ["first", "second", "third"], tags
