"""A throwaway PostgreSQL cluster with pg_background_queue preloaded, for ``pgbq demo``.

Made with the server's own ``initdb`` and ``pg_ctl`` (found through ``pg_config``), so the
demo needs nothing beyond the base package; the test harness (``pg_background_queue.testing``,
extra ``[testing]``) builds on testgres instead.  The cluster listens on a Unix socket in its
own temporary directory only (``listen_addresses = ''``): no TCP port to pick or to collide
on.  Like every PostgreSQL server it refuses to run as root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg.conninfo import make_conninfo

from pg_background_queue._pgconfig import (
    EXTENSION,
    extension_installed,
    pg_config_path,
    pg_config_value,
)

START_TIMEOUT_S = 120
#: Settings of the throwaway cluster (the caller's ``settings`` are appended after them).
BASE_SETTINGS: dict[str, str | int | float] = {
    "listen_addresses": "",
    "max_worker_processes": 16,
    "fsync": "off",
    "log_min_messages": "warning",
    "lc_messages": "C",
    "timezone": "UTC",
}


def _setting(name: str, value: str | int | float) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{name} = {value}"
    return f"{name} = '{str(value).replace(chr(39), chr(39) * 2)}'"


class TempCluster:
    """``with TempCluster(settings) as dsn:`` a started cluster, removed on exit.

    ``settings`` are postgresql.conf parameters (strings are quoted).  The extension is
    created in database ``postgres``; the superuser is the current OS user.
    """

    def __init__(
        self, settings: Mapping[str, str | int | float] | None = None, pg_config: str | None = None
    ) -> None:
        self.settings = dict(settings or {})
        self.pg_config = pg_config_path(pg_config)
        self.root: Path | None = None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def dsn(self) -> str:
        """libpq connection string of database ``postgres`` through the Unix socket."""
        assert self.root is not None
        return make_conninfo(
            "", host=str(self.root), dbname="postgres", user=pwd.getpwuid(os.geteuid()).pw_name
        )

    def _run(self, *argv: str) -> None:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = ""
            if self.log.exists():
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(
                f"{Path(argv[0]).name} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}{chr(10) + tail if tail else ''}"
            )

    def start(self) -> str:
        """Create and start the cluster, create the extension; return :meth:`dsn`."""
        if os.geteuid() == 0:
            raise RuntimeError(
                "PostgreSQL refuses to run as root: run the demo as an unprivileged user, "
                "e.g. runuser -u postgres -- pgbq demo"
            )
        bindir = Path(pg_config_value("--bindir", self.pg_config))
        if not extension_installed(self.pg_config):
            raise RuntimeError(
                f"{EXTENSION} is not installed for {self.pg_config}: build and install it "
                f"(make PG_CONFIG={self.pg_config} && sudo make install), or set PG_CONFIG"
            )
        self.root = Path(tempfile.mkdtemp(prefix="pgbq-demo-"))
        try:
            self._run(
                str(bindir / "initdb"),
                "-D", str(self.data), "--auth=trust", "--encoding=UTF8", "--locale=C",
                "--no-sync",
            )  # fmt: skip
            lines = [_setting(k, v) for k, v in BASE_SETTINGS.items()]
            lines.append(_setting("unix_socket_directories", str(self.root)))
            lines.append(_setting("shared_preload_libraries", EXTENSION))
            lines += [_setting(k, v) for k, v in self.settings.items()]
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("\n# pgbq demo\n" + "\n".join(lines) + "\n")
            self._run(
                str(bindir / "pg_ctl"),
                "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S),
                "start",
            )  # fmt: skip
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                conn.execute(f"CREATE EXTENSION {EXTENSION}")
        except BaseException:
            self.stop()
            raise
        return self.dsn()

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its files."""
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                bindir = Path(pg_config_value("--bindir", self.pg_config))
                subprocess.run(
                    [str(bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                    capture_output=True,
                    check=False,
                )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
