"""Core execution semantics on a real cluster: identity, session isolation,
atomicity, non-transactional statements, commit-time wake-up, quiet logs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from core_helpers import (
    connect,
    enqueue,
    make_role,
    query,
    scalar,
    task,
    wait_tasks,
    worker_pids,
)
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until, server_log


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            "pg_background_queue.worker_idle_timeout": "60s",
            "log_min_messages": "info",
        }
    )
    query(
        n,
        "CREATE TABLE audit (tag text, cur text, sess text, pid int, "
        "search_path text, stmt_timeout text, app text)",
    )
    query(n, "GRANT ALL ON audit TO PUBLIC")
    make_role(n, "alice")
    make_role(n, "bob")
    yield n
    if os.environ.get("PGBQ_DUMP_LOG"):
        print(server_log(n))
    destroy_node(n)


AUDIT = (
    "INSERT INTO public.audit SELECT '{tag}', current_user, session_user, "
    "pg_backend_pid(), current_setting('search_path'), "
    "current_setting('statement_timeout'), current_setting('application_name')"
)


def test_task_runs_as_enqueuer(node: Any) -> None:
    a = enqueue(node, AUDIT.format(tag="as-alice"), user="alice")
    b = enqueue(node, AUDIT.format(tag="as-bob"), user="bob")
    rows = wait_tasks(node, [a, b])
    assert [r["state"] for r in rows] == ["finished", "finished"]
    got = {r["tag"]: (r["cur"], r["sess"]) for r in query(node, "SELECT * FROM audit")}
    assert got["as-alice"] == ("alice", "alice")
    assert got["as-bob"] == ("bob", "bob")
    assert str(task(node, a)["owner"]) == "alice"


@pytest.mark.parametrize(
    ("escape", "sqlstate"),
    [
        ("SET ROLE postgres", "42501"),
        ("SET SESSION AUTHORIZATION postgres", "42501"),
        ("SET ROLE bob", "42501"),
        ("RESET ROLE; CREATE ROLE mallory SUPERUSER", "42501"),
        ("RESET SESSION AUTHORIZATION; ALTER ROLE alice SUPERUSER", "42501"),
    ],
)
def test_task_cannot_climb_above_its_role(node: Any, escape: str, sqlstate: str) -> None:
    t = enqueue(node, escape, user="alice")
    row = wait_tasks(node, [t])[0]
    assert row["state"] == "failed"
    assert row["error_history"][-1]["sqlstate"] == sqlstate
    assert scalar(node, "SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'") is False
    assert scalar(node, "SELECT count(*) FROM pg_roles WHERE rolname = 'mallory'") == 0


def test_reset_role_returns_to_enqueuer(node: Any) -> None:
    t = enqueue(
        node,
        "RESET ROLE; RESET SESSION AUTHORIZATION; " + AUDIT.format(tag="after-reset"),
        user="alice",
    )
    assert wait_tasks(node, [t])[0]["state"] == "finished"
    row = query(node, "SELECT cur, sess FROM audit WHERE tag = 'after-reset'")[0]
    assert (row["cur"], row["sess"]) == ("alice", "alice")


def test_session_state_does_not_leak_between_tasks(node: Any) -> None:
    # A dedicated role gets its own worker; tasks enqueued one at a time after
    # the previous one finished are all run by that single idle worker.
    make_role(node, "solo")
    query(node, "GRANT alice TO solo")
    query(node, "CREATE SCHEMA IF NOT EXISTS elsewhere")

    def run(sql: str) -> dict[str, Any]:
        return wait_tasks(node, [enqueue(node, sql, user="solo")])[0]

    first = run(
        "SET search_path = elsewhere; SET statement_timeout = '1234s'; "
        "SET application_name = 'leaky'; SET ROLE alice; "
        "PREPARE p AS SELECT 1; "
        "SELECT pg_advisory_lock(4242); "
        "CREATE TEMP TABLE leftover (x int); " + AUDIT.format(tag="first")
    )
    assert first["state"] == "finished", first["errors"]
    prepared = run("EXECUTE p")
    temp = run("SELECT 1 FROM leftover")
    last = run(AUDIT.format(tag="second"))
    assert prepared["state"] == "failed"
    assert prepared["error_history"][0]["sqlstate"] == "26000"
    assert temp["state"] == "failed"
    assert temp["error_history"][0]["sqlstate"] == "42P01"
    assert last["state"] == "finished"
    audit = {
        r["tag"]: r for r in query(node, "SELECT * FROM audit WHERE tag IN ('first', 'second')")
    }
    assert audit["first"]["pid"] == audit["second"]["pid"], "one worker ran both"
    assert audit["first"]["cur"] == "alice"
    assert audit["second"]["cur"] == "solo"
    assert audit["second"]["sess"] == "solo"
    assert audit["second"]["search_path"] == '"$user", public'
    assert audit["second"]["stmt_timeout"] == "0"
    assert audit["second"]["app"] != "leaky"
    # the advisory lock was released: a client can take it at once
    assert scalar(node, "SELECT pg_try_advisory_lock(4242)") is True


def test_multi_statement_task_is_all_or_nothing(node: Any) -> None:
    query(node, "CREATE TABLE atom (x int)")
    t = enqueue(node, "INSERT INTO atom VALUES (1); INSERT INTO atom VALUES (2); SELECT 1/0")
    row = wait_tasks(node, [t])[0]
    assert row["state"] == "failed"
    assert row["error_history"][0]["sqlstate"] == "22012"
    assert scalar(node, "SELECT count(*) FROM atom") == 0
    ok = enqueue(node, "INSERT INTO atom VALUES (1); INSERT INTO atom VALUES (2)")
    assert wait_tasks(node, [ok])[0]["state"] == "finished"
    assert scalar(node, "SELECT count(*) FROM atom") == 2


@pytest.mark.parametrize("returns_rows", [False, True], ids=["no-result", "result"])
@pytest.mark.parametrize("who", ["the task itself", "another session"])
def test_a_task_whose_row_changes_while_it_runs_still_finishes_once(
    node: Any, who: str, returns_rows: bool
) -> None:
    """The finished mark finds the row by the version the running mark wrote (a TID scan);
    when that version is gone - the task's own statements, or another session, updated the
    row while it ran - it finds it by id. Either way the task ends finished after one
    attempt, its effect once, the other change kept. Both kinds of finish (with and without
    a result) are covered."""
    query(node, "CREATE TABLE IF NOT EXISTS rowchange (tag text)")
    tag = f"{who[:4]}-{returns_rows}"
    lock = 4242 + returns_rows
    mine = "worker_pid = pg_backend_pid() AND state = 'running'"
    touch = (
        f"UPDATE pg_background_tasks SET errors = 'touched' WHERE {mine}; "
        if who == "the task itself"
        else f"DO $$ BEGIN PERFORM pg_advisory_xact_lock({lock}); END $$; "
    )
    sql = f"{touch}INSERT INTO rowchange VALUES ('{tag}')" + (
        f"; SELECT '{tag}' AS tag" if returns_rows else ""
    )
    with connect(node) as holder:
        if who == "another session":
            holder.execute("SELECT pg_advisory_lock(%s)", (lock,))
        t = enqueue(node, sql)
        if who == "another session":
            poll_until(
                lambda: (
                    scalar(node, "SELECT state::text FROM pg_background_tasks WHERE id = %s", (t,))
                    == "running"
                ),
                timeout=30,
                message="task running",
            )
            query(node, "UPDATE pg_background_tasks SET errors = 'touched' WHERE id = %s", (t,))
            holder.execute("SELECT pg_advisory_unlock(%s)", (lock,))
        row = wait_tasks(node, [t])[0]
    assert row["state"] == "finished", row
    assert row["attempts"] == 1
    assert row["errors"] == "touched"
    assert row["worker_pid"] is None
    assert row["result"] == ([{"tag": tag}] if returns_rows else None)
    assert scalar(node, "SELECT count(*) FROM rowchange WHERE tag = %s", (tag,)) == 1


def test_statement_timeout_applies_to_each_statement(node: Any) -> None:
    """statement_timeout works as in a client session: SET by the script or the role's
    default, per statement; a task may catch it and go on (it is not the queue's
    interrupt, so the watchdog leaves the worker alone)."""
    query(node, "CREATE TABLE st (tag text)")
    query(node, "GRANT ALL ON st TO PUBLIC")
    make_role(node, "timid")
    query(node, "ALTER ROLE timid SET statement_timeout = '300ms'")
    scripted = enqueue(node, "SET statement_timeout = '200ms'; SELECT pg_sleep(5)")
    by_role = enqueue(node, "SELECT pg_sleep(5)", user="timid")
    each = enqueue(
        node,
        "SET statement_timeout = '400ms'; SELECT pg_sleep(0.3); SELECT pg_sleep(0.3); "
        "INSERT INTO public.st VALUES ('each')",
    )
    caught = enqueue(
        node,
        "SET statement_timeout = '100ms'; DO $$ DECLARE t0 timestamptz := clock_timestamp(); "
        "BEGIN BEGIN PERFORM pg_sleep(5); EXCEPTION WHEN query_canceled THEN NULL; END; "
        "WHILE clock_timestamp() < t0 + interval '1.2 s' LOOP PERFORM 1; END LOOP; "
        "INSERT INTO public.st VALUES ('caught'); END $$",
    )
    rows = {r["id"]: r for r in wait_tasks(node, [scripted, by_role, each, caught], timeout=20)}
    for t in (scripted, by_role):
        assert rows[t]["state"] == "failed"
        (err,) = rows[t]["error_history"]
        assert (err["sqlstate"], err["message"]) == (
            "57014",
            "canceling statement due to statement timeout",
        )
    assert rows[each]["state"] == "finished"
    assert rows[caught]["state"] == "finished"
    assert sorted(r["tag"] for r in query(node, "SELECT tag FROM st")) == ["caught", "each"]
    # the bookkeeping is not subject to the role's statement_timeout
    after = enqueue(node, "SELECT 1", user="timid")
    assert wait_tasks(node, [after])[0]["state"] == "finished"


def test_deferred_constraint_failure_rolls_back_finish(node: Any) -> None:
    query(
        node,
        "CREATE TABLE parent (id int PRIMARY KEY); "
        "CREATE TABLE child (pid int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
    )
    t = enqueue(node, "INSERT INTO child VALUES (42)")
    row = wait_tasks(node, [t])[0]
    assert row["state"] == "failed", "the commit failed, so the task is not finished"
    assert row["error_history"][0]["sqlstate"] == "23503"
    assert scalar(node, "SELECT count(*) FROM child") == 0


def test_non_transactional_statements(node: Any) -> None:
    query(
        node,
        "CREATE TABLE big (x int); INSERT INTO big SELECT generate_series(1, 1000); "
        "DELETE FROM big WHERE x % 2 = 0",
    )
    query(
        node,
        """
        CREATE PROCEDURE commit_twice() LANGUAGE plpgsql AS $$
        BEGIN
            CREATE TABLE IF NOT EXISTS proc_log (step int);
            INSERT INTO proc_log VALUES (1);
            COMMIT;
            INSERT INTO proc_log VALUES (2);
            COMMIT;
        END $$""",
    )
    ids = [
        enqueue(node, "VACUUM (ANALYZE) big"),
        enqueue(node, "CREATE INDEX CONCURRENTLY big_x ON big (x)"),
        enqueue(node, "CALL commit_twice()"),
        enqueue(node, "REINDEX TABLE CONCURRENTLY big"),
    ]
    rows = wait_tasks(node, ids, timeout=60)
    assert [r["state"] for r in rows] == ["finished"] * 4, [r["errors"] for r in rows]
    assert (
        scalar(
            node, "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'big'"
        )
        is True
    )
    assert (
        scalar(node, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'big_x'::regclass") is True
    )
    assert scalar(node, "SELECT array_agg(step ORDER BY step) FROM proc_log") == [1, 2]


def test_rolled_back_enqueue_never_runs(node: Any) -> None:
    query(node, "CREATE TABLE rb (tag text)")
    with connect(node, autocommit=False) as conn:
        conn.execute("SELECT pg_background_enqueue('INSERT INTO rb VALUES (''ghost'')')")
        conn.rollback()
        marker = conn.execute(
            "SELECT pg_background_enqueue('INSERT INTO rb VALUES (''marker'')') AS id"
        ).fetchone()
        conn.commit()
    assert marker is not None
    wait_tasks(node, [marker["id"]])
    assert [r["tag"] for r in query(node, "SELECT tag FROM rb")] == ["marker"]


def test_cancel_right_after_enqueue_or_retry_is_never_lost(node: Any) -> None:
    """pg_background_cancel() racing the claim (pending, being claimed, just started) always
    returns true and the task always ends cancelled; a lost cancel would let it run 30 s."""
    ids = []
    with connect(node) as conn:

        def call(sql: str, arg: Any) -> Any:
            row = conn.execute(f"SELECT {sql}(%s) AS v", (arg,)).fetchone()
            assert row is not None
            return row["v"]

        for i in range(40):
            task_id = call("pg_background_enqueue", f"SELECT pg_sleep(30) -- {i}")
            assert call("pg_background_cancel", task_id) is True
            ids.append(task_id)
        rows = wait_tasks(node, ids, timeout=20)
        assert {r["state"] for r in rows} == {"cancelled"}
        for task_id in ids[:10]:
            assert call("pg_background_retry", task_id) is True
            assert call("pg_background_cancel", task_id) is True
    rows = wait_tasks(node, ids, timeout=20)
    assert {r["state"] for r in rows} == {"cancelled"}


def test_pickup_is_woken_at_commit(node: Any) -> None:
    # an idle worker exists after the first task; the next one starts at once
    first = enqueue(node, "SELECT 1")
    wait_tasks(node, [first])
    with connect(node, autocommit=False) as conn:
        t = conn.execute("SELECT pg_background_enqueue('SELECT 2') AS id").fetchone()
        assert t is not None
        # not before commit
        assert (
            scalar(node, "SELECT state FROM pg_background_tasks WHERE id = %s", (t["id"],)) is None
        )
        conn.commit()
    row = wait_tasks(node, [t["id"]], timeout=10)[0]
    assert row["state"] == "finished"


def test_enqueue_is_silent_and_logs_nothing_per_task(node: Any) -> None:
    notices: list[str] = []
    with psycopg.connect(node_conninfo(node), autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
        log_before = log_size(node)
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT pg_background_enqueue_many(array_agg('SELECT ' || g)) "
                "FROM generate_series(1, 200) g"
            ).fetchall()
        ]
        ids.append(conn.execute("SELECT pg_background_enqueue('SELECT 1')").fetchone()[0])
    assert notices == []
    wait_tasks(node, ids, timeout=60)
    new_log = read_log(node)[log_before:]
    assert "SELECT 17" not in new_log
    per_task = [
        line for line in new_log.splitlines() if "pg_background_queue" in line and "LOG:" in line
    ]
    assert len(per_task) < 5, per_task


def node_conninfo(node: Any) -> str:
    from pg_background_queue.testing.cluster import conninfo

    return conninfo(node)


def log_size(node: Any) -> int:
    return len(read_log(node))


def read_log(node: Any) -> str:
    with open(node.pg_log_file, encoding="utf-8", errors="replace") as f:
        return f.read()


TASKS_OF = (
    "SELECT id, owner, state, started_at, closed_at FROM pg_background_tasks WHERE id = ANY(%s)"
)


def test_workers_count_matches_processes(node: Any) -> None:
    ids = [enqueue(node, "SELECT pg_sleep(0.5)", user=u) for u in ("alice", "bob", "alice")]

    def running() -> bool:
        return (
            scalar(
                node,
                "SELECT count(*) FROM pg_background_tasks WHERE id = ANY(%s) AND state = 'running'",
                (ids,),
            )
            >= 2
        )

    try:
        poll_until(running, timeout=15, message="tasks did not start")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}\nworkers: {query(node, 'SELECT * FROM pg_background_queue_workers')}"
            f"\ntasks: {query(node, TASKS_OF, (ids,))}"
        ) from exc
    for _ in range(5):
        assert scalar(node, "SELECT pg_background_queue_active_workers_count()") == len(
            worker_pids(node)
        )
    wait_tasks(node, ids)
    pids = worker_pids(node)
    assert scalar(node, "SELECT pg_background_queue_active_workers_count()") == len(pids)
    view = query(
        node,
        "SELECT pid, role, state FROM pg_background_queue_workers "
        "WHERE state <> 'maintenance' ORDER BY pid",
    )
    assert [v["pid"] for v in view] == pids
    # a terminated worker disappears from the count
    victim = pids[0]
    query(node, "SELECT pg_terminate_backend(%s)", (victim,))
    poll_until(lambda: victim not in worker_pids(node), timeout=10, message="worker did not exit")
    poll_until(
        lambda: (
            scalar(node, "SELECT pg_background_queue_calibrate_workers_count()")
            == len(worker_pids(node))
        ),
        timeout=10,
        message="count drifted",
    )


def test_views_show_own_workers_only(node: Any) -> None:
    t = enqueue(node, "SELECT pg_sleep(1)", user="alice")
    poll_until(
        lambda: task(node, t)["state"] == "running", timeout=15, message="task did not start"
    )
    mine = query(
        node,
        "SELECT role, task_id FROM pg_background_queue_workers WHERE state = 'running'",
        user="alice",
    )
    assert {"role": "alice", "task_id": t} in mine
    theirs = query(node, "SELECT role FROM pg_background_queue_workers", user="bob")
    assert all(r["role"] == "bob" for r in theirs)
    wait_tasks(node, [t])


def test_several_databases_at_once(node: Any) -> None:
    query(node, "DROP DATABASE IF EXISTS other")
    query(node, "CREATE DATABASE other")
    query(node, "CREATE EXTENSION pg_background_queue", dbname="other")
    query(node, "CREATE TABLE hits (db text)", dbname="other")
    query(node, "CREATE TABLE IF NOT EXISTS hits (db text)")
    a = enqueue(node, "INSERT INTO hits VALUES (current_database())", dbname="other")
    b = enqueue(node, "INSERT INTO hits VALUES (current_database())")
    wait_tasks(node, [a], dbname="other")
    wait_tasks(node, [b])
    assert scalar(node, "SELECT db FROM hits", dbname="other") == "other"
    assert scalar(node, "SELECT db FROM hits") == "postgres"
    # DROP DATABASE is not blocked by our idle workers connected to it
    query(node, "DROP DATABASE other")
