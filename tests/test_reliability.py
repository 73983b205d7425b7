"""Reliability under faults, on real clusters and real processes.

Every scenario runs a counter workload: task k does ``UPDATE counters SET n = n + 1 WHERE
task = k`` (plus a little work), so after the dust settles a finished task must have n = 1
exactly and a failed or cancelled one n = 0 (its killed attempts rolled back), and no task
may be missing. Covered here, beyond tests/test_core_faults.py (single-task versions of
SIGKILL, immediate/clean shutdown, launcher SIGTERM, an idle standby):

* a) ten or more ``kill -9`` of random busy workers and two immediate shutdowns during a
  3000-task run;
* c) a streaming standby of a busy primary: nothing runs there, enqueue fails with 25006;
  the primary is stopped hard, the standby promoted, and the queue finishes there;
* d) ``pg_terminate_backend`` of a busy worker gives its task back without burning an attempt;
* e) ``max_worker_processes`` exhausted by parallel query workers: tasks wait, the server log
  says why, and they run once slots free up;
* f) ``kill -9`` of the launcher;
* regressions: orphan recovery crashed the server (segfault), and took tasks claimed during
  its scan for orphans under load.

(b, a clean shutdown in the middle of long tasks on several workers, is
test_core_faults.py::test_clean_shutdown_burns_no_attempt.)

Figures are printed (``pytest -s``) and, when ``PGBQ_RELIABILITY_REPORT`` names a file,
appended to it as one JSON line per scenario.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
import pytest

from core_helpers import connect, query, scalar
from pg_background_queue.testing.cluster import destroy_node, poll_until, server_log
from pg_background_queue.testing.pytest_plugin import MakeCluster

T = TypeVar("T")

ACTIVE = ("pending", "running", "retrying")
CHUNK = 100
# The tasks run as the bootstrap superuser; a rolled-back attempt leaves n unchanged.
COUNTER_SQL = "UPDATE public.counters SET n = n + 1 WHERE task = {k}; SELECT pg_sleep({sleep})"
# Blocks until the test releases its exclusive advisory lock (interruptible, like any wait).
GATED_SQL = (
    "UPDATE public.counters SET n = n + 1 WHERE task = {k}; "
    "SELECT pg_advisory_xact_lock_shared(4242)"
)
CRASH_RESTART_LOG = "all server processes terminated; reinitializing"
PGBQ_BACKENDS = (
    "'pg_background_queue launcher', 'pg_background_queue worker', "
    "'pg_background_queue maintenance'"
)

# Settings of the fault clusters: retries enough to survive repeated kills (topic "fragile"
# has none, so a kill that hits one of its tasks fails it), four workers.
FAULT_CONF: dict[str, Any] = {
    "restart_after_crash": "on",
    "pg_background_queue.retry_count": 5,
    "pg_background_queue.max_parallel_running_tasks_count": 4,
    "pg_background_queue.worker_idle_timeout": "30s",
    "pg_background_queue.topic_config": json.dumps({"fragile": {"retry_count": 0}}),
}


def report(scenario: str, figures: dict[str, Any]) -> None:
    """Print the figures and append them to $PGBQ_RELIABILITY_REPORT as one JSON line."""
    line = json.dumps({"scenario": scenario, **figures}, sort_keys=True)
    print(f"\n[reliability] {line}")
    path = os.environ.get("PGBQ_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")


def up(fn: Callable[[], T]) -> Callable[[], T | None]:
    """A poll condition for which a restarting server means 'not yet'."""

    def wrapped() -> T | None:
        try:
            return fn()
        except psycopg.OperationalError:
            return None

    return wrapped


def setup_counters(node: Any, total: int) -> None:
    query(node, "CREATE TABLE counters (task int PRIMARY KEY, n int NOT NULL)")
    query(node, "INSERT INTO counters SELECT g, 0 FROM generate_series(1, %s) g", (total,))
    query(node, "CREATE TABLE task_keys (id bigint PRIMARY KEY, k int NOT NULL UNIQUE)")


def enqueue_counters(
    node: Any,
    keys: Iterable[int],
    *,
    sql: str = COUNTER_SQL,
    sleep: float = 0.0,
    topic: Callable[[int], str | None] = lambda k: None,
) -> int:
    """Enqueue one counter task per key and remember id -> key. Keys go in chunks of CHUNK,
    split by topic within a chunk, so that the topics interleave in the queue's order."""
    all_keys = list(keys)
    with connect(node) as conn:
        for i in range(0, len(all_keys), CHUNK):
            by_topic: dict[str | None, list[int]] = {}
            for k in all_keys[i : i + CHUNK]:
                by_topic.setdefault(topic(k), []).append(k)
            for name, part in by_topic.items():
                conn.execute(
                    "INSERT INTO task_keys (id, k) "
                    "SELECT e.id, (%s::int[])[e.ord] "
                    "FROM pg_background_enqueue_many(%s::text[], %s) WITH ORDINALITY AS e(id, ord)",
                    (part, [sql.format(k=k, sleep=sleep) for k in part], name),
                )
    return len(all_keys)


