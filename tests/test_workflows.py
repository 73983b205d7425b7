"""Workflows of version 1.2 on a real cluster: pause/resume per topic (cluster-wide,
durable across restarts and crash restarts), what a NOTIFY listener learns, dedupe keys
through the workers' bookkeeping, and dependencies (a diamond under 8 workers, a failure
cascade, kill -9 during a step); the client and CLI for each."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from core_helpers import connect, enqueue, make_role, query, scalar, task, wait_tasks
from pg_background_queue import AsyncClient, Client, TaskState, cli
from pg_background_queue.errors import InvalidArgumentError, PermissionDeniedError
from pg_background_queue.testing.cluster import (
    conninfo,
    destroy_node,
    make_node,
    poll_until,
    server_log,
)


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 2,
            "pg_background_queue.worker_idle_timeout": "30s",
            "restart_after_crash": "on",
        }
    )
    make_role(n, "wf_alice")
    yield n
    destroy_node(n)


def paused_topics(node: Any, dbname: str = "postgres") -> list[str | None]:
    rows = query(
        node,
        "SELECT topic FROM pg_background_queue_topics WHERE paused ORDER BY topic",
        dbname=dbname,
    )
    return [r["topic"] for r in rows]


def states(node: Any, ids: list[int]) -> list[str]:
    return [task(node, i)["state"] for i in ids]


def test_paused_topic_is_passed_over_and_resume_runs_it(node: Any) -> None:
    assert scalar(node, "SELECT pg_background_queue_pause('p1')") is True
    # p1's tasks come first in claim order; only the pause keeps them back
    held = [enqueue(node, "SELECT 1", "p1", 0, user="wf_alice") for _ in range(3)]
    other = enqueue(node, "SELECT 2", "q1", 5, user="wf_alice")
    wait_tasks(node, [other])
    assert states(node, held) == ["pending"] * 3
    row = query(node, "SELECT * FROM pg_background_queue_topics WHERE topic = 'p1'")[0]
    assert (row["paused"], row["pending"]) == (True, 3)
    # the owner sees the pause in the view too
    assert paused_topics(node) == ["p1"]
    assert scalar(node, "SELECT pg_background_queue_resume('p1')") is True
    rows = wait_tasks(node, held)
    assert [r["state"] for r in rows] == ["finished"] * 3
    assert paused_topics(node) == []


def test_default_topic_can_be_paused(node: Any) -> None:
    assert scalar(node, "SELECT pg_background_queue_pause(NULL)") is True
    try:
        held = enqueue(node, "SELECT 1", None, 0)
        other = enqueue(node, "SELECT 2", "q2", 5)
        wait_tasks(node, [other])
        assert task(node, held)["state"] == "pending"
        assert paused_topics(node) == [None]
    finally:
        assert scalar(node, "SELECT pg_background_queue_resume(NULL)") is True
    wait_tasks(node, [held])


def test_running_task_finishes_after_pause(node: Any) -> None:
    query(node, "CREATE TABLE IF NOT EXISTS wf_gate (ok boolean)")
    query(node, "GRANT ALL ON wf_gate TO PUBLIC")
    query(node, "TRUNCATE wf_gate")
    # the task waits for a row that the test writes once the pause is in place
    first = enqueue(
        node,
        "DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.wf_gate) LOOP "
        "PERFORM pg_sleep(0.02); END LOOP; END $$",
        "p3",
    )
    wait_tasks(node, [first], states=("running",))
    assert scalar(node, "SELECT pg_background_queue_pause('p3')") is True
    second = enqueue(node, "SELECT 1", "p3", 0)
    query(node, "INSERT INTO wf_gate VALUES (true)")
    assert wait_tasks(node, [first])[0]["state"] == "finished"
    other = enqueue(node, "SELECT 2", "q3", 5)
    wait_tasks(node, [other])
    assert task(node, second)["state"] == "pending"
    scalar(node, "SELECT pg_background_queue_resume('p3')")
    wait_tasks(node, [second])


def test_pause_is_cluster_wide_and_survives_restarts(node: Any) -> None:
    query(node, "DROP DATABASE IF EXISTS wf_other")
    query(node, "CREATE DATABASE wf_other")
    query(node, "CREATE EXTENSION pg_background_queue", dbname="wf_other")
    # paused from another database: holds here too
    assert scalar(node, "SELECT pg_background_queue_pause('p4')", dbname="wf_other") is True
    held = enqueue(node, "SELECT 1", "p4", 0)
    held_other = enqueue(node, "SELECT 1", "p4", 0, dbname="wf_other")
    wait_tasks(node, [enqueue(node, "SELECT 2", "q4", 5)])
    wait_tasks(node, [enqueue(node, "SELECT 2", "q4", 5, dbname="wf_other")], dbname="wf_other")
    assert task(node, held)["state"] == "pending"
    assert task(node, held_other, dbname="wf_other")["state"] == "pending"

    # a clean restart keeps it
    node.restart()
    assert paused_topics(node) == ["p4"]
    wait_tasks(node, [enqueue(node, "SELECT 3", "q4", 5)])
    assert task(node, held)["state"] == "pending"

    # so does a crash restart (shared memory is rebuilt from the file)
    restarts = server_log(node).count("reinitializing")
    victim = connect(node)
    os.kill(victim.info.backend_pid, signal.SIGKILL)

    def back_up() -> bool:
        if server_log(node).count("reinitializing") == restarts:
            return False  # the postmaster has not noticed the kill yet
        try:
            return scalar(node, "SELECT true") is True
        except psycopg.OperationalError:
            return False

    poll_until(back_up, timeout=60, message="server back after crash restart")
    assert paused_topics(node) == ["p4"]
    wait_tasks(node, [enqueue(node, "SELECT 4", "q4", 5)], timeout=60)
    assert task(node, held)["state"] == "pending"

    assert scalar(node, "SELECT pg_background_queue_resume('p4')") is True
    wait_tasks(node, [held], timeout=60)
    wait_tasks(node, [held_other], timeout=60, dbname="wf_other")
    query(node, "DROP DATABASE wf_other WITH (FORCE)")


def test_pause_is_not_transactional(node: Any) -> None:
    """Like pg_reload_conf(): documented; a rollback does not undo it."""
    with connect(node, autocommit=False) as conn:
        conn.execute("SELECT pg_background_queue_pause('p5')")
        conn.rollback()
    assert paused_topics(node) == ["p5"]
    assert scalar(node, "SELECT pg_background_queue_resume('p5')") is True


def test_listener_not_granted_learns_only_ids_and_states(node: Any) -> None:
    """The documented decision: NOTIFY payloads are '<id> <state>', nothing else."""
    query(node, "DROP ROLE IF EXISTS wf_nobody")
    query(node, "CREATE ROLE wf_nobody LOGIN")
    with connect(node, user="wf_nobody") as listener:
        listener.execute("LISTEN pg_background_queue")
        tid = enqueue(node, "SELECT 'alice secret'", "secret_topic", user="wf_alice")
        wait_tasks(node, [tid])
        payloads: list[str] = []

        def got() -> bool:
            for n in listener.notifies(timeout=0.2, stop_after=1):
                payloads.append(n.payload)
            return any(p.split(" ")[0] == str(tid) for p in payloads)

        poll_until(got, timeout=30, message="notification of the task's end")
    mine = [p for p in payloads if p.split(" ")[0] == str(tid)]
    assert mine == [f"{tid} finished"]


@pytest.fixture(scope="module")
def retry_node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 2,
            "pg_background_queue.worker_idle_timeout": "30s",
            "pg_background_queue.topic_config": json.dumps(
                {"dk": {"max_parallel_running_tasks_count": 1, "retry_count": 1}}
            ),
        }
    )
    query(n, "CREATE TABLE wf_gate (ok boolean)")
    query(n, "GRANT ALL ON wf_gate TO PUBLIC")
    yield n
    destroy_node(n)


def test_dedupe_key_of_a_task_coming_back_goes_to_the_newer_task(retry_node: Any) -> None:
    """A failed attempt puts the task back (retrying) while a newer task holds its key:
    the worker's bookkeeping must not trip over the unique index; the newer task keeps the
    key and enqueue keeps returning it."""
    node = retry_node
    failing = (
        "DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.wf_gate) LOOP "
        "PERFORM pg_sleep(0.02); END LOOP; PERFORM 1 / 0; END $$"
    )
    first = int(
        scalar(node, "SELECT pg_background_enqueue(%s, 'dk', dedupe_key => 'k')", (failing,))
    )
    wait_tasks(node, [first], states=("running",))
    # running is not queued: the same key makes a new task (held back: topic limit 1)
    second = int(scalar(node, "SELECT pg_background_enqueue('SELECT 2', 'dk', dedupe_key => 'k')"))
    assert second != first
    assert (
        int(scalar(node, "SELECT pg_background_enqueue('SELECT 3', 'dk', dedupe_key => 'k')"))
        == second
    )
    query(node, "INSERT INTO wf_gate VALUES (true)")
    rows = wait_tasks(node, [first, second], timeout=60)
    assert [r["state"] for r in rows] == ["failed", "finished"]
    assert rows[0]["attempts"] == 2  # the retry ran too
    assert rows[0]["dedupe_key"] is None
    assert rows[1]["dedupe_key"] == "k"
    assert "duplicate key" not in server_log(node)


def test_client_dedupe_pause_resume(node: Any) -> None:
    with Client(conninfo(node, user="wf_alice")) as alice:
        first = alice.enqueue("SELECT 1", "cl", dedupe_key="refresh", run_at=timedelta(hours=1))
        assert alice.enqueue("SELECT 2", "cl", dedupe_key="refresh") == first
        assert alice.get(first).dedupe_key == "refresh"
        ids = alice.enqueue_many(
            ["SELECT 3", "SELECT 4", "SELECT 5"],
            "cl",
            run_at=timedelta(hours=1),
            dedupe_keys=["refresh", None, "other"],
        )
        assert ids[0] == first
        assert len(set(ids)) == 3
        with pytest.raises(InvalidArgumentError):
            alice.enqueue("SELECT 1", "cl", dedupe_key="")
        with pytest.raises(InvalidArgumentError):
            alice.enqueue_many(["SELECT 1"], dedupe_keys=["a", "b"])
        # pause is for administrators
        with pytest.raises(PermissionDeniedError):
            alice.pause("cl")
        for i in ids:
            alice.cancel(i)
    with Client(conninfo(node)) as admin:
        assert admin.pause("cl") is True
        assert admin.pause("cl") is False
        assert [t.paused for t in admin.topics() if t.topic == "cl"] == [True]
        assert admin.resume("cl") is True
        assert admin.resume("cl") is False
        assert admin.pause(None) is True
        assert [t.topic for t in admin.topics() if t.paused] == [None]
        assert admin.resume(None) is True


async def test_async_client_dedupe_pause_resume(node: Any) -> None:
    async with await AsyncClient.connect(conninfo(node)) as admin:
        first = await admin.enqueue("SELECT 1", "acl", dedupe_key="k", run_at=timedelta(hours=1))
        assert await admin.enqueue("SELECT 2", "acl", dedupe_key="k") == first
        ids = await admin.enqueue_many(["SELECT 1", "SELECT 2"], "acl", dedupe_keys=["k", "k"])
        assert ids == [first, first]
        assert await admin.pause("acl") is True
        assert [t.paused for t in await admin.topics() if t.topic == "acl"] == [True]
        assert await admin.resume("acl") is True
        assert await admin.cancel(first) is True


def test_cli_dedupe_key_pause_resume(capsys: pytest.CaptureFixture[str], node: Any) -> None:
    dsn = conninfo(node)

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main(["--dsn", dsn, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run("enqueue", "SELECT 1", "--topic", "cli", "--at", "1h", "--dedupe-key", "d")
    assert code == 0
    first = int(out)
    code, out, _ = run("enqueue", "SELECT 2", "--topic", "cli", "--dedupe-key", "d")
    assert (code, int(out)) == (0, first)
    assert run("pause", "cli")[:2] == (0, "topic cli: paused\n")
    assert run("pause", "cli")[:2] == (0, "topic cli: was already paused\n")
    code, out, _ = run("topics")
    assert code == 0
    assert "paused" in out.splitlines()[0]
    assert run("resume", "cli")[:2] == (0, "topic cli: resumed\n")
    assert run("pause", "--default")[:2] == (0, "topic (default): paused\n")
    assert run("resume", "--default")[:2] == (0, "topic (default): resumed\n")
    code, _, err = run("pause")
    assert code == 1
    assert "--default" in err
    code, _, err = run("enqueue", "SELECT 1", "--dedupe-key", "")
    assert code == 1
    assert "dedupe key must not be an empty string" in err
    run("cancel", str(first))


# ---------------------------------------------------------------------------
# Dependencies
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dag_node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 8,
            "pg_background_queue.worker_idle_timeout": "30s",
            "pg_background_queue.topic_config": json.dumps(
                {"once": {"retry_count": 0}, "again": {"retry_count": 3}}
            ),
            "restart_after_crash": "on",
        }
    )
    query(n, "CREATE TABLE steps (name text, at timestamptz DEFAULT clock_timestamp())")
    query(n, "GRANT ALL ON steps TO PUBLIC")
    make_role(n, "wf_dag")
    yield n
    destroy_node(n)


def step(name: str, seconds: float = 0.0) -> str:
    sleep = f"SELECT pg_sleep({seconds}); " if seconds else ""
    return f"{sleep}INSERT INTO public.steps (name) VALUES ('{name}')"


def test_diamond_runs_in_order_under_8_workers(dag_node: Any) -> None:
    node = dag_node
    with Client(conninfo(node, user="wf_dag")) as c:
        for round_ in range(3):
            p = f"r{round_}"
            a = c.enqueue(step(f"{p}a", 0.2), "dag")
            b = [c.enqueue(step(f"{p}b{i}", 0.05 * i), "dag", after=[a]) for i in range(6)]
            d = c.enqueue(step(f"{p}d"), "dag", after=b)
            assert c.get(d).state is TaskState.WAITING
            assert c.get(d).after == tuple(b)
            tasks = c.wait([a, *b, d], timeout=60)
            assert [t.state for t in tasks] == [TaskState.FINISHED] * 8
            by_id = {t.id: t for t in tasks}
            # each step started after every prerequisite had finished, and ran once
            for dep in b:
                assert by_id[dep].started_at >= by_id[a].closed_at
                assert by_id[d].started_at >= by_id[dep].closed_at
            counts = query(
                node,
                "SELECT name, count(*) AS n, min(at) AS at FROM steps WHERE name LIKE %s "
                "GROUP BY name",
                (f"{p}%",),
            )
            assert sorted(r["n"] for r in counts) == [1] * 8
            at = {r["name"]: r["at"] for r in counts}
            assert all(at[f"{p}a"] < at[f"{p}b{i}"] < at[f"{p}d"] for i in range(6))


def test_failure_in_the_middle_cancels_exactly_its_descendants(dag_node: Any) -> None:
    with Client(conninfo(dag_node, user="wf_dag")) as c:
        root = c.enqueue("SELECT 1", "once")
        bad = c.enqueue("SELECT 1 / 0", "once", after=[root])
        child = c.enqueue("SELECT 2", "once", after=[bad])
        grandchild = c.enqueue("SELECT 3", "once", after=[child, root])
        sibling = c.enqueue("SELECT 4", "once", after=[root])
        tasks = c.wait([root, bad, child, grandchild, sibling], timeout=60)
        assert [t.state for t in tasks] == [
            TaskState.FINISHED,
            TaskState.FAILED,
            TaskState.CANCELLED,
            TaskState.CANCELLED,
            TaskState.FINISHED,
        ]
        assert tasks[2].errors == f"prerequisite task {bad} failed: division by zero"
        assert tasks[3].errors is not None
        assert tasks[3].errors.startswith(f"prerequisite task {child} cancelled")
        assert tasks[2].started_at is None  # never ran
        # re-run the branch: the failed step, then its cancelled descendants
        query(
            dag_node, f"UPDATE pg_background_tasks SET sql_statement = 'SELECT 1' WHERE id = {bad}"
        )
        for t in (bad, child, grandchild):
            assert c.retry(t) is True
        rerun = c.wait([bad, child, grandchild], timeout=60)
        assert [t.state for t in rerun] == [TaskState.FINISHED] * 3


def test_kill_9_during_a_step_neither_releases_early_nor_loses(dag_node: Any) -> None:
    node = dag_node
    query(node, "CREATE TABLE IF NOT EXISTS kill_gate (ok boolean)")
    query(node, "GRANT ALL ON kill_gate TO PUBLIC")
    with Client(conninfo(node, user="wf_dag")) as c:
        first = c.enqueue(
            "DO $$ BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.kill_gate) LOOP "
            "PERFORM pg_sleep(0.05); END LOOP; END $$; " + step("k1"),
            "again",
        )
        after_first = c.enqueue(step("k2"), "again", after=[first])
        last = c.enqueue(step("k3"), "again", after=[after_first])
    wait_tasks(node, [first], states=("running",))
    pid = task(node, first)["worker_pid"]
    os.kill(pid, signal.SIGKILL)  # the postmaster restarts the whole cluster

    def recovered() -> bool:
        try:
            row = task(node, first)
        except psycopg.OperationalError:
            return False
        return row["state"] == "retrying" or row["attempts"] >= 2

    poll_until(recovered, timeout=60, message="first step back in the queue after the crash")
    assert task(node, after_first)["state"] == "waiting"
    assert task(node, last)["state"] == "waiting"
    query(node, "INSERT INTO kill_gate VALUES (true)")
    rows = wait_tasks(node, [first, after_first, last], timeout=90)
    assert [r["state"] for r in rows] == ["finished"] * 3
    assert rows[0]["attempts"] == 2  # the killed attempt counted
    assert rows[1]["started_at"] >= rows[0]["closed_at"]
    assert rows[2]["started_at"] >= rows[1]["closed_at"]
    counts = query(node, "SELECT name, count(*) AS n FROM steps WHERE name LIKE 'k%' GROUP BY 1")
    assert {r["name"]: r["n"] for r in counts} == {"k1": 1, "k2": 1, "k3": 1}


def test_cli_after(capsys: pytest.CaptureFixture[str], dag_node: Any) -> None:
    dsn = conninfo(dag_node)
    assert cli.main(["--dsn", dsn, "enqueue", "SELECT 1", "--at", "1h"]) == 0
    first = int(capsys.readouterr().out)
    assert cli.main(["--dsn", dsn, "enqueue", "SELECT 2", "--after", f"{first}"]) == 0
    second = int(capsys.readouterr().out)
    assert task(dag_node, second)["state"] == "waiting"
    assert cli.main(["--dsn", dsn, "tasks", "--state", "waiting"]) == 0
    assert f"{second}" in capsys.readouterr().out
    assert cli.main(["--dsn", dsn, "enqueue", "SELECT 3", "--after", "999999"]) == 1
    assert "do not exist or are not yours" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--dsn", dsn, "enqueue", "SELECT 3", "--after", "x,y"])
    assert cli.main(["--dsn", dsn, "cancel", str(first)]) == 0
    assert task(dag_node, second)["state"] == "cancelled"


def test_reschedule_client_and_cli(capsys: pytest.CaptureFixture[str], node: Any) -> None:
    with Client(conninfo(node, user="wf_alice")) as alice:
        later = alice.enqueue("SELECT 1", "rs", run_at=timedelta(hours=2))
        assert alice.reschedule(later, priority=1) is True
        assert alice.get(later).priority == 1
        # moved to now: it runs (workers are woken at commit)
        assert alice.reschedule(later, run_at=timedelta(0)) is True
        assert alice.wait([later], timeout=30)[0].state is TaskState.FINISHED
        assert alice.reschedule(later, priority=2) is False  # no longer queued
        with pytest.raises(InvalidArgumentError):
            alice.reschedule(later, priority=-1)
    dsn = conninfo(node)
    assert cli.main(["--dsn", dsn, "enqueue", "SELECT 2", "--at", "2h"]) == 0
    tid = int(capsys.readouterr().out)
    assert cli.main(["--dsn", dsn, "reschedule", str(tid), "--at", "0s", "--priority", "0"]) == 0
    assert capsys.readouterr().out == f"task {tid}: rescheduled\n"
    wait_tasks(node, [tid])
    assert cli.main(["--dsn", dsn, "reschedule", str(tid), "--priority", "3"]) == 1
    assert "it is finished" in capsys.readouterr().err
    assert cli.main(["--dsn", dsn, "reschedule", str(tid)]) == 1
    assert "--priority" in capsys.readouterr().err
