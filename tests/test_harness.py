"""Smoke test of the harness: a node comes up with the extension preloaded and created."""

from typing import Any

import psycopg

from pg_background_queue.testing import poll_until, psql, query
from pg_background_queue.testing.pytest_plugin import MakeCluster


def test_node_preloads_and_creates_extension(node: Any, conninfo: str) -> None:
    libraries = psql(node, "SHOW shared_preload_libraries").strip()
    assert "pg_background_queue" in [lib.strip() for lib in libraries.split(",")]
    assert query(
        node,
        "SELECT extversion = default_version FROM pg_extension, pg_available_extensions "
        "WHERE extname = %s AND name = extname",
        ["pg_background_queue"],
    ) == [(True,)]
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM pg_background_tasks").fetchone() == (0,)


def test_make_cluster_without_preload(make_cluster: MakeCluster) -> None:
    plain = make_cluster(preload=False)
    assert psql(plain, "SHOW shared_preload_libraries").strip() == ""
    assert poll_until(lambda: query(plain, "SELECT 1"), timeout=10) == [(1,)]