def states(node: Any) -> dict[str, int]:
    rows = query(node, "SELECT state::text AS s, count(*) AS c FROM pg_background_tasks GROUP BY 1")
    return {r["s"]: r["c"] for r in rows}


def wait_all_terminal(node: Any, timeout: float) -> dict[str, int]:
    return poll_until(
        up(lambda: (s := states(node)) and not any(s.get(a) for a in ACTIVE) and s),
        timeout=timeout,
        interval=0.2,
        message="every task terminal",
    )


def check_exactly_once(node: Any, total: int) -> dict[str, int]:
    """Assert the counter invariants on node's own data; return the figures."""
    rows = query(
        node,
        """
        SELECT t.state::text AS state, c.n, count(*) AS tasks,
               count(*) FILTER (WHERE t.attempts > 1) AS retried,
               coalesce(sum(jsonb_array_length(t.error_history)), 0) AS interrupted,
               count(*) FILTER (WHERE t.attempts <> jsonb_array_length(t.error_history)
                                + CASE WHEN t.state = 'finished' THEN 1 ELSE 0 END) AS miscounted,
               count(*) FILTER (WHERE EXISTS (
                   SELECT 1 FROM jsonb_array_elements(t.error_history) e
                   WHERE e->>'sqlstate' <> '57P02')) AS other_errors
          FROM counters c
          LEFT JOIN task_keys m ON m.k = c.task
          LEFT JOIN pg_background_tasks t ON t.id = m.id
         GROUP BY 1, 2 ORDER BY 1, 2
        """,
    )
    by = {(r["state"], r["n"]): r for r in rows}
    lost = sum(r["tasks"] for r in rows if r["state"] is None)
    duplicated = sum(r["tasks"] for r in rows if r["n"] > 1)
    finished = sum(r["tasks"] for r in rows if r["state"] == "finished")
    failed = sum(r["tasks"] for r in rows if r["state"] == "failed")
    figures = {
        "tasks": sum(r["tasks"] for r in rows),
        "finished": finished,
        "failed": failed,
        "lost": lost,
        "duplicated": duplicated,
        "tasks_retried": sum(int(r["retried"]) for r in rows),
        "attempts_interrupted": sum(int(r["interrupted"]) for r in rows),
    }
    summary = {f"{s}/n={n}": int(r["tasks"]) for (s, n), r in by.items()}
    assert lost == 0, f"tasks lost: {summary}"
    assert duplicated == 0, f"effects applied more than once: {summary}"
    assert figures["tasks"] == total, summary
    assert finished + failed == total, f"only finished or failed expected: {summary}"
    assert all(r["n"] == 1 for r in rows if r["state"] == "finished"), summary
    assert all(r["n"] == 0 for r in rows if r["state"] == "failed"), summary
    assert sum(int(r["miscounted"]) for r in rows) == 0, "attempts != recorded failures (+1)"
    assert sum(int(r["other_errors"]) for r in rows) == 0, "only interruptions (57P02) expected"
    return figures


