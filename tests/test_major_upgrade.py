"""Moving a cluster with a busy queue to a new major version, the way DBAs do it.

15 -> 16 by 15's own pg_dump (and pg_dumpall --globals-only) restored with 16's pg_restore,
then 16 -> 18 by pg_upgrade. Debian's 15.20 writes an attribute option (pg_attver) that the
older 16.14 and 18.4 reject, so pg_upgrade from 15 (and a dump of 15 made with 16's pg_dump)
fails for any table; 15's own pg_dump works. At each hop the queue holds finished, failed (with
its error history), retrying, pending and delayed tasks of two roles: every row must arrive
exactly as it was, the id sequence must continue, and once the queue runs on the new cluster
the waiting tasks run exactly once and the failed one stays failed.

Needs every installation: ``PGBQ_PG_CONFIGS="15=/usr/bin/pg_config 16=... 18=..."`` (set by
scripts/test.sh's upgrade stage, with the extension installed in each); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from core_helpers import enqueue, make_role, query, scalar, set_config, wait_tasks
from pg_background_queue.testing.build import extension_installed, pg_config_value
from pg_background_queue.testing.cluster import poll_until, psql

pytestmark = pytest.mark.timeout(600)

FLAKY = {"flaky": {"retry_count": 5}}
CONF = {
    "pg_background_queue.topic_config": FLAKY,
    "pg_background_queue.max_parallel_running_tasks_count": 4,
}


def _installations() -> dict[str, str]:
    spec = os.environ.get("PGBQ_PG_CONFIGS", "")
    found = dict(item.split("=", 1) for item in spec.split() if "=" in item)
    missing = [v for v in ("15", "16", "18") if v not in found]
    if missing:
        pytest.skip(
            f"PGBQ_PG_CONFIGS names no installation of PostgreSQL {', '.join(missing)} "
            "(scripts/test.sh's upgrade stage sets it)"
        )
    for version, pg_config in found.items():
        if not extension_installed(pg_config):
            pytest.fail(f"pg_background_queue is not installed for {version} ({pg_config})")
    return found


def _bin(pg_config: str, program: str) -> str:
    return str(Path(pg_config_value("--bindir", pg_config)) / program)


def _run(argv: list[str], **kw: Any) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kw)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def _snapshot(node: Any) -> tuple[list[tuple[int, str]], tuple[int, bool]]:
    """Every task row (as JSON text) and the id sequence's state."""
    rows = [
        (r["id"], r["row"])
        for r in query(
            node, "SELECT id, row_to_json(t)::text AS row FROM pg_background_tasks t ORDER BY id"
        )
    ]
    seq = query(node, "SELECT last_value, is_called FROM pg_background_tasks_id_seq")[0]
    return rows, (seq["last_value"], seq["is_called"])


def _freeze(node: Any) -> None:
    """Stop starting tasks (max_parallel_running_tasks_count = 0) and wait until none runs."""
    set_config(node, max_parallel_running_tasks_count=0)
    poll_until(
        lambda: (
            scalar(node, "SELECT count(*) FROM pg_background_tasks WHERE state = 'running'") == 0
        ),
        timeout=60,
        message="running tasks to end after the freeze",
    )


def _thaw(node: Any) -> None:
    query(node, "UPDATE ctl SET fail = false")
    set_config(node, max_parallel_running_tasks_count=4)
    query(node, "SELECT pg_background_queue_ensure_workers()")


def _prepare_batch(node: Any, tag: str) -> dict[str, Any]:
    """Queue a finished, a failed, a retrying, five pending and a delayed task; freeze."""
    keys = [f"{tag}-fin", f"{tag}-retry", f"{tag}-delayed"] + [f"{tag}-p{i}" for i in range(5)]
    query(node, "INSERT INTO counter (k) SELECT unnest(%s::text[])", (keys,))
    query(node, "UPDATE ctl SET fail = true")
    fin = enqueue(node, f"UPDATE counter SET n = n + 1 WHERE k = '{tag}-fin'", user="app")
    failed = enqueue(node, f"SELECT 1/0 AS {tag.replace('-', '_')}_fails")
    retrying = enqueue(
        node,
        "UPDATE counter SET n = n + 1 / (SELECT CASE WHEN fail THEN 0 ELSE 1 END FROM ctl) "
        f"WHERE k = '{tag}-retry'",
        "flaky",
        user="app",
    )
    wait_tasks(node, [fin, failed])
    wait_tasks(node, [retrying], states=("retrying",))
    _freeze(node)
    pending = [
        enqueue(node, f"UPDATE counter SET n = n + 1 WHERE k = '{tag}-p{i}'", None, 10 + i,
                user="app" if i % 2 else None)
        for i in range(5)
    ]  # fmt: skip
    delayed = int(
        scalar(
            node,
            "SELECT pg_background_enqueue(%s, run_at => now() + interval '3 seconds')",
            (f"UPDATE counter SET n = n + 1 WHERE k = '{tag}-delayed'",),
        )
    )
    rows = {r["id"]: r for r in query(node, "SELECT * FROM pg_background_tasks")}
    assert rows[fin]["state"] == "finished"
    assert rows[failed]["state"] == "failed"
    assert len(rows[failed]["error_history"]) == 1
    assert rows[retrying]["state"] == "retrying"
    assert rows[retrying]["error_history"]
    assert all(rows[i]["state"] == "pending" for i in [*pending, delayed])
    return {
        "tag": tag, "fin": fin, "failed": failed, "retrying": retrying,
        "pending": pending, "delayed": delayed, "keys": keys,
    }  # fmt: skip


