"""Batched commits (issue 15): a topic with ``"tasks_per_commit": N`` runs up to N of its tasks
in one transaction, each in a subtransaction together with its finished mark.

Which tasks shared a commit is read from ``txid_current()`` (the top-level transaction id, the
same in every subtransaction of a batch) that each task stores with its effect."""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from core_helpers import connect, install_signals, query, scalar, task, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until

TOPICS: dict[str, dict[str, float]] = {
    # one worker at a time, so every task of the topic goes through the same batches
    "batch": {
        "tasks_per_commit": 16,
        "batch_max_ms": 10000,
        "max_parallel_running_tasks_count": 1,
    },
    "spaced": {"tasks_per_commit": 16, "batch_max_ms": 10000, "delay_in_sec": 0.2},
    "pair": {
        "tasks_per_commit": 8,
        "batch_max_ms": 10000,
        "max_parallel_running_tasks_count": 2,
    },
    "big": {
        "tasks_per_commit": 64,
        "batch_max_ms": 10000,
        "max_parallel_running_tasks_count": 1,
        "retry_count": 3,
    },
}


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.topic_config": json.dumps(TOPICS),
            "pg_background_queue.max_parallel_running_tasks_count": "4",
            "pg_background_queue.worker_idle_timeout": "30s",
            "restart_after_crash": "on",
        }
    )
    query(n, "CREATE TABLE effects (tag text, n int, xid bigint, pid int)")
    install_signals(n)
    yield n
    destroy_node(n)


def enqueue_many(node: Any, sqls: list[str], topic: str) -> list[int]:
    """Enqueue every task in one transaction (one commit, so none starts before the others are
    there) and return their ids in order."""
    with connect(node, autocommit=False) as conn:
        return [
            int(
                conn.execute("SELECT pg_background_enqueue(%s, %s) AS id", (sql, topic)).fetchone()[
                    "id"
                ]
            )
            for sql in sqls
        ]


def effect(tag: str, n: int) -> str:
    return f"INSERT INTO public.effects VALUES ('{tag}', {n}, txid_current(), pg_backend_pid())"


def effects(node: Any, tag: str) -> list[dict[str, Any]]:
    return query(node, "SELECT n, xid, pid FROM effects WHERE tag = %s ORDER BY n", (tag,))


def test_tasks_of_a_batched_topic_share_commits_exactly_once(node: Any) -> None:
    ids = enqueue_many(node, [effect("share", i) for i in range(40)], "batch")
    rows = wait_tasks(node, ids)
    assert {r["state"] for r in rows} == {"finished"}
    # the tasks after a batch's first are never marked running: their finish counts the
    # attempt and records the start
    assert {r["attempts"] for r in rows} == {1}
    assert all(r["started_at"] is not None and r["started_at"] <= r["closed_at"] for r in rows), (
        "every task records when it started, before it finished"
    )
    assert {r["worker_pid"] for r in rows} == {None}
    got = effects(node, "share")
    assert [r["n"] for r in got] == list(range(40)), "every effect exactly once"
    commits = len({r["xid"] for r in got})
    # 40 tasks at 16 per commit: 3 commits, unless the machine was slow enough to spend the
    # 10 s budget; never one commit per task
    assert commits <= 6, f"{commits} commits for 40 tasks"


def test_a_failing_task_fails_alone_and_the_batch_goes_on(node: Any) -> None:
    sqls = [effect("alone", i) for i in range(10)]
    sqls[4] = "INSERT INTO public.effects VALUES ('alone', 1/0, txid_current(), 0)"
    ids = enqueue_many(node, sqls, "batch")
    rows = {r["id"]: r for r in wait_tasks(node, ids, states=("finished", "failed", "retrying"))}
    failed = rows[ids[4]]
    assert failed["state"] == "failed"
    assert failed["attempts"] == 1, "the failed attempt of a task never marked running counts"
    assert failed["error_history"][-1]["sqlstate"] == "22012"
    assert all(rows[t]["state"] == "finished" for t in ids if t != ids[4])
    got = effects(node, "alone")
    assert [r["n"] for r in got] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert len({r["xid"] for r in got}) <= 2, "the tasks after the failure joined the batch"