def live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def task_workers(node: Any) -> list[dict[str, Any]]:
    return query(
        node,
        "SELECT pid, state, task_id FROM pg_background_queue_workers "
        "WHERE state IN ('idle', 'running') ORDER BY pid",
    )


def wait_workers_back(node: Any, old_pids: Sequence[int], timeout: float = 60) -> list[int]:
    """After a crash restart: the old processes are gone and a new task worker runs."""

    def back() -> list[int] | None:
        if any(live(p) for p in old_pids):
            return None
        pids = [w["pid"] for w in task_workers(node)]
        fresh = [p for p in pids if p not in old_pids]
        return fresh or None

    return poll_until(up(back), timeout=timeout, interval=0.05, message="workers back")


def task_row(node: Any, task_id: int) -> dict[str, Any]:
    return query(node, "SELECT * FROM pg_background_tasks WHERE id = %s", (task_id,))[0]


def finished_count(node: Any) -> int:
    return int(scalar(node, "SELECT count(*) FROM pg_background_tasks WHERE state = 'finished'"))


def pgbq_pids(node: Any) -> list[int]:
    """Launcher, task and maintenance workers: all of them die in a crash restart."""
    rows = query(node, f"SELECT pid FROM pg_stat_activity WHERE backend_type IN ({PGBQ_BACKENDS})")
    return [r["pid"] for r in rows]


# --------------------------------------------------------------------------------------
# a) exactly once under kill -9 and immediate shutdowns
# --------------------------------------------------------------------------------------

TOTAL_A = 3000
KILLS_A = 10
RESTARTS_A = 2


def test_exactly_once_under_kill9_and_immediate_shutdowns(make_cluster: MakeCluster) -> None:
    node = make_cluster(extra_conf=FAULT_CONF)
    setup_counters(node, TOTAL_A)
    rng = random.Random(int(os.environ.get("PGBQ_SEED", "0")) or None)
    enqueue_counters(
        node,
        range(1, TOTAL_A + 1),
        sleep=0.02,
        topic=lambda k: "fragile" if k % 3 == 0 else None,
    )
    # immediate shutdowns in the middle and at the end of the kills
    plan = ["kill"] * 5 + ["immediate"] + ["kill"] * (KILLS_A - 5) + ["immediate"]
    step = TOTAL_A // (len(plan) * 3)
    kills = restarts = mid_task = 0
    t0 = time.monotonic()
    i = 0
    while i < len(plan):
        # let the queue make progress, and strike while a worker is inside a task
        base = poll_until(up(lambda: finished_count(node)), timeout=30, message="server up")
        busy = poll_until(
            up(
                lambda b=base: (
                    finished_count(node) >= b + step
                    and [w for w in task_workers(node) if w["state"] == "running"]
                )
            ),
            timeout=60,
            interval=0.02,
            message=f"progress of {step} tasks with a busy worker (after {kills} kills)",
        )
        try:
            old = pgbq_pids(node)
            if plan[i] == "kill":
                victim = rng.choice(busy)
                os.kill(victim["pid"], signal.SIGKILL)
                kills += 1
                mid_task += 1 if victim["task_id"] else 0
            else:
                node.stop(["-m", "immediate"])
                node.start()
                restarts += 1
        except (ProcessLookupError, psycopg.OperationalError):
            continue  # the server restarted by itself meanwhile: strike again
        i += 1
        wait_workers_back(node, old)
    faults_s = time.monotonic() - t0
    left = states(node)
    final = wait_all_terminal(node, timeout=180)
    figures = check_exactly_once(node, TOTAL_A)
    report(
        "kill9_and_immediate_shutdown",
        {
            "kills": kills,
            "kills_mid_task": mid_task,
            "immediate_restarts": restarts,
            "server_crash_restarts": server_log(node).count(CRASH_RESTART_LOG),
            "active_after_faults": sum(left.get(a, 0) for a in ACTIVE),
            "faults_seconds": round(faults_s, 1),
            "states": final,
            **figures,
        },
    )
    assert kills >= KILLS_A
    assert restarts >= RESTARTS_A
    # one crash restart per kill, none of the server's own making
    assert server_log(node).count(CRASH_RESTART_LOG) == kills
    assert sum(left.get(a, 0) for a in ACTIVE) > 0, "the faults must land while work is queued"


