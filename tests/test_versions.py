"""Behaviour that differs between PostgreSQL releases, checked on the server under test.

The whole suite runs once per installation (scripts/test.sh --pg 15,16,18, PG_CONFIG picks
the server); these tests pin down what changed between releases and must keep working on all
of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from psycopg import sql

from core_helpers import connect, enqueue, scalar, wait_tasks, worker_pids
from pg_background_queue.testing.build import pg_config_value, server_version_num
from pg_background_queue.testing.cluster import poll_until, server_log

pytestmark = pytest.mark.pgbq_node(extra_conf={"pg_background_queue.worker_idle_timeout": 600})


def test_the_server_under_test_is_the_one_pg_config_names(node: Any) -> None:
    """The harness starts the installation PG_CONFIG names (the matrix tests what it says)."""
    assert int(scalar(node, "SHOW server_version_num")) // 100 == server_version_num() // 100
    assert scalar(node, "SHOW server_version").split()[0] in pg_config_value("--version")


def _topic_config(node: Any, topic: str) -> dict[str, Any]:
    rows = scalar(
        node, "SELECT row_to_json(c) FROM pg_background_queue_topic_config(%s) c", (topic,)
    )
    assert rows is not None
    return dict(rows)


def test_topic_config_survives_repeated_reloads(node: Any) -> None:
    """Regression (PostgreSQL 16+): the parsed topic_config was malloc'd, but from 16 on the GUC
    machinery frees a replaced "extra" with pfree: the second change of topic_config crashed
    every process that reloaded it ("pfree called with invalid pointer"), long-lived workers
    and sessions included."""
    postmaster_started = scalar(node, "SELECT pg_postmaster_start_time()")
    # a long-lived worker and a long-lived session, both of which reload the value themselves
    first = enqueue(node, "SELECT 1")
    wait_tasks(node, [first])
    workers_before = worker_pids(node)
    assert workers_before, "no idle worker kept to reload the configuration"
    with connect(node) as session:
        for priority in (1, 2, 3, 4, 5):
            value = {"hi": {"priority": priority, "retry_count": priority}, "lo": {}}
            with connect(node) as conn:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET pg_background_queue.topic_config = {}").format(
                        sql.Literal(json.dumps(value))
                    )
                )
                conn.execute("SELECT pg_reload_conf()")

            def applied(p: int = priority) -> bool:
                got = session.execute(
                    "SELECT priority FROM pg_background_queue_topic_config('hi')"
                ).fetchone()
                return got is not None and got["priority"] == p

            poll_until(applied, timeout=20, message=f"topic_config with priority {priority}")
            # a new backend (forked from the postmaster, which reloaded too) sees it
            assert _topic_config(node, "hi")["priority"] == priority
            # and a task of the topic, run by the long-lived worker, gets it
            done = wait_tasks(node, [enqueue(node, "SELECT 1", "hi")])
            assert done[0]["state"] == "finished"
            assert done[0]["priority"] == priority
        with connect(node) as conn:
            conn.execute("ALTER SYSTEM RESET pg_background_queue.topic_config")
            conn.execute("SELECT pg_reload_conf()")
        poll_until(
            lambda: (
                session.execute("SHOW pg_background_queue.topic_config").fetchone()
                == {"pg_background_queue.topic_config": ""}
            ),
            timeout=20,
            message="topic_config reset",
        )
    assert scalar(node, "SELECT pg_postmaster_start_time()") == postmaster_started
    log = server_log(node)
    assert "invalid pointer" not in log
    assert "terminated by signal" not in log
    assert set(workers_before) <= set(worker_pids(node)), "a worker died while reloading"
