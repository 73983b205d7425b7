"""Test harness for pg_background_queue: build, throwaway clusters, pg_regress, pytest fixtures.

Everything that starts a server (``make_node``, ``run_pg_regress``, ``make_installcheck``)
must run as an unprivileged OS user (PostgreSQL refuses to run as root); only
``build_and_install`` needs root, for ``make install``.
"""

from pg_background_queue.testing.build import (
    build_and_install,
    extension_installed,
    pg_config_path,
    pg_config_value,
    pg_cron_installed,
    pg_isolation_regress_path,
    pg_regress_path,
    repo_root,
    server_version_num,
)
from pg_background_queue.testing.cluster import (
    PollTimeout,
    conninfo,
    make_node,
    poll_until,
    psql,
    query,
    server_log,
)
from pg_background_queue.testing.regress import make_installcheck, run_pg_regress

__all__ = [
    "PollTimeout",
    "build_and_install",
    "conninfo",
    "extension_installed",
    "make_installcheck",
    "make_node",
    "pg_config_path",
    "pg_config_value",
    "pg_cron_installed",
    "pg_isolation_regress_path",
    "pg_regress_path",
    "poll_until",
    "psql",
    "query",
    "repo_root",
    "run_pg_regress",
    "server_log",
    "server_version_num",
]