# --------------------------------------------------------------------------------------
# c) streaming standby of a busy primary, then failover
# --------------------------------------------------------------------------------------

TOTAL_C = 1200


def test_busy_standby_runs_nothing_and_failover_keeps_exactly_once(
    make_cluster: MakeCluster,
) -> None:
    node = make_cluster(extra_conf=FAULT_CONF)
    setup_counters(node, TOTAL_C)
    first = TOTAL_C // 3
    enqueue_counters(node, range(1, first + 1), sleep=0.02)
    poll_until(lambda: finished_count(node) > 0, timeout=30, message="primary busy")
    replica = None
    try:
        replica = node.backup().spawn_replica("standby").start()
        # the rest of the work is enqueued while the standby streams: ~10 s of tasks
        enqueue_counters(node, range(first + 1, TOTAL_C + 1), sleep=0.04)
        libraries = str(scalar(replica, "SHOW shared_preload_libraries"))
        assert "pg_background_queue" in [lib.strip() for lib in libraries.split(",")]
        assert scalar(replica, "SELECT pg_is_in_recovery()") is True
        # the enqueues reach the standby (as any committed row would) ...
        poll_until(
            lambda: scalar(replica, "SELECT count(*) FROM task_keys") == TOTAL_C,
            timeout=30,
            message="enqueues replicated",
        )
        # ... and so does the primary's progress ...
        seen = finished_count(replica)
        poll_until(lambda: finished_count(replica) > seen, timeout=30, message="replay")
        # ... but the standby runs nothing itself: no launcher, no worker, no slot in use
        assert query(replica, "SELECT * FROM pg_background_queue_workers") == []
        assert scalar(replica, "SELECT pg_background_queue_active_workers_count()") == 0
        assert (
            scalar(
                replica,
                f"SELECT count(*) FROM pg_stat_activity WHERE backend_type IN ({PGBQ_BACKENDS})",
            )
            == 0
        )
        for sql, params in (
            ("SELECT pg_background_enqueue(%s)", ("SELECT 1",)),
            ("SELECT * FROM pg_background_enqueue_many(%s::text[])", (["SELECT 1"],)),
        ):
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
                query(replica, sql, params)
            assert refused.value.sqlstate == "25006"
        # fail over while the primary's workers are inside tasks
        poll_until(
            lambda: [w for w in task_workers(node) if w["state"] == "running"],
            timeout=30,
            message="primary running tasks",
        )
        on_primary = states(node)
        node.stop(["-m", "immediate"])
        at_promotion = states(replica)
        replica.promote()
        final = wait_all_terminal(replica, timeout=120)
        figures = check_exactly_once(replica, TOTAL_C)
        report(
            "standby_failover",
            {
                "primary_states_at_stop": on_primary,
                "standby_states_at_promotion": at_promotion,
                "states": final,
                **figures,
            },
        )
        assert sum(at_promotion.get(a, 0) for a in ACTIVE) > 0, "failover under load"
        assert figures["finished"] > at_promotion.get("finished", 0), "queue resumed"
    finally:
        if replica is not None:
            destroy_node(replica)


# --------------------------------------------------------------------------------------
# d) pg_terminate_backend of a busy worker
# --------------------------------------------------------------------------------------


def accounting(node: Any) -> tuple[int, int, int] | None:
    """(active_workers_count, task workers in the view, worker processes) when they agree."""
    active = int(scalar(node, "SELECT pg_background_queue_active_workers_count()"))
    in_view = len(task_workers(node))
    procs = int(
        scalar(
            node,
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'pg_background_queue worker'",
        )
    )
    return (active, in_view, procs) if active == in_view == procs else None


