"""Throwaway PostgreSQL clusters (testgres nodes) with pg_background_queue preloaded.

Must run as an unprivileged OS user: PostgreSQL refuses to start as root.

testgres keeps its nodes and its port locks (``<tmp>/testgres/ports``) under
``tempfile.gettempdir()``. A lock directory made by another OS user (typically root) makes
every port reservation fail, so unless ``TMPDIR`` is set, :func:`configure_testgres` points
testgres at a private per-user directory, ``/tmp/pgbq-testgres-<uid>``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pg_background_queue._poll import PollTimeout, poll_until
from pg_background_queue.testing.build import EXTENSION, bindir, pg_config_path

try:
    import testgres
except ImportError as exc:  # the base package does not install the harness's dependencies
    raise ImportError(
        "pg_background_queue.testing needs testgres, which the base package does not "
        "install: pip install 'pg-background-queue[testing]' (the [test] and [bench] extras "
        "include it)"
    ) from exc

__all__ = [
    "BASE_CONF",
    "PollTimeout",
    "PsqlError",
    "conf_line",
    "configure_testgres",
    "conninfo",
    "destroy_node",
    "make_node",
    "poll_until",
    "psql",
    "query",
    "server_log",
]


ConfValue = str | int | float | bool | Mapping[str, Any] | Sequence[Any]

#: Settings every test node gets (``extra_conf`` is appended after them and wins).
BASE_CONF: dict[str, ConfValue] = {
    "max_worker_processes": 16,
    "fsync": False,
    "log_statement": "none",
    "log_line_prefix": "%m [%p] %b %q%u@%d ",
    "log_min_messages": "warning",
    "log_min_error_statement": "error",
    "lc_messages": "C",
    "timezone": "UTC",
}

_configured = False


def configure_testgres() -> None:
    """Point testgres at a per-user temp directory and at our pg_config (idempotent)."""
    global _configured
    if _configured:
        return
    os.environ.setdefault("PG_CONFIG", pg_config_path())
    if not os.environ.get("TMPDIR"):
        path = Path(tempfile.gettempdir()) / f"pgbq-testgres-{os.geteuid()}"
        path.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_uid != os.geteuid():
            raise PermissionError(f"{path} belongs to another user; set TMPDIR")
        testgres.testgres_config.temp_dir = str(path)
    _configured = True


def conf_line(name: str, value: ConfValue) -> str:
    """Render one ``postgresql.conf`` line; mappings and lists become JSON strings."""
    if isinstance(value, bool):
        rendered = "on" if value else "off"
    elif isinstance(value, int | float):
        rendered = str(value)
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        rendered = "'" + text.replace("'", "''") + "'"
    return f"{name} = {rendered}"


def make_node(
    name: str | None = None,
    *,
    extra_conf: Mapping[str, ConfValue] | str | None = None,
    preload: bool = True,
    cron: bool = False,
    port: int | None = None,
    create_extension: bool | None = None,
    dbname: str = "postgres",
    pg_config: str | None = None,
    initdb_extra: Sequence[str] = (),
    start: bool = True,
) -> Any:
    """Create, configure and start a testgres node; return it (a ``testgres.PostgresNode``).

    ``preload`` puts pg_background_queue in ``shared_preload_libraries`` (and ``cron`` adds
    pg_cron, running its jobs in ``dbname``, which is created if it is not ``postgres``;
    pg_cron connects through the node's Unix socket). ``create_extension`` (default: ``preload``)
    runs ``CREATE EXTENSION`` in ``dbname`` (pg_cron's too when ``cron``). ``extra_conf`` is
    appended last: a mapping of settings or raw ``postgresql.conf`` text. ``pg_config``
    picks the PostgreSQL installation (default: ``$PG_CONFIG``, see ``pg_config_path``);
    ``initdb_extra`` adds initdb options (e.g. ``--no-data-checksums``, which 18 needs to
    match an older cluster); ``start=False`` leaves the node initialised and configured
    but stopped (nothing is created in it), e.g. as a ``pg_upgrade`` target.

    The caller owns the node: stop and remove it with :func:`destroy_node` (or use it as a
    context manager). On any failure here the node is removed before the error propagates.
    """
    configure_testgres()
    node = testgres.get_new_node(name, port=port, bin_dir=str(bindir(pg_config)))
    try:
        node.init(
            initdb_params=["--encoding=UTF8", "--locale=C", *initdb_extra], log_statement="none"
        )
        socket_dir = str(node.base_dir)
        conf: dict[str, ConfValue] = {**BASE_CONF, "unix_socket_directories": socket_dir}
        libraries = ([EXTENSION] if preload else []) + (["pg_cron"] if cron else [])
        if libraries:
            conf["shared_preload_libraries"] = ",".join(libraries)
        if cron:
            conf["cron.database_name"] = dbname
            conf["cron.host"] = socket_dir
        lines = [conf_line(k, v) for k, v in conf.items()]
        if isinstance(extra_conf, str):
            lines.append(extra_conf)
        elif extra_conf:
            lines.extend(conf_line(k, v) for k, v in extra_conf.items())
        node.append_conf("\n".join(lines))
        if not start:
            return node
        node.start()
        if dbname not in ("postgres", "template1"):
            psql(node, 'CREATE DATABASE "{}"'.format(dbname.replace('"', '""')))
        if create_extension if create_extension is not None else preload:
            statements = [f"CREATE EXTENSION {EXTENSION};"]
            if cron:
                statements.append("CREATE EXTENSION pg_cron;")
            psql(node, "\n".join(statements), dbname=dbname)
    except BaseException:
        destroy_node(node)
        raise
    return node


def destroy_node(node: Any) -> None:
    """Stop the node (``pg_ctl stop``, fast mode), delete its files and release its port."""
    try:
        node.cleanup()
    finally:
        release = getattr(node, "release_resources", None) or getattr(node, "free_port", None)
        if release is not None:
            release()


def conninfo(node: Any, dbname: str = "postgres", user: str | None = None) -> str:
    """libpq connection string (for psycopg 3) of ``dbname`` on ``node`` over TCP."""
    params: dict[str, Any] = {"host": node.host, "port": node.port, "dbname": dbname}
    if user is not None:
        params["user"] = user
    return make_conninfo("", **params)


class PsqlError(RuntimeError):
    """psql exited with an error; ``stderr`` holds its messages."""

    def __init__(self, returncode: int, stderr: str) -> None:
        super().__init__(f"psql failed (exit {returncode}): {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def psql(
    node: Any,
    sql: str,
    *,
    dbname: str = "postgres",
    user: str | None = None,
    check: bool = True,
) -> str:
    """Run a script through ``psql -X -A -t -q`` with ``ON_ERROR_STOP``; return its stdout.

    The script is read from stdin, so it behaves like a file (one transaction per statement,
    meta-commands allowed). Raises :class:`PsqlError` on failure unless ``check`` is false.
    """
    argv = [
        str(Path(node.bin_dir) / "psql"),
        "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
        "-h", str(node.host), "-p", str(node.port), "-d", dbname,
    ]  # fmt: skip
    if user is not None:
        argv += ["-U", user]
    result = subprocess.run(argv, input=sql, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise PsqlError(result.returncode, result.stderr)
    return result.stdout


def query(
    node: Any,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    dbname: str = "postgres",
    user: str | None = None,
) -> list[tuple[Any, ...]]:
    """Run one statement with psycopg 3 in autocommit mode; return its rows (``[]`` if none)."""
    with psycopg.connect(conninfo(node, dbname, user), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def server_log(node: Any) -> str:
    """The node's server log so far (for assertions and for failure messages)."""
    return Path(node.pg_log_file).read_text(errors="replace")