def test_session_state_does_not_leak_between_tasks_of_a_batch(node: Any) -> None:
    query(
        node,
        "CREATE FUNCTION public.leak_temp() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN CREATE TEMP TABLE leak (x int); RETURN 1; END $$",
    )
    query(
        node,
        "CREATE TABLE seen (path text, app text, locks bigint, temp regclass, xid bigint)",
    )
    query(node, "GRANT ALL ON seen TO PUBLIC")
    leak = (
        "SELECT set_config('search_path', 'pg_catalog', false), "
        "set_config('application_name', 'leak', true), "
        "pg_advisory_lock(42), public.leak_temp(), txid_current(), "
        "set_config('transaction_read_only', 'on', true)"
    )
    look = (
        "INSERT INTO public.seen SELECT current_setting('search_path'), "
        "current_setting('application_name'), "
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND pid = pg_backend_pid()), to_regclass('pg_temp.leak'), txid_current()"
    )
    ids = enqueue_many(node, [look, leak, look], "batch")
    rows = wait_tasks(node, ids)
    assert [r["state"] for r in rows] == ["finished"] * 3, [r["errors"] for r in rows]
    seen = query(node, "SELECT * FROM seen ORDER BY xid")
    assert len(seen) == 2
    assert seen[0]["xid"] == seen[1]["xid"], "the three tasks ran in one batch"
    fresh, after = seen
    assert after == fresh


def test_statements_that_cannot_run_in_a_transaction_block_run_alone(node: Any) -> None:
    query(
        node,
        "CREATE PROCEDURE public.commits() LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO public.effects VALUES ('alone-stmt', 1, 0, 0); COMMIT; END $$",
    )
    sqls = [
        effect("solo", 0),
        "VACUUM public.effects",
        effect("solo", 1),
        "CREATE INDEX CONCURRENTLY effects_n ON public.effects (n)",
        "CALL public.commits()",
        effect("solo", 2),
        f"{effect('solo', 3)}; {effect('solo', 4)}",
    ]
    ids = enqueue_many(node, sqls, "batch")
    rows = wait_tasks(node, ids)
    assert [r["state"] for r in rows] == ["finished"] * len(sqls), [
        (r["state"], r["error_history"]) for r in rows
    ]
    assert [r["n"] for r in effects(node, "solo")] == [0, 1, 2, 3, 4]


def test_rate_limit_holds_for_a_batched_topic(node: Any) -> None:
    ids = enqueue_many(node, [effect("spaced", i) for i in range(5)], "spaced")
    rows = wait_tasks(node, ids)
    starts = sorted(r["started_at"] for r in rows)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert all(g >= 0.19 for g in gaps), gaps


def test_concurrency_limit_holds_for_a_batched_topic(node: Any) -> None:
    # each task counts the workers running a task of the topic (itself included), and takes
    # a moment so that idle workers try to start the topic meanwhile
    sql = (
        "INSERT INTO public.effects SELECT 'pair', {}, txid_current(), "
        "(SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
        "AND backend_type = 'pg_background_queue worker' AND query LIKE '%''pair''%') "
        "FROM pg_sleep(0.02)"
    )
    ids = enqueue_many(node, [sql.format(i) for i in range(16)], "pair")
    wait_tasks(node, ids, timeout=60)
    running = [r["pid"] for r in effects(node, "pair")]
    assert len(running) == 16
    assert max(running) <= 2, running


def test_priorities_hold_across_batches(node: Any) -> None:
    # A batch is held in its first task; an urgent task of the same topic enqueued meanwhile
    # is the batch's next claim, ahead of the lower-priority tasks enqueued before it.
    # The batch's first task is enqueued alone: of several tasks enqueued at once, two idle
    # workers claiming at the same instant may start the second first (one locks the first
    # task, is refused because the other has just filled the topic, and holds the lock until
    # its claim's transaction ends). Once the topic is full, no claim locks its tasks.
    query(node, "CREATE TABLE order_seen (tag text, at serial)")
    first = (
        "WITH i AS (INSERT INTO public.order_seen (tag) VALUES ('low') RETURNING 1) "
        "SELECT public.wait_for('urgent-enqueued') FROM i"
    )
    low = enqueue_many(node, [first], "batch")
    poll_until(
        lambda: task(node, low[0])["state"] == "running",
        timeout=30,
        message="batch not started",
    )
    low += enqueue_many(node, ["INSERT INTO public.order_seen (tag) VALUES ('low')"] * 5, "batch")
    high = int(
        scalar(
            node,
            "SELECT pg_background_enqueue(%s, 'batch', 1)",
            ("INSERT INTO public.order_seen (tag) VALUES ('high')",),
        )
    )
    query(node, "INSERT INTO signals VALUES ('urgent-enqueued')")
    wait_tasks(node, [*low, high])
    tags = [r["tag"] for r in query(node, "SELECT tag FROM order_seen ORDER BY at")]
    assert tags == ["low", "high"] + ["low"] * 5, tags