def gated_running(node: Any, n: int) -> list[dict[str, Any]] | None:
    rows = query(
        node,
        "SELECT id, worker_pid, attempts, error_history FROM pg_background_tasks "
        "WHERE state = 'running' ORDER BY id",
    )
    return rows if len(rows) == n else None


def test_terminated_worker_gives_its_task_back(make_cluster: MakeCluster) -> None:
    node = make_cluster(extra_conf=FAULT_CONF)
    setup_counters(node, 3)
    launcher = launcher_pid(node)
    with connect(node) as gate:
        gate.execute("SELECT pg_advisory_lock(4242)")  # every task waits on it
        enqueue_counters(node, [1, 2, 3], sql=GATED_SQL)
        before = poll_until(lambda: gated_running(node, 3), timeout=30, message="3 running")
        victim, others = before[0], before[1:]
        assert scalar(node, "SELECT pg_terminate_backend(%s)", (victim["worker_pid"],))
        poll_until(lambda: not live(victim["worker_pid"]), timeout=30, message="victim exits")
        # given back without burning the attempt (or already taken again by a new worker)
        given_back = poll_until(
            lambda: (
                (
                    (
                        (r := task_row(node, victim["id"]))["state"] == "pending"
                        and r["attempts"] == 0
                    )
                    or (
                        r["state"] == "running"
                        and r["worker_pid"] != victim["worker_pid"]
                        and r["attempts"] == 1
                    )
                )
                and r
            ),
            timeout=30,
            message="task given back",
        )
        assert given_back["error_history"] == []
        assert given_back["retry_count"] == 0
        # no crash restart: the other tasks and the launcher never noticed
        for other in others:
            row = task_row(node, other["id"])
            assert (row["state"], row["worker_pid"], row["attempts"]) == (
                "running",
                other["worker_pid"],
                1,
            )
        assert launcher_pid(node) == launcher
        # the slot was freed: counts from shared memory match the real processes
        counts = poll_until(lambda: accounting(node), timeout=30, message="accounting agrees")
        assert victim["worker_pid"] not in [w["pid"] for w in task_workers(node)]
        assert scalar(node, "SELECT pg_background_queue_calibrate_workers_count()") == counts[0]
        gate.execute("SELECT pg_advisory_unlock(4242)")
    # the other workers finish their tasks and take the given-back one
    wait_all_terminal(node, timeout=30)
    figures = check_exactly_once(node, 3)
    assert figures["finished"] == 3
    assert figures["tasks_retried"] == 0
    assert figures["attempts_interrupted"] == 0
    report("pg_terminate_backend", {"terminated": 1, "workers": list(counts), **figures})


def test_task_given_back_by_a_terminated_worker_restarts_promptly(
    make_cluster: MakeCluster,
) -> None:
    node = make_cluster(extra_conf={**FAULT_CONF, "pg_background_queue.maintenance_interval": "1h"})
    setup_counters(node, 2)
    with connect(node) as gate:
        gate.execute("SELECT pg_advisory_lock(4242)")
        enqueue_counters(node, [1, 2], sql=GATED_SQL)
        victim = poll_until(lambda: gated_running(node, 2), timeout=30, message="2 running")[0]
        query(node, "SELECT pg_terminate_backend(%s)", (victim["worker_pid"],))
        poll_until(lambda: not live(victim["worker_pid"]), timeout=30, message="victim exits")
        # 2 of 4 worker slots are free: a new worker should take the task at once
        poll_until(
            lambda: (
                (r := task_row(node, victim["id"]))["state"] == "running"
                and r["worker_pid"] != victim["worker_pid"]
            ),
            timeout=10,
            message="given-back task taken by a new worker",
        )
        gate.execute("SELECT pg_advisory_unlock(4242)")
    wait_all_terminal(node, timeout=30)
    check_exactly_once(node, 2)


# --------------------------------------------------------------------------------------
# e) max_worker_processes exhausted by other background workers
# --------------------------------------------------------------------------------------

NO_SLOT_LOG = "pg_background_queue: could not start a worker: no free background worker slots"
BGWORKER_TYPES = f"{PGBQ_BACKENDS}, 'parallel worker', 'logical replication launcher'"