def _check_runs(node: Any, batch: dict[str, Any], failed_history: list[Any]) -> None:
    """After the thaw: every waiting task ran exactly once; the failed one did not run again."""
    waiting = [batch["retrying"], batch["delayed"], *batch["pending"]]
    done = {r["id"]: r for r in wait_tasks(node, waiting, timeout=90)}
    assert all(r["state"] == "finished" for r in done.values()), done
    assert done[batch["delayed"]]["started_at"] >= done[batch["delayed"]]["run_at"]
    counts = {
        r["k"]: r["n"]
        for r in query(node, "SELECT k, n FROM counter WHERE k = ANY(%s)", (batch["keys"],))
    }
    assert counts == dict.fromkeys(batch["keys"], 1), counts
    failed = query(node, "SELECT * FROM pg_background_tasks WHERE id = %s", (batch["failed"],))[0]
    assert failed["state"] == "failed"
    assert failed["error_history"] == failed_history
    # the role's grants came along: it sees its own tasks and nobody else's
    mine = scalar(node, "SELECT count(*) FROM pg_background_tasks", user="app")
    assert mine == scalar(
        node, "SELECT count(*) FROM pg_background_tasks WHERE owner = 'app'::regrole"
    )
    assert mine > 0


def _ids_continue(node: Any, snapshot_ids: list[int]) -> None:
    new_id = enqueue(node, "SELECT 1")
    assert new_id > max(snapshot_ids)
    wait_tasks(node, [new_id])


def test_dump_restore_15_to_16_then_pg_upgrade_16_to_18(make_cluster: Any) -> None:
    pg = _installations()
    workdir = Path(tempfile.mkdtemp(prefix="pgbq-upgrade-"))
    try:
        _dump_restore_then_pg_upgrade(make_cluster, pg, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _dump_restore_then_pg_upgrade(make_cluster: Any, pg: dict[str, str], workdir: Path) -> None:

    # --- PostgreSQL 15 with a busy queue
    n15 = make_cluster("pg15", pg_config=pg["15"], extra_conf=CONF)
    make_role(n15, "app")
    query(n15, "CREATE TABLE counter (k text PRIMARY KEY, n integer NOT NULL DEFAULT 0)")
    query(n15, "CREATE TABLE ctl (fail boolean NOT NULL)")
    query(n15, "INSERT INTO ctl VALUES (true)")
    query(n15, "GRANT ALL ON counter, ctl TO app")
    batch_a = _prepare_batch(n15, "a")
    history_a = query(
        n15, "SELECT error_history FROM pg_background_tasks WHERE id = %s", (batch_a["failed"],)
    )[0]["error_history"]
    before = _snapshot(n15)

    # --- 15 -> 16: 15's pg_dumpall --globals-only and pg_dump, 16's pg_restore
    conn = ["-h", str(n15.host), "-p", str(n15.port), "-U", "postgres"]
    globals_sql = _run([_bin(pg["15"], "pg_dumpall"), *conn, "--globals-only"])
    dump = workdir / "postgres.dump"
    _run([_bin(pg["15"], "pg_dump"), *conn, "-Fc", "-f", str(dump), "postgres"])
    n15.stop()
    n16 = make_cluster(
        "pg16",
        pg_config=pg["16"],
        create_extension=False,
        extra_conf={**CONF, "pg_background_queue.max_parallel_running_tasks_count": 0},
    )
    # the bootstrap superuser exists already
    psql(n16, "\n".join(line for line in globals_sql.splitlines() if "ROLE postgres" not in line))
    _run([_bin(pg["16"], "pg_restore"), "-h", str(n16.host), "-p", str(n16.port),
          "-U", "postgres", "-d", "postgres", "--exit-on-error", str(dump)])  # fmt: skip
    assert scalar(n16, "SELECT extversion FROM pg_extension WHERE extname = 'pg_background_queue'")
    assert _snapshot(n16) == before, "tasks changed in the dump/restore from 15 to 16"
    _thaw(n16)
    _check_runs(n16, batch_a, history_a)
    _ids_continue(n16, [i for i, _ in before[0]])

    # --- 16 -> 18: pg_upgrade, with a new batch waiting
    batch_b = _prepare_batch(n16, "b")
    history_b = query(
        n16, "SELECT error_history FROM pg_background_tasks WHERE id = %s", (batch_b["failed"],)
    )[0]["error_history"]
    before = _snapshot(n16)
    n16.stop()
    n18 = make_cluster(
        "pg18",
        pg_config=pg["18"],
        start=False,
        initdb_extra=["--no-data-checksums"],  # 18 enables them by default; 16's has none
        extra_conf={**CONF, "pg_background_queue.max_parallel_running_tasks_count": 0},
    )
    _run(
        [
            _bin(pg["18"], "pg_upgrade"),
            "-b", pg_config_value("--bindir", pg["16"]),
            "-B", pg_config_value("--bindir", pg["18"]),
            "-d", n16.data_dir, "-D", n18.data_dir,
            "-p", str(n16.port), "-P", str(n18.port),
            "-s", str(workdir), "-U", "postgres",
        ],
        cwd=workdir,
    )  # fmt: skip
    n18.start()
    assert int(scalar(n18, "SHOW server_version_num")) // 10000 == 18
    assert _snapshot(n18) == before, "tasks changed in pg_upgrade from 16 to 18"
    _thaw(n18)
    _check_runs(n18, batch_b, history_b)
    # the failed task of the first batch came through both moves untouched
    assert (
        query(n18, "SELECT error_history FROM pg_background_tasks WHERE id = %s",
              (batch_a["failed"],))[0]["error_history"] == history_a
    )  # fmt: skip
    _ids_continue(n18, [i for i, _ in before[0]])