def test_kill_9_mid_batch_leaves_no_effect_without_finished_and_no_finished_without_effect(
    node: Any,
) -> None:
    sleeper = (
        "WITH i AS (INSERT INTO public.effects VALUES ('crash', {n}, txid_current(), 0) "
        "RETURNING 1) SELECT public.wait_for('crash-go') FROM i"
    )
    sqls = [effect("crash", i) for i in range(20)]
    sqls[10] = sleeper.format(n=10)
    ids = enqueue_many(node, sqls, "big")
    n_of = {t: i for i, t in enumerate(ids)}

    def sleeping_worker() -> int | None:
        rows = query(
            node,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue worker' "
            "AND wait_event = 'PgSleep'",
        )
        return int(rows[0]["pid"]) if rows else None

    pid = poll_until(sleeping_worker, timeout=30, message="the batch did not reach the sleeper")
    # tasks 0..9 are done in the open batch: nobody sees them finished or their effects
    assert scalar(node, "SELECT count(*) FROM effects WHERE tag = 'crash'") == 0
    launcher = (
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue launcher'"
    )
    before = scalar(node, launcher)
    os.kill(pid, signal.SIGKILL)

    def restarted() -> bool:
        # the crash restart has happened once a new launcher runs (a query right after the
        # kill may still reach the server before the postmaster has noticed)
        try:
            now = scalar(node, launcher)
        except psycopg.OperationalError:
            return False
        return now is not None and now != before

    poll_until(restarted, timeout=60, message="the crash restart")

    def consistent_after_restart() -> bool | None:
        # one statement, so one snapshot for both sides
        try:
            row = query(
                node,
                "SELECT ARRAY(SELECT id FROM pg_background_tasks WHERE id = ANY(%s) "
                "AND state = 'finished' ORDER BY id) AS finished, "
                "ARRAY(SELECT n FROM effects WHERE tag = 'crash' ORDER BY n) AS done",
                (ids,),
            )[0]
        except psycopg.OperationalError:
            return None
        finished = sorted(n_of[t] for t in row["finished"])
        assert row["done"] == finished, row
        return True

    poll_until(consistent_after_restart, timeout=60, message="server did not come back")
    query(node, "INSERT INTO signals VALUES ('crash-go')")
    for _ in range(3):
        # checked repeatedly while the tasks are rerun
        consistent_after_restart()
    rows = wait_tasks(node, ids, timeout=90)
    assert {r["state"] for r in rows} == {"finished"}, [(r["id"], r["state"]) for r in rows]
    assert [r["n"] for r in effects(node, "crash")] == list(range(20))
    assert all(r["attempts"] <= 2 for r in rows)
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks WHERE state = 'running'") == 0


def test_cancel_of_a_task_running_in_a_batch_interrupts_it(node: Any) -> None:
    # the second task of a batch looks pending to others (its claim is not committed) and
    # its row is locked until the batch commits: the cancel must still reach the worker
    sleeper = (
        "WITH i AS (INSERT INTO public.effects VALUES ('cancel', 1, txid_current(), 0) "
        "RETURNING 1) SELECT public.wait_for('never') FROM i"
    )
    ids = enqueue_many(node, [effect("cancel", 0), sleeper, effect("cancel", 2)], "batch")
    poll_until(
        lambda: query(
            node,
            "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'pg_background_queue worker' "
            "AND query LIKE '%wait_for(''never'')%' AND wait_event = 'PgSleep'",
        ),
        timeout=30,
        message="the sleeper did not start",
    )
    assert scalar(node, "SELECT pg_background_cancel(%s)", (ids[1],)) is True
    rows = wait_tasks(node, ids, timeout=20)
    assert [r["state"] for r in rows] == ["finished", "cancelled", "finished"]
    assert [r["n"] for r in effects(node, "cancel")] == [0, 2]


def test_a_batch_task_given_back_at_shutdown_keeps_its_attempt(node: Any) -> None:
    """A worker told to stop in the middle of a batch gives the running task back (its effects
    rolled back, its attempt not burned), commits the tasks before it and leaves; the task
    runs again in another worker, and every effect happens exactly once."""
    sleeper = (
        "INSERT INTO public.effects VALUES ('giveback', 1, txid_current(), 0); "
        "SELECT public.wait_for('giveback-go')"
    )
    ids = enqueue_many(node, [effect("giveback", 0), sleeper, effect("giveback", 2)], "big")
    pid = poll_until(
        lambda: scalar(
            node,
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue worker' "
            "AND query LIKE '%wait_for(''giveback-go'')%' AND wait_event = 'PgSleep'",
        ),
        timeout=30,
        message="the sleeper did not start",
    )
    query(node, "SELECT pg_terminate_backend(%s)", (pid,))
    poll_until(
        lambda: scalar(
            node, "SELECT state = 'finished' FROM pg_background_tasks WHERE id = %s", (ids[0],)
        ),
        timeout=30,
        message="the batch's first task did not commit",
    )
    query(node, "INSERT INTO signals VALUES ('giveback-go')")
    rows = wait_tasks(node, ids, timeout=60)
    assert [r["state"] for r in rows] == ["finished"] * 3
    assert rows[1]["attempts"] == 1, "the given-back attempt was not counted"
    assert [r["n"] for r in effects(node, "giveback")] == [0, 1, 2]


