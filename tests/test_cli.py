"""The pgbq command line on a real cluster: every command, its output, exit status and
error paths (one clear line, never a traceback)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core_helpers import make_role, query, scalar
from pg_background_queue._pgconfig import pg_config_path, pg_config_value
from pg_background_queue.cli import main
from pg_background_queue.testing.cluster import conninfo, poll_until

pytestmark = pytest.mark.pgbq_node(
    extra_conf={
        "pg_background_queue.max_parallel_running_tasks_count": 4,
        "pg_background_queue.topic_config": '{"etl": {"priority": 5, "retry_count": 1}}',
    }
)
COMMANDS = (
    "status", "tasks", "enqueue", "wait", "cancel", "retry", "purge", "workers", "topics",
    "metrics", "demo",
)  # fmt: skip
SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')


@pytest.fixture(scope="module")
def dsn(node: Any) -> str:
    make_role(node, "cli_user")
    return conninfo(node, user="cli_user")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pgbq(*argv: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).with_name("pgbq")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pg_background_queue.cli"]
    return subprocess.run(
        [*cmd, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd="/",
    )


def test_help_lists_every_command() -> None:
    done = pgbq("--help")
    assert done.returncode == 0
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", done.stdout, re.M), command
    assert "exit status" in done.stdout
    sub = pgbq("enqueue", "--help")
    assert "--topic" in sub.stdout
    assert "--at" in sub.stdout
    assert "--wait" in sub.stdout


def test_enqueue_wait_and_tasks(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    code, out, _ = run(capsys, "--dsn", dsn, "enqueue", "SELECT 1", "--topic", "etl", "--wait")
    assert code == 0
    lines = out.splitlines()
    task_id = int(lines[0])
    assert re.search(rf"^\s*{task_id}\s+etl\s+cli_user\s+finished\s+1\s", out, re.M)
    code, out, _ = run(capsys, "--dsn", dsn, "tasks", "--topic", "etl", "--state", "finished")
    assert code == 0
    assert re.search(rf"^\s*{task_id}\s+etl", out, re.M)


def test_enqueue_from_stdin_with_options(dsn: str, node: Any) -> None:
    done = pgbq(
        "--dsn", dsn, "enqueue", "-", "--priority", "9", "--at", "1h",
        stdin="SELECT 1;\nSELECT 2;\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    task_id = int(done.stdout.strip())
    row = query(
        node,
        "SELECT sql_statement, priority, round(extract(epoch FROM run_at - joined_at)) AS d "
        "FROM pg_background_tasks WHERE id = %s",
        [task_id],
    )[0]
    assert row == {"sql_statement": "SELECT 1;\nSELECT 2;\n", "priority": 9, "d": 3600}
    done = pgbq("--dsn", dsn, "enqueue", "SELECT 1", "--at", "2999-01-01T00:00:00+00:00")
    assert done.returncode == 0
    at = scalar(node, "SELECT run_at FROM pg_background_tasks WHERE id = %s", [int(done.stdout)])
    assert at.year == 2999


def test_failed_task_exit_status_and_retry(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    code, out, _ = run(capsys, "--dsn", dsn, "enqueue", "SELECT 1/0", "--wait")
    assert code == 4
    task_id = int(out.splitlines()[0])
    assert "failed" in out
    assert "division by zero" in out
    code, out, _ = run(capsys, "--dsn", dsn, "retry", str(task_id))
    assert (code, out.strip()) == (0, f"task {task_id}: queued again")
    code, out, _ = run(capsys, "--dsn", dsn, "wait", str(task_id), "--timeout", "30")
    assert code == 4
    code, _, err = run(capsys, "--dsn", dsn, "cancel", str(task_id))
    assert code == 1
    assert f"task {task_id} was not cancelled: it is failed" in err


def test_wait_progress_timeout_and_cancel(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    code, out, _ = run(capsys, "--dsn", dsn, "enqueue", "SELECT pg_sleep(60)")
    slow = int(out)
    code, out, err = run(capsys, "--dsn", dsn, "--progress", "wait", str(slow), "--timeout", "0.5")
    assert code == 3
    assert "tasks done" in err  # the progress bar
    assert f"pgbq: timeout: 1 task(s) not done after 0.5 s: {slow}" in err
    code, out, _ = run(capsys, "--dsn", dsn, "cancel", str(slow))
    assert (code, out.strip()) == (0, f"task {slow}: cancelled")
    code, out, _ = run(capsys, "--dsn", dsn, "wait", str(slow))
    assert code == 4
    assert "cancelled" in out


def test_status_workers_topics(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    run(capsys, "--dsn", dsn, "enqueue", "SELECT 1", "--topic", "etl", "--wait")
    code, out, _ = run(capsys, "--dsn", dsn, "status")
    assert code == 0
    assert re.search(r"^topic\s+pending\s+running\s+retrying\s+failed\s+finished", out, re.M)
    assert re.search(r"^etl\s+\d+", out, re.M)
    assert re.search(r"^workers: \d+ live, \d+ running a task$", out, re.M)
    code, out, _ = run(capsys, "--dsn", dsn, "workers")
    assert code == 0
    assert re.search(r"^\s*\d+\s+postgres\s+cli_user\s", out, re.M)
    code, out, _ = run(capsys, "--dsn", dsn, "topics")
    assert code == 0
    assert re.search(r"^etl\s+yes\s+\d+\s+5\s+1\s", out, re.M)


def test_purge(capsys: pytest.CaptureFixture[str], node: Any) -> None:
    make_role(node, "purge_cli")
    dsn = conninfo(node, user="purge_cli")
    run(capsys, "--dsn", dsn, "enqueue", "SELECT 1", "--wait")
    code, out, _ = run(capsys, "--dsn", dsn, "purge", "--older-than", "1 day")
    assert (code, out.strip()) == (0, "0 task(s) purged")
    code, out, _ = run(capsys, "--dsn", dsn, "purge")
    assert (code, out.strip()) == (0, "1 task(s) purged")


def test_metrics_text_format(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    run(capsys, "--dsn", dsn, "enqueue", "SELECT 1", "--topic", "etl", "--wait")
    code, out, _ = run(capsys, "--dsn", dsn, "metrics")
    assert code == 0
    for line in out.splitlines():
        assert line.startswith("#") or SAMPLE.match(line), line
    for family in (
        "pgbq_tasks", "pgbq_queue_depth", "pgbq_running_tasks", "pgbq_tasks_completed_total",
        "pgbq_task_run_seconds", "pgbq_workers", "pgbq_oldest_pending_age_seconds",
    ):  # fmt: skip
        assert f"# TYPE {family} " in out
    assert re.search(
        r'^pgbq_tasks_completed_total\{topic="etl",state="finished"\} [1-9]', out, re.M
    )
    assert re.search(r'^pgbq_task_run_seconds_count\{topic="etl"\} [1-9]', out, re.M)
    assert re.search(r'^pgbq_task_run_seconds\{topic="etl",quantile="0.95"\} ', out, re.M)


def test_metrics_over_http(dsn: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(sys.executable).with_name("pgbq")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pg_background_queue.cli"]
    proc = subprocess.Popen(
        [*cmd, "--dsn", dsn, "metrics", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        body = poll_until(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode(),
            timeout=30,
            ignore=(OSError,),
            message="metrics endpoint answers",
        )
        assert "# TYPE pgbq_queue_depth gauge" in body
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["enqueue", "SELEC 1"], 'pgbq: error: syntax error at or near "SELEC"'),
        (["enqueue", "COMMIT"], "pgbq: error: transaction control statements are not allowed"),
        (["enqueue", "SELECT 1", "--topic", ""], "pgbq: error: topic must not be an empty string"),
        (["purge", "--older-than", "soon"], "pgbq: error: invalid input syntax for type interval"),
        (["cancel", "999999"], "pgbq: error: task 999999 does not exist or is not yours"),
        (["wait", "999999"], "pgbq: error: task(s) 999999 do not exist or are not yours"),
        (["metrics", "--listen", "nowhere"], "pgbq: error: invalid listen address 'nowhere'"),
    ],
)
def test_errors_are_one_line(dsn: str, argv: list[str], message: str) -> None:
    done = pgbq("--dsn", dsn, *argv)
    assert done.returncode == 1
    assert done.stderr.startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_connection_and_install_errors(node: Any) -> None:
    done = pgbq("status", PGHOST="127.0.0.1", PGPORT="1", PGCONNECT_TIMEOUT="2")
    assert done.returncode == 1
    assert done.stderr.startswith("pgbq: error: connection")
    assert len(done.stderr.strip().splitlines()) == 1
    query(node, "CREATE DATABASE cli_noext")
    done = pgbq("--dsn", conninfo(node, dbname="cli_noext"), "tasks")
    assert done.returncode == 1
    assert "shared_preload_libraries" in done.stderr
    assert "CREATE EXTENSION" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2() -> None:
    for argv in (["enqueue", "SELECT 1", "--at", "next tuesday"], ["wait", "x"], ["nope"]):
        done = pgbq(*argv)
        assert done.returncode == 2, argv
        assert "usage: pgbq" in done.stderr
        assert "Traceback" not in done.stderr


def test_demo_and_bench_take_the_server_choice() -> None:
    """--pg-config picks the installation of the throwaway cluster, whatever PG_CONFIG says."""
    chosen = pg_config_path()
    done = pgbq(
        "demo", "--pg-config", chosen, "--timeout", "90", PG_CONFIG="/nonexistent/pg_config"
    )
    assert done.returncode == 0, done.stderr
    assert f"Creating a throwaway {pg_config_value('--version', chosen)} cluster" in done.stdout
    for command in (["demo"], ["bench", "--quick"]):
        bad = pgbq(*command, "--pg-config", "/nonexistent/pg_config")
        assert bad.returncode == 1, command
        assert "--pg-config /nonexistent/pg_config: no such file" in bad.stderr
        assert "Traceback" not in bad.stderr


def test_demo_on_a_throwaway_cluster() -> None:
    done = pgbq("demo", "--timeout", "90")
    assert done.returncode == 0, done.stderr
    assert re.search(r"Creating a throwaway PostgreSQL \d+\S*( \(.*\))? cluster", done.stdout)
    assert "16 finished, 2 did not:" in done.stdout
    # flaky retries twice with 2^n backoff on the demo's own topic configuration
    assert re.search(r"\(failed\): division by zero  \[attempts: #1 22012 .*#3 22012", done.stdout)
    assert "First start per topic (lower priority number first): critical < " in done.stdout


def test_demo_against_a_server(node: Any) -> None:
    done = pgbq("--dsn", conninfo(node), "demo", "--timeout", "90")
    assert done.returncode == 0, done.stderr
    assert "Enqueued 18 tasks." in done.stdout
    assert re.search(r"^16 finished, 2 did not:", done.stdout, re.M)
    assert "task(s) failed" not in done.stdout
    assert re.search(r"task \d+ \(failed\): division by zero  \[attempts: #1 22012", done.stdout)
    assert "Rows written as: pgbq_demo_user (2), " in done.stdout
    assert "VACUUM (ANALYZE) pgbq_demo_events" in done.stdout