def test_tasks_wait_for_background_worker_slots(make_cluster: MakeCluster) -> None:
    node = make_cluster(
        extra_conf={
            **FAULT_CONF,
            "max_worker_processes": 4,  # launcher + logical replication launcher + 2 free
            "pg_background_queue.max_parallel_running_tasks_count": 2,
        }
    )
    setup_counters(node, 50)
    query(node, "CREATE TABLE occupy AS SELECT g FROM generate_series(1, 10000) g")
    query(node, "ALTER TABLE occupy SET (parallel_workers = 8)")
    query(node, "ANALYZE occupy")

    def bgworkers() -> dict[str, int]:
        rows = query(
            node,
            "SELECT backend_type AS t, count(*) AS c FROM pg_stat_activity "
            f"WHERE backend_type IN ({BGWORKER_TYPES}) GROUP BY 1",
        )
        return {r["t"]: r["c"] for r in rows}

    # the start-up maintenance pass is over: only the two static workers hold slots
    poll_until(lambda: sum(bgworkers().values()) == 2, timeout=30, message="idle server")

    occupier = connect(node)
    leader = occupier.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]  # type: ignore[index]
    for setting in ("max_parallel_workers_per_gather = 8", "parallel_setup_cost = 0",
                    "parallel_tuple_cost = 0"):  # fmt: skip
        occupier.execute(f"SET {setting}")
    outcome: list[BaseException] = []

    def occupy() -> None:  # 10000 rows x 50 ms over 2 workers: until cancelled
        try:
            occupier.execute("SELECT count(*) FROM occupy WHERE pg_sleep(0.05) IS NOT NULL")
        except psycopg.Error as exc:
            outcome.append(exc)

    thread = threading.Thread(target=occupy, daemon=True)
    thread.start()
    try:
        held = poll_until(
            lambda: (b := bgworkers()).get("parallel worker") == 2 and b,
            timeout=30,
            message="parallel workers hold every free slot",
        )
        assert sum(held.values()) == 4
        enqueue_counters(node, range(1, 51))
        poll_until(
            lambda: NO_SLOT_LOG in server_log(node),
            timeout=30,
            message="the launcher logs that it has no background worker slot",
        )
        line = next(x for x in server_log(node).splitlines() if NO_SLOT_LOG in x)
        assert states(node) == {"pending": 50}, "tasks wait, nothing lost"
        assert scalar(node, "SELECT pg_background_queue_active_workers_count()") == 0
        log = server_log(node)
        assert "Queued tasks wait until a slot frees up; nothing is lost." in log
        assert "max_worker_processes (currently 4)" in log
    finally:
        query(node, "SELECT pg_cancel_backend(%s)", (leader,))
        thread.join(timeout=30)
        occupier.close()
    assert outcome
    assert isinstance(outcome[0], psycopg.errors.QueryCanceled)
    t0 = time.monotonic()
    wait_all_terminal(node, timeout=60)
    figures = check_exactly_once(node, 50)
    assert figures["finished"] == 50
    report(
        "max_worker_processes_exhausted",
        {
            "log_line": line.split(" LOG:  ", 1)[-1],
            "drain_seconds_after_slots_freed": round(time.monotonic() - t0, 1),
            **figures,
        },
    )


# --------------------------------------------------------------------------------------
# f) kill -9 of the launcher
# --------------------------------------------------------------------------------------


def launcher_pid(node: Any) -> int | None:
    pid = scalar(
        node, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_background_queue launcher'"
    )
    return int(pid) if pid else None