def test_tasks_of_a_batch_keep_their_results(node: Any) -> None:
    """Each task of a batch keeps the rows its statement returned, the first (marked running
    before the batch) as well as the ones after it (finished without the running mark)."""
    ids = enqueue_many(
        node, [f"SELECT {i} AS v, 'r{i}' AS tag, txid_current() AS x" for i in range(6)], "batch"
    )
    rows = wait_tasks(node, ids)
    assert [r["state"] for r in rows] == ["finished"] * 6
    assert [[{k: v for k, v in row.items() if k != "x"} for row in r["result"]] for r in rows] == [
        [{"v": i, "tag": f"r{i}"}] for i in range(6)
    ]
    assert {r["result_truncated"] for r in rows} == {False}
    assert len({r["result"][0]["x"] for r in rows}) <= 2, "the tasks shared their commits"


def test_a_batch_writes_the_finished_marks_of_its_tasks_at_its_end(node: Any) -> None:
    """The tasks after a batch's first are marked finished by one statement in the batch's own
    transaction just before it commits (not one statement per task, in each task's
    subtransaction): their row versions carry the batch's top-level transaction id, the one
    each task stored with its effect."""
    ids = enqueue_many(node, [effect("atend", i) for i in range(40)], "batch")
    rows = wait_tasks(node, ids)
    assert [r["state"] for r in rows] == ["finished"] * 40
    assert [r["n"] for r in effects(node, "atend")] == list(range(40)), "every effect once"
    marks = query(
        node,
        "SELECT t.id, t.xmin::text::bigint = mod(e.xid, 4294967296) AS by_batch, t.attempts "
        "FROM pg_background_tasks t JOIN effects e ON e.tag = 'atend' "
        "AND t.sql_statement = format('INSERT INTO public.effects VALUES (''atend'', %%s, "
        "txid_current(), pg_backend_pid())', e.n) WHERE t.id = ANY(%s) ORDER BY t.id",
        (ids,),
    )
    assert len(marks) == 40
    assert {m["attempts"] for m in marks} == {1}
    batches = len({r["xid"] for r in effects(node, "atend")})
    by_batch = sum(m["by_batch"] for m in marks)
    # each batch's first task was marked running before the batch began: its finished mark
    # stays in its subtransaction; every other task's is the batch's
    assert by_batch == 40 - batches, f"{by_batch} of 40 marks written by the batch ({batches})"


def test_later_tasks_of_a_batch_take_the_earlier_ones_as_finished(node: Any) -> None:
    """A later task of the same batch acts on an earlier one that ran (its row waits for the
    batch's finished mark, written at the batch's end, and still looks pending): cancelling
    it does nothing and returns false, waiting for it returns at once, and the earlier task
    ends finished, its effect exactly once.  The later tasks act only once the earlier one's
    effect is there; the scenario is repeated until all of them ran in one batch, the victim
    before the others (another worker's claim refused by the topic's limit may lock a task
    for a moment, and the victim then runs after a later one: in a later batch, or later in
    the same one)."""
    for attempt in range(8):
        tag = f"later{attempt}"
        ran = f"FROM public.effects WHERE tag = '{tag}' AND n = 1"
        with connect(node, autocommit=False) as conn:

            def enqueue(sql: str) -> int:
                row = conn.execute("SELECT pg_background_enqueue(%s, 'batch') AS id", (sql,))
                return int(row.fetchone()["id"])

            first = enqueue(effect(tag, 0))
            victim = enqueue(effect(tag, 1))
            canceller = enqueue(
                f"WITH e AS ({effect(tag, 2)}) SELECT pg_background_cancel({victim}) AS c {ran}"
            )
            waiter = enqueue(
                f"WITH e AS ({effect(tag, 3)}) SELECT w.id FROM (SELECT 1 {ran}) r, "
                f"pg_background_wait(ARRAY[{victim}::bigint], interval '20 s') w"
            )
        rows = wait_tasks(node, [first, victim, canceller, waiter], timeout=60)
        assert [r["state"] for r in rows] == ["finished"] * 4, rows
        assert {r["attempts"] for r in rows} == {1}
        got = effects(node, tag)
        assert [r["n"] for r in got] == [0, 1, 2, 3], "every effect exactly once"
        # one batch, and the victim first in it (the canceller and the waiter read its effect)
        if len({r["xid"] for r in got[1:]}) == 1 and rows[2]["result"] and rows[3]["result"]:
            assert rows[2]["result"] == [{"c": False}], "the victim had run: nothing to cancel"
            assert rows[3]["result"] == [{"id": victim}], "the wait returned at once"
            assert rows[3]["closed_at"] - rows[3]["started_at"] < timedelta(seconds=10)
            return
    pytest.fail("the earlier task and the later ones never ran in one batch")
