"""Run the pg_regress and isolation suites, against a testgres node or through ``make``.

Both paths start or use servers, so they must run as an unprivileged OS user. On failure
they print ``regression.diffs`` and return the non-zero exit code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pg_background_queue.testing.build import (
    bindir,
    pg_config_path,
    pg_isolation_regress_path,
    pg_regress_path,
    repo_root,
)


def regress_conf(source_dir: Path | None = None) -> str:
    """The settings the suites expect (``test/regress.conf``), for ``make_node(extra_conf=...)``."""
    return ((source_dir or repo_root()) / "test" / "regress.conf").read_text()


def suite_tests(source_dir: Path | None = None, *, isolation: bool = False) -> list[str]:
    """Names of the suite's tests: ``sql/*.sql`` (or ``specs/*.spec``) without extension."""
    root = source_dir or repo_root()
    pattern = "specs/*.spec" if isolation else "sql/*.sql"
    return sorted(p.stem for p in root.glob(pattern))


def print_diffs(paths: Iterable[Path]) -> None:
    """Print every existing ``regression.diffs`` among ``paths`` to stderr."""
    for path in paths:
        if path.is_file():
            print(f"===== {path} =====", file=sys.stderr)
            print(path.read_text(errors="replace"), file=sys.stderr)


def run_pg_regress(
    node: Any,
    tests: Sequence[str] | None = None,
    *,
    isolation: bool = False,
    source_dir: Path | None = None,
    outputdir: Path | None = None,
    dbname: str | None = None,
    pg_config: str | None = None,
) -> int:
    """Run pg_regress (or pg_isolation_regress) installcheck-style against a running node.

    The node should carry the suite's settings (:func:`regress_conf`) for the expected output
    to match. ``tests`` defaults to the whole suite; results go to ``outputdir`` (default: a
    fresh temporary directory, removed on success and kept for inspection on failure).
    Returns the exit code.
    """
    root = source_dir or repo_root()
    names = list(tests) if tests is not None else suite_tests(root, isolation=isolation)
    out = outputdir or Path(tempfile.mkdtemp(prefix="pgbq-regress-"))
    program = pg_isolation_regress_path(pg_config) if isolation else pg_regress_path(pg_config)
    default_db = "isolation_regression" if isolation else "contrib_regression"
    argv = [
        str(program),
        f"--inputdir={root}",
        f"--outputdir={out}",
        f"--bindir={bindir(pg_config)}",
        f"--host={node.host}",
        f"--port={node.port}",
        f"--dbname={dbname or default_db}",
        *names,
    ]
    code = subprocess.run(argv, cwd=out, check=False).returncode
    if code != 0:
        print_diffs([out / "regression.diffs"])
        print(f"pg_regress output kept in {out}", file=sys.stderr)
    elif outputdir is None:
        shutil.rmtree(out, ignore_errors=True)
    return code


def make_installcheck(
    source_dir: Path | None = None,
    *,
    target: str = "installcheck",
    pg_config: str | None = None,
) -> int:
    """Run ``make installcheck`` (the Makefile makes its own preloaded temporary clusters).

    pg_regress writes ``results/`` into the source tree, which must be writable; and it starts
    servers, so this refuses to run as root. Returns make's exit code.
    """
    if os.geteuid() == 0:
        raise PermissionError("make installcheck starts PostgreSQL and cannot run as root")
    root = source_dir or repo_root()
    argv = ["make", "-C", str(root), target, f"PG_CONFIG={pg_config_path(pg_config)}"]
    code = subprocess.run(argv, check=False).returncode
    if code != 0:
        print_diffs([root / "regression.diffs", root / "output_iso" / "regression.diffs"])
    return code