def test_launcher_kill9_crash_restarts_and_the_queue_resumes(make_cluster: MakeCluster) -> None:
    node = make_cluster(extra_conf=FAULT_CONF)
    total = 600
    setup_counters(node, total)
    enqueue_counters(node, range(1, total + 1), sleep=0.02)
    poll_until(
        lambda: (
            finished_count(node) > 0 and [w for w in task_workers(node) if w["state"] == "running"]
        ),
        timeout=30,
        message="busy workers",
    )
    old = poll_until(lambda: launcher_pid(node), timeout=10, message="launcher")
    old_pids = pgbq_pids(node)
    os.kill(old, signal.SIGKILL)
    new = poll_until(
        up(lambda: not any(live(p) for p in old_pids) and launcher_pid(node)),
        timeout=60,
        message="launcher back after the crash restart",
    )
    assert new != old
    final = wait_all_terminal(node, timeout=120)
    figures = check_exactly_once(node, total)
    assert figures["attempts_interrupted"] >= 1, "the crash restart interrupted running tasks"
    report("launcher_kill9", {"kills": 1, "states": final, **figures})


# --------------------------------------------------------------------------------------
# Regressions for bugs found by this suite and the soak (fixed in 58cfedd)
# --------------------------------------------------------------------------------------

SEGV_LOG = "was terminated by signal"


def test_orphan_recovery_does_not_crash_the_server(make_cluster: MakeCluster) -> None:
    """Was: the orphan log line called get_database_name() outside a transaction, so every
    orphan recovery segfaulted the maintenance worker and crash-restarted the server."""
    node = make_cluster(extra_conf=FAULT_CONF)
    setup_counters(node, 1)
    enqueue_counters(node, [1], sleep=60, topic=lambda k: "fragile")
    poll_until(lambda: states(node) == {"running": 1}, timeout=30, message="task running")
    node.stop(["-m", "immediate"])
    node.start()
    row = poll_until(
        up(lambda: (r := task_row(node, 1))["state"] == "failed" and r),
        timeout=60,
        message="interrupted attempt accounted for",
    )
    assert row["error_history"][0]["sqlstate"] == "57P02"
    accounted = 'accounted for 1 interrupted task(s) in database "postgres"'
    poll_until(
        lambda: accounted in (log := server_log(node)) or SEGV_LOG in log,
        timeout=30,
        message="the maintenance pass logs what it accounted for",
    )
    log = server_log(node)
    assert SEGV_LOG not in log, [x for x in log.splitlines() if SEGV_LOG in x]
    assert CRASH_RESTART_LOG not in log
    assert accounted in log


def test_no_fault_means_no_interrupted_attempt_under_load(make_cluster: MakeCluster) -> None:
    """Was: orphan recovery read the live workers before its query's snapshot, so a task
    claimed in between was failed as 57P02 while it ran (seen within seconds at a few
    thousand tasks/s with a maintenance pass every second)."""
    node = make_cluster(extra_conf={**FAULT_CONF, "pg_background_queue.maintenance_interval": "1s"})
    rounds, per_round = 20, 5000
    setup_counters(node, rounds * per_round)
    query(node, "ALTER SYSTEM SET pg_background_queue.retry_count = 0")
    query(node, "SELECT pg_reload_conf()")

    def violations() -> dict[str, int]:
        found = dict(
            query(
                node,
                "SELECT count(*) FILTER (WHERE state = 'failed') AS failed, "
                "count(*) FILTER (WHERE error_history <> '[]') AS interrupted "
                "FROM pg_background_tasks",
            )[0]
        )
        found["crashes"] = server_log(node).count(SEGV_LOG)
        return {k: v for k, v in found.items() if v}

    deadline = time.monotonic() + 30
    done = 0
    while done < rounds and time.monotonic() < deadline:
        try:
            keys = range(done * per_round + 1, (done + 1) * per_round + 1)
            enqueue_counters(node, keys)
        except psycopg.OperationalError:
            break  # the server crashed under us: that is the finding
        done += 1
        wait_all_terminal(node, timeout=60)
        if poll_until(up(lambda: [violations()]), timeout=60, message="server up")[0]:
            break
    wait_all_terminal(node, timeout=60)
    found = poll_until(up(lambda: [violations()]), timeout=60, message="server up")[0]
    report("no_fault_load", {"rounds": done, "tasks": done * per_round, **found})
    assert found == {}, "no fault was injected, yet attempts were interrupted"
