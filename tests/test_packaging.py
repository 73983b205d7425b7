"""The Python distribution: what a plain ``pip install ./python`` brings (the client, the CLI
and the demo, nothing of the test, benchmark or web stacks), and that the sdist and wheel
build and pass ``twine check`` as they would be published.

These tests install from PyPI into a fresh virtualenv (pip's cache makes repeats cheap).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pg_background_queue.testing import repo_root

# the benchmark tool and the packages are the same whatever the server: once per matrix run
pytestmark = pytest.mark.version_independent

#: What the base package may pull in (the distribution itself, psycopg, tqdm, and their own
#: small dependencies), plus what every new venv has.
ALLOWED_BASE = {
    "pg-background-queue", "psycopg", "psycopg-binary", "tqdm", "typing-extensions",
    "tzdata", "pip", "setuptools",
}  # fmt: skip
#: Tools of the extras, none of which a base install may bring.
EXTRAS_ONLY = {
    "pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "playwright", "testgres",
    "pg8000", "pgqueuer", "matplotlib", "starlette", "uvicorn", "ruff", "mypy", "build",
    "twine",
}  # fmt: skip
PIP_TIMEOUT_S = 600


def _python_dir() -> Path:
    return repo_root() / "python"


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
        cwd="/",
        env=env,
    )


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (Debian's python, no system site packages) with ``pip install ./python``."""
    venv = tmp_path_factory.mktemp("base-venv")
    made = _run(["/usr/bin/python3", "-m", "venv", str(venv)])
    assert made.returncode == 0, made.stderr
    installed = _run([str(venv / "bin" / "python"), "-m", "pip", "install", str(_python_dir())])
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv


def test_base_install_pulls_no_test_bench_or_web_tools(base_venv: Path) -> None:
    listed = _run([str(base_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"])
    assert listed.returncode == 0, listed.stderr
    names = {_normalize(p["name"]) for p in json.loads(listed.stdout)}
    assert "pg-background-queue" in names
    assert not names & EXTRAS_ONLY, f"the base install brought {sorted(names & EXTRAS_ONLY)}"
    assert names <= ALLOWED_BASE, f"unexpected dependencies: {sorted(names - ALLOWED_BASE)}"


def test_base_install_cli_works_and_extras_fail_clearly(base_venv: Path) -> None:
    pgbq = str(base_venv / "bin" / "pgbq")
    helped = _run([pgbq, "--help"])
    assert helped.returncode == 0, helped.stderr
    assert "web" in helped.stdout

    harness = _run([str(base_venv / "bin" / "python"), "-c", "import pg_background_queue.testing"])
    assert harness.returncode == 1
    assert "pg_background_queue.testing needs testgres" in harness.stderr
    assert "pip install 'pg-background-queue[testing]'" in harness.stderr

    web = _run([pgbq, "web", "--listen", "127.0.0.1:0"])
    assert web.returncode == 1, web
    assert web.stderr.startswith("pgbq: error: pgbq web needs the optional dependencies of the")
    assert "pip install 'pg-background-queue[web]'" in web.stderr
    assert "Traceback" not in web.stderr

    demo_web = _run([pgbq, "demo", "--web", "127.0.0.1:0"])
    assert demo_web.returncode == 1, demo_web
    assert "pip install 'pg-background-queue[web]'" in demo_web.stderr
    assert "throwaway cluster" not in demo_web.stdout  # refused before anything started

    bench = _run([pgbq, "bench", "--quick", "--output", "/nonexistent"])
    assert bench.returncode == 1, bench
    assert "needs testgres" in bench.stderr
    assert "Traceback" not in bench.stderr


def test_demo_runs_from_the_base_install(base_venv: Path) -> None:
    """The demo's throwaway cluster needs nothing beyond the base package."""
    demo = _run([str(base_venv / "bin" / "pgbq"), "demo", "--timeout", "300"])
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert re.search(r"Creating a throwaway PostgreSQL \d+\S*( \(.*\))? cluster", demo.stdout)
    assert re.search(r"Rows written as: .*pgbq_demo_user \(2\)", demo.stdout), demo.stdout


def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    built = _build(out)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1
    assert len(sdists) == 1
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, wheels + sdists)])
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with zipfile.ZipFile(wheels[0]) as wheel:
        files = set(wheel.namelist())
        meta_name = next(n for n in files if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(meta_name).decode()
    for needed in (
        "pg_background_queue/py.typed",
        "pg_background_queue/web/static/index.html",
        "pg_background_queue/web/static/app.js",
        "pg_background_queue/web/static/app.css",
        "pg_background_queue/tempcluster.py",
    ):
        assert needed in files, needed
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    base = sorted(
        _normalize(re.split(r"[\[<>=;! ]", r)[0]) for r in requires if "extra ==" not in r
    )
    assert base == ["psycopg", "tqdm"], requires
    extras = {
        line.split(":", 1)[1].strip() for line in metadata.splitlines()
        if line.startswith("Provides-Extra:")
    }  # fmt: skip
    assert extras == {"web", "testing", "test", "bench", "dev", "pool"}


def _build(out: Path) -> subprocess.CompletedProcess[str]:
    """``python -m build`` of sdist and wheel (the wheel is built from the sdist)."""
    return _run([sys.executable, "-m", "build", "--outdir", str(out), str(_python_dir())])
