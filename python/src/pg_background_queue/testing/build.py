"""Locate the source tree and the PostgreSQL installation; build and install the extension."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

EXTENSION = "pg_background_queue"
DEFAULT_PG_CONFIG = "/usr/bin/pg_config"
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


def pg_config_path(pg_config: str | None = None) -> str:
    """Return the pg_config to use, which picks the PostgreSQL server under test.

    In order: the argument, ``$PG_CONFIG``, ``$PG_BIN/pg_config`` (testgres's own variable),
    ``pg_config`` on PATH, ``/usr/bin/pg_config``.
    """
    if pg_config:
        return pg_config
    if os.environ.get("PG_CONFIG"):
        return os.environ["PG_CONFIG"]
    pg_bin = os.environ.get("PG_BIN")
    if pg_bin and (Path(pg_bin) / "pg_config").is_file():
        return str(Path(pg_bin) / "pg_config")
    return shutil.which("pg_config") or DEFAULT_PG_CONFIG


@functools.cache
def _pg_config_value(pg_config: str, flag: str) -> str:
    out = subprocess.run([pg_config, flag], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def pg_config_value(flag: str, pg_config: str | None = None) -> str:
    """Return one ``pg_config`` value, e.g. ``pg_config_value("--bindir")`` (cached)."""
    return _pg_config_value(pg_config_path(pg_config), flag)


def bindir(pg_config: str | None = None) -> Path:
    """Directory of the server binaries (``initdb``, ``postgres``, ``psql``)."""
    return Path(pg_config_value("--bindir", pg_config))


def server_version_num(pg_config: str | None = None) -> int:
    """``server_version_num`` of the installation, from ``pg_config --version``
    (``PostgreSQL 16.14`` -> 160014, ``PostgreSQL 18beta1`` -> 180000)."""
    text = pg_config_value("--version", pg_config).split()[-1]
    match = re.match(r"(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"cannot read a version from pg_config --version: {text!r}")
    return int(match.group(1)) * 10000 + int(match.group(2) or 0)


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


def pg_cron_installed(pg_config: str | None = None) -> bool:
    """True when pg_cron is installed for this PostgreSQL (here only Debian's 15 has it)."""
    lib = Path(pg_config_value("--pkglibdir", pg_config)) / "pg_cron.so"
    control = Path(pg_config_value("--sharedir", pg_config)) / "extension" / "pg_cron.control"
    return lib.is_file() and control.is_file()


def extension_installed(pg_config: str | None = None) -> bool:
    """True when the shared library and the control file are installed."""
    lib = Path(pg_config_value("--pkglibdir", pg_config)) / f"{EXTENSION}.so"
    control = Path(pg_config_value("--sharedir", pg_config)) / "extension" / f"{EXTENSION}.control"
    return lib.is_file() and control.is_file()


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
