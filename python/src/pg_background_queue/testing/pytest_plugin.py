"""pytest fixtures for clusters running pg_background_queue.

Enable with ``pytest_plugins = ["pg_background_queue.testing.pytest_plugin"]`` in a conftest.

* ``node``: one started node per test module, extension created in ``postgres``. A module
  chooses its settings with ``pytestmark = pytest.mark.pgbq_node(**make_node_kwargs)``.
* ``make_cluster``: factory ``make_cluster(name=None, **make_node_kwargs) -> node`` for
  tests that need their own nodes (restarts, crashes, standbys); all removed afterwards.
* ``conninfo``: psycopg 3 connection string of ``postgres`` on ``node``.
* ``@pytest.mark.pg_cron``: the test needs pg_cron; it is skipped, with the reason, where
  pg_cron is not installed for the server under test (``PG_CONFIG`` picks the server).
* ``@pytest.mark.pg_min_version(160000)``: skipped on older servers.

The header of the run names the server under test.

When a test fails, the tail of the server log of the nodes it used is printed at teardown
(pytest shows it under "Captured stdout teardown").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pg_background_queue.testing.build import (
    extension_installed,
    pg_config_path,
    pg_config_value,
    pg_cron_installed,
    server_version_num,
)
from pg_background_queue.testing.cluster import conninfo as _conninfo
from pg_background_queue.testing.cluster import destroy_node, make_node, server_log

MARKER = "pgbq_node"
LOG_TAIL_LINES = 60

MakeCluster = Callable[..., Any]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``pgbq_node``, ``pg_cron``, ``pg_min_version`` and ``version_independent``
    markers."""
    config.addinivalue_line(
        "markers", f"{MARKER}(**kwargs): make_node() arguments for the module's `node` fixture"
    )
    config.addinivalue_line(
        "markers", "pg_cron: needs pg_cron installed for the server under test (else skipped)"
    )
    config.addinivalue_line(
        "markers", "pg_min_version(num): needs server_version_num >= num (else skipped)"
    )
    config.addinivalue_line(
        "markers",
        "version_independent: tests the Python package rather than the server (packaging, "
        "dashboard, benchmark tool); skipped when PGBQ_VERSION_INDEPENDENT_DONE names the "
        "server that already ran them in this matrix run",
    )


def pytest_report_header(config: pytest.Config) -> str:
    """Name the PostgreSQL installation the run tests."""
    return (
        f"pg_background_queue: {pg_config_value('--version')} "
        f"(PG_CONFIG={pg_config_path()}), pg_cron "
        f"{'installed' if pg_cron_installed() else 'not installed'}"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip tests whose server requirements the installation under test does not meet."""
    if item.get_closest_marker("pg_cron") and not pg_cron_installed():
        pytest.skip(
            f"pg_cron is not installed for {pg_config_value('--version')} "
            f"({pg_config_path()}); here only Debian's PostgreSQL 15 packages it"
        )
    marker = item.get_closest_marker("pg_min_version")
    if marker and server_version_num() < int(marker.args[0]):
        pytest.skip(f"needs PostgreSQL >= {marker.args[0]}, testing {server_version_num()}")
    done = os.environ.get("PGBQ_VERSION_INDEPENDENT_DONE")
    if done and item.get_closest_marker("version_independent"):
        pytest.skip(f"tests the Python package, not the server: ran with {done} in this run")


def _check_can_make(kwargs: dict[str, Any]) -> None:
    if os.geteuid() == 0:
        pytest.fail(
            "PostgreSQL refuses to run as root: run the tests as an unprivileged user, e.g. "
            "runuser -u postgres -- /opt/pg_background_queue/venv/bin/pytest tests/",
            pytrace=False,
        )
    if kwargs.get("preload", True) and not extension_installed(kwargs.get("pg_config")):
        pytest.fail(
            "pg_background_queue is not installed for this PostgreSQL: run scripts/bootstrap.sh",
            pytrace=False,
        )


def _print_log_tail(node: Any) -> None:
    try:
        lines = server_log(node).splitlines()[-LOG_TAIL_LINES:]
    except OSError as exc:
        print(f"(no server log for {node.name}: {exc})")
        return
    print(f"----- last {len(lines)} lines of the server log of {node.name} -----")
    print("\n".join(lines))


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A started node with pg_background_queue preloaded and created, shared by the module."""
    marker = request.node.get_closest_marker(MARKER)
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    _check_can_make(kwargs)
    made = make_node(**kwargs)
    failed_before = request.session.testsfailed
    yield made
    if request.session.testsfailed > failed_before:
        _print_log_tail(made)
    destroy_node(made)


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest) -> Iterator[MakeCluster]:
    """Factory of extra nodes (``make_node`` arguments); every node is removed at teardown."""
    made: list[Any] = []
    failed_before = request.session.testsfailed

    def factory(name: str | None = None, **kwargs: Any) -> Any:
        _check_can_make(kwargs)
        new = make_node(name, **kwargs)
        made.append(new)
        return new

    yield factory
    failed = request.session.testsfailed > failed_before
    errors: list[BaseException] = []
    for each in reversed(made):
        if failed:
            _print_log_tail(each)
        try:
            destroy_node(each)
        except Exception as exc:  # keep removing the others
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def conninfo(node: Any) -> str:
    """psycopg 3 connection string of the ``postgres`` database on ``node``."""
    return _conninfo(node)
