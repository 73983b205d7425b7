"""Locate the source tree and the PostgreSQL installation; build and install the extension."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pg_background_queue._pgconfig import (
    DEFAULT_PG_CONFIG,
    EXTENSION,
    bindir,
    extension_installed,
    pg_config_path,
    pg_config_value,
    pg_cron_installed,
    server_version_num,
)

__all__ = [
    "DEFAULT_PG_CONFIG",
    "EXTENSION",
    "bindir",
    "build_and_install",
    "extension_installed",
    "pg_config_path",
    "pg_config_value",
    "pg_cron_installed",
    "pg_isolation_regress_path",
    "pg_regress_path",
    "repo_root",
    "server_version_num",
]
WARNING_FLAGS = "-Wall -Wextra -Werror"


def repo_root(start: Path | None = None) -> Path:
    """Return the source tree root: the nearest directory holding ``pg_background_queue.control``.

    Searches upwards from ``start`` (default: the current directory), then from this file
    (which works for an editable install). ``PGBQ_SOURCE_DIR`` overrides both.
    """
    override = os.environ.get("PGBQ_SOURCE_DIR")
    if override:
        return Path(override).resolve()
    for origin in (start or Path.cwd(), Path(__file__)):
        for candidate in (origin.resolve(), *origin.resolve().parents):
            if (candidate / f"{EXTENSION}.control").is_file():
                return candidate
    raise FileNotFoundError(
        f"cannot find the source tree ({EXTENSION}.control) above {start or Path.cwd()}; "
        "run from the repository or set PGBQ_SOURCE_DIR"
    )


def _test_drivers(pg_config: str | None) -> Path:
    """Directory holding ``regress/pg_regress`` and ``isolation/pg_isolation_regress``.

    ``$PGBQ_TEST_DRIVERS`` (the ``pgxs/src/test`` directory of another installation) wins: the
    drivers are client programs, and the PostgreSQL 18.4 wheel's own crash at load.
    """
    override = os.environ.get("PGBQ_TEST_DRIVERS")
    if override:
        return Path(override)
    return Path(pg_config_value("--pkglibdir", pg_config)) / "pgxs/src/test"


def pg_regress_path(pg_config: str | None = None) -> Path:
    """Path of PGXS's ``pg_regress`` (see :func:`_test_drivers`)."""
    return _test_drivers(pg_config) / "regress/pg_regress"


def pg_isolation_regress_path(pg_config: str | None = None) -> Path:
    """Path of PGXS's ``pg_isolation_regress`` (``isolationtester`` sits next to it)."""
    return _test_drivers(pg_config) / "isolation/pg_isolation_regress"


def build_and_install(
    pg_config: str | None = None,
    *,
    source_dir: Path | None = None,
    copt: str = WARNING_FLAGS,
    jobs: int | None = None,
) -> None:
    """Build the extension with PGXS (``make``) and install it (``make install``).

    ``make install`` writes into the PostgreSQL installation, so this must run as root;
    it raises ``PermissionError`` otherwise. The build happens in ``source_dir`` (default:
    :func:`repo_root`), which must be writable. Warnings are errors (``COPT``).
    """
    if os.geteuid() != 0:
        raise PermissionError("build_and_install() runs `make install` and must run as root")
    root = source_dir or repo_root()
    args = [f"PG_CONFIG={pg_config_path(pg_config)}", f"COPT={copt}"]
    subprocess.run(["make", "-C", str(root), f"-j{jobs or os.cpu_count() or 1}", *args], check=True)
    subprocess.run(["make", "-C", str(root), "install", *args], check=True)
