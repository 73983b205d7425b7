"""The PostgreSQL installation to use, found through its ``pg_config``.

Shared by the base package (``pgbq demo``'s throwaway cluster, ``--pg-config``) and the test
harness (``pg_background_queue.testing``); needs nothing beyond the standard library.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

EXTENSION = "pg_background_queue"
DEFAULT_PG_CONFIG = "/usr/bin/pg_config"


def pg_config_path(pg_config: str | None = None) -> str:
    """Return the pg_config to use, which picks the PostgreSQL server.

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
    try:
        out = subprocess.run([pg_config, flag], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            f"cannot run {pg_config} {flag} ({exc}): install PostgreSQL's server package, or "
            "set PG_CONFIG to the pg_config of the installation to use"
        ) from exc
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
    text = pg_config_value("--version", pg_config).split()[1]
    match = re.match(r"(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise ValueError(f"cannot read a version from pg_config --version: {text!r}")
    return int(match.group(1)) * 10000 + int(match.group(2) or 0)


def extension_installed(pg_config: str | None = None) -> bool:
    """True when the shared library and the control file are installed."""
    lib = Path(pg_config_value("--pkglibdir", pg_config)) / f"{EXTENSION}.so"
    control = Path(pg_config_value("--sharedir", pg_config)) / "extension" / f"{EXTENSION}.control"
    return lib.is_file() and control.is_file()


def pg_cron_installed(pg_config: str | None = None) -> bool:
    """True when pg_cron is installed for this PostgreSQL (here only Debian's 15 has it)."""
    lib = Path(pg_config_value("--pkglibdir", pg_config)) / "pg_cron.so"
    control = Path(pg_config_value("--sharedir", pg_config)) / "extension" / "pg_cron.control"
    return lib.is_file() and control.is_file()
