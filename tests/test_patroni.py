"""The queue under Patroni 3.0 (etcd 3.4 DCS): switchovers, a killed leader, a lost DCS.

One three-node cluster for the module; the scenarios run in order, each from where the last
left the cluster. A counter workload runs through every scenario: task k records its start
in a file (``COPY ... TO``, outside any transaction, so even a run that is killed leaves its
trace) named after k, the node's port, the worker's pid and the run's transaction, sleeps
(long or short), records its end the same way, and increments row k of ``counter``. Some
tasks fail their first attempt (retried after 2 s), some are delayed. An enqueuer thread
keeps queueing through a libpq multi-host string with ``target_session_attrs=read-write``
while the scenario happens, and an observer thread notes when the worker of an unfinished
run is gone.

Each scenario then checks: every acknowledged task finished, its row counted exactly once
(0 lost, 0 twice), no two nodes ever ran tasks at the same time (the runs' intervals, by
node, never overlap), the replicas run no worker and refuse enqueue with 25006, and the old
leader is back as a replica. The figures (tasks, time without a primary, time to the first
task on the new leader) are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_background_queue import Client, PgbqError, TaskState
from pg_background_queue.testing.cluster import poll_until
from pg_background_queue.testing.stack import PatroniCluster, PatroniNode, Stack, missing_tools

pytestmark = pytest.mark.timeout(240)
WAIT = 120.0
LONG = 2.0  # seconds a long task sleeps: several are running when each scenario strikes


def require_stack() -> None:
    missing = missing_tools()
    if missing:
        message = f"Patroni/etcd/PgBouncer not installed: {', '.join(missing)}"
        if os.environ.get("PGBQ_REQUIRE_STACK"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@dataclass
class Run:
    """One execution of task k on one node (from the journal files)."""

    k: int
    port: int
    pid: int
    start: float
    end: float | None


def process_start(pid: int) -> str | None:
    """Start time (clock ticks since boot) of a live, non-zombie process ``pid``, else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state is field 3, starttime 22
    return None if fields[0] in ("Z", "X") else fields[19]


@dataclass
class Journal:
    """Start/end files written by the tasks, and the observed deaths of their workers."""

    path: Path
    deaths: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sql(self, k: int, sleep: float, flaky: bool) -> str:
        def mark(suffix: str) -> str:
            name = (
                f"'{self.path}/{k}-' || current_setting('port') || '-' || pg_backend_pid() "
                f"|| '-' || pg_current_xact_id() || '.{suffix}'"
            )
            return (
                "DO $j$ BEGIN EXECUTE format('COPY (SELECT extract(epoch FROM "
                f"clock_timestamp())) TO %L', {name}); END $j$;\n"
            )

        fail_once = (
            f"SELECT 1 / (count(*)::int - 1) FROM pg_ls_dir('{self.path}') AS f "
            f"WHERE f LIKE '{k}-%.start';\n"
            if flaky
            else ""
        )
        return (
            mark("start")
            + f"SELECT pg_sleep({sleep});\n"
            + mark("end")
            + fail_once
            + f"INSERT INTO counter AS c VALUES ({k}, 1, current_setting('port')::int) "
            "ON CONFLICT (k) DO UPDATE SET n = c.n + 1, port = excluded.port;\n"
        )

    def observe(self) -> None:
        """Until stopped: note when the worker of a run without an end file is gone.

        A process is identified by its pid and start time (pids are reused on a busy
        machine), and a zombie counts as gone."""
        seen: dict[str, str] = {}  # start file -> the worker's start time
        while not self.stop.wait(0.05):
            names = {p.name for p in self.path.iterdir()}
            for name in names:
                if not name.endswith(".start") or name in self.deaths:
                    continue
                if name.replace(".start", ".end") in names:
                    continue
                started = process_start(int(name.split("-")[2]))
                if name not in seen and started is not None:
                    seen[name] = started
                if started is None or started != seen.get(name):
                    self.deaths[name] = time.time()

    def runs(self) -> list[Run]:
        found = []
        for start in self.path.glob("*.start"):
            k, port, pid, _ = start.name.split("-")
            end_file = start.with_suffix(".end")
            ended = end_file.read_text().strip() if end_file.exists() else ""
            end = float(ended) if ended else None
            if end is None:
                end = self.deaths.get(start.name)
            begun = start.read_text().strip()
            if begun:  # else COPY is still writing it
                found.append(Run(int(k), int(port), int(pid), float(begun), end))
        return sorted(found, key=lambda r: r.start)


@dataclass
class Workload:
    """Enqueues counter tasks through the multi-host string until stopped."""

    cluster: PatroniCluster
    journal: Journal
    keys: Iterator[int]
    acked: dict[int, int] = field(default_factory=dict)  # k -> task id
    ambiguous: set[int] = field(default_factory=set)
    ok_times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def task(self, k: int) -> tuple[str, Any]:
        long, flaky, delayed = k % 4 == 0, k % 7 == 0, k % 9 == 0
        sql = self.journal.sql(k, LONG if long else 0.01, flaky)
        return sql, timedelta(seconds=2) if delayed else None

    def run(self) -> None:
        client = Client(self.cluster.multihost_conninfo(), poll_interval=0.2)
        try:
            while not self.stop.is_set():
                k = next(self.keys)
                sql, run_at = self.task(k)
                try:
                    self.acked[k] = client.enqueue(sql, topic="counter", run_at=run_at)
                    self.ok_times.append(time.time())
                except PgbqError as exc:
                    self.ambiguous.add(k)
                    self.errors.append(str(exc).splitlines()[0])
                    self.stop.wait(0.1)
                    continue
                self.stop.wait(0.05)
        finally:
            with contextlib.suppress(PgbqError):
                client.close()


@dataclass
class Harness:
    stack: Stack
    cluster: PatroniCluster
    journal: Journal
    keys: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    figures: list[str] = field(default_factory=list)
    rewind_lines: set[str] = field(default_factory=set)


@pytest.fixture(scope="module")
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    require_stack()
    stack = Stack(prefix="pgbq-patroni-")
    try:
        cluster = stack.start_patroni(
            extra_conf={
                "pg_background_queue.max_parallel_running_tasks_count": 8,
                "pg_background_queue.topic_config": '{"counter": {"retry_count": 3}}',
            }
        )
        journal = Journal(stack.base / "journal")
        journal.path.mkdir()
        leader = cluster.wait_leader()
        with psycopg.connect(leader.conninfo(), autocommit=True) as conn:
            conn.execute("CREATE TABLE counter (k bigint PRIMARY KEY, n int, port int)")
        observer = threading.Thread(target=journal.observe, daemon=True)
        observer.start()
        made = Harness(stack, cluster, journal)
        failed_before = request.session.testsfailed
        yield made
        if request.session.testsfailed > failed_before:
            print(stack.logs()[-20000:])
        journal.stop.set()
        observer.join(10)
        print("\n".join(["", "Patroni figures:", *made.figures]))
        print("\n".join(["Patroni on pg_rewind:", *sorted(made.rewind_lines)]))
    except BaseException:
        print(stack.logs()[-20000:])
        raise
    finally:
        stack.close()


def is_primary(node: PatroniNode) -> bool:
    try:
        with psycopg.connect(node.conninfo(), autocommit=True, connect_timeout=2) as conn:
            row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
            return bool(row and row[0])
    except psycopg.OperationalError:
        return False


def running_on(h: Harness, node: PatroniNode) -> int:
    """Runs started on ``node`` whose end is not known yet."""
    return sum(1 for r in h.journal.runs() if r.port == node.pg_port and r.end is None)


def scenario(h: Harness, name: str, strike: Any, *, clean: bool = False) -> None:
    """Run the workload, ``strike(old_leader)`` once long tasks run, then check everything.

    ``clean``: the old leader stops with a clean (fast) shutdown, which gives its running
    tasks back without counting an attempt."""
    cluster = h.cluster
    old = cluster.wait_leader()
    work = Workload(cluster, h.journal, h.keys)
    thread = threading.Thread(target=work.run, daemon=True)
    thread.start()
    try:
        poll_until(lambda: running_on(h, old) >= 2, timeout=30, message=f"runs on {old.name}")
    except AssertionError as exc:
        work.stop.set()
        raise AssertionError(
            f"enqueue errors: {work.errors[-3:]}; acked {len(work.acked)}"
        ) from exc
    struck = time.time()
    strike(old)
    new = cluster.wait_leader(timeout=WAIT)
    promoted = time.time()
    poll_until(
        lambda: any(t > promoted for t in work.ok_times),
        timeout=WAIT,
        message="an enqueue through the multi-host string after the change",
    )
    poll_until(
        lambda: sum(t > promoted for t in work.ok_times) >= 5,
        timeout=WAIT,
        message="5 enqueues on the new leader",
    )
    work.stop.set()
    thread.join(WAIT)
    assert not thread.is_alive()

    # every acknowledged task finishes, exactly once
    with Client(cluster.multihost_conninfo(), poll_interval=0.2) as client:
        ids = list(work.acked.values())
        tasks = client.wait(ids, timeout=WAIT)
        assert {t.state for t in tasks} == {TaskState.FINISHED}, [
            (t.id, t.state, t.error_history) for t in tasks if t.state is not TaskState.FINISHED
        ]
        new = cluster.wait_leader(timeout=WAIT)
        with psycopg.connect(new.conninfo(), autocommit=True) as conn:
            counts = dict(conn.execute("SELECT k, n FROM counter").fetchall())
    lost = [k for k in work.acked if counts.get(k, 0) == 0]
    twice = [k for k, n in counts.items() if n > 1]
    assert lost == []
    assert twice == []

    # no two nodes ever ran tasks at the same time
    cluster.wait_healthy(timeout=WAIT)
    poll_until(
        lambda: all(r.end is not None for r in h.journal.runs()),
        timeout=WAIT,
        message="every run ended or its worker gone",
    )
    runs = h.journal.runs()
    last_end: dict[int, float] = {}
    for run in runs:
        for port, end in last_end.items():
            assert port == run.port or end < run.start, (
                f"task {run.k} started on port {run.port} at {run.start:.3f} while port {port} "
                f"ran a task until {end:.3f}"
            )
        assert run.end is not None
        last_end[run.port] = max(last_end.get(run.port, 0.0), run.end)

    # replicas run nothing and refuse enqueue
    replicas = [n for n in cluster.nodes if n.name != new.name]
    for replica in replicas:
        with psycopg.connect(replica.conninfo(), autocommit=True) as conn:
            recovery, workers = conn.execute(
                "SELECT pg_is_in_recovery(), pg_background_queue_active_workers_count()"
            ).fetchone() or (None, None)
            assert (recovery, workers) == (True, 0), replica.name
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as info:
                conn.execute("SELECT pg_background_enqueue('SELECT 1')")
            assert info.value.sqlstate == "25006"
    late = [r for r in runs if r.port == old.pg_port and r.start > promoted]
    if old.name != new.name:
        assert late == [], f"{old.name} ran tasks after {new.name} was promoted"

    old_runs = [r for r in runs if r.port == old.pg_port and r.start < promoted]
    old_end = max((r.end or 0.0 for r in old_runs), default=struck)
    new_starts = [r.start for r in runs if r.port == new.pg_port and r.start > old_end]
    first_new = min(new_starts, default=old_end)
    gap = [b - a for a, b in itertools.pairwise(work.ok_times) if b > struck]
    patroni_log = (old.base / "patroni.log").read_text(errors="replace").splitlines()
    rewound = [line.split(": ", 1)[-1] for line in patroni_log if "rewind" in line.lower()]
    h.rewind_lines.update(rewound)
    rerun = {r.k for r in old_runs if r.end is not None and r.end > struck} & {
        r.k for r in runs if r.start > old_end
    }
    by_id = {t.id: t for t in tasks}
    interrupted = [by_id[work.acked[k]] for k in rerun if k in work.acked and k % 7 != 0]
    if clean:
        assert [t.attempts for t in interrupted] == [1] * len(interrupted), interrupted
    h.figures.append(
        f"{name}: {old.name} -> {new.name}; {len(work.acked)} tasks acknowledged, "
        f"{len(work.ambiguous)} enqueues refused during the change, 0 lost, 0 twice; "
        f"longest enqueue gap {max(gap, default=0):.1f}s; "
        + (
            f"old leader's last task ended {old_end - struck:.1f}s after the strike, new "
            f"leader's first task started {first_new - old_end:.1f}s later; "
            if old.name != new.name
            else "the same node was elected again; "
        )
        + f"interrupted and run again: {len(rerun)}; "
        f"pg_rewind lines in {old.name}'s Patroni log so far: {len(rewound)}"
    )


def test_switchover_to_each_replica(harness: Harness) -> None:
    cluster = harness.cluster
    first = cluster.wait_leader()
    for candidate in sorted(n.name for n in cluster.nodes if n.name != first.name):
        leader = cluster.wait_leader()
        cluster.wait_sync([n.name for n in cluster.nodes if n.name != leader.name])
        scenario(
            harness,
            f"switchover to {candidate}",
            lambda old, c=candidate: cluster.switchover(old.name, c),
            clean=True,
        )
        assert cluster.wait_leader().name == candidate


def test_leader_postmaster_killed(harness: Harness) -> None:
    """kill -9 of the leader's postmaster, after it wrote WAL its replicas never received (its
    WAL senders stopped): Patroni fails over, and the old leader needs pg_rewind to rejoin."""
    cluster = harness.cluster
    leader = cluster.wait_leader()
    cluster.wait_sync([n.name for n in cluster.nodes if n.name != leader.name])

    def kill(old: PatroniNode) -> None:
        with psycopg.connect(old.conninfo(), autocommit=True) as conn:
            senders = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_replication")]
            assert len(senders) == len(cluster.nodes) - 1
            for pid in senders:
                os.kill(pid, signal.SIGSTOP)
            # committed here only: every other commit now waits for a synchronous replica
            conn.execute("SET synchronous_commit = local")
            conn.execute("CREATE TABLE IF NOT EXISTS diverged (x int)")
            conn.execute("INSERT INTO diverged SELECT generate_series(1, 1000)")
        pid = old.postmaster_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for sender in senders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sender, signal.SIGKILL)

    scenario(harness, "kill -9 of the leader's postmaster", kill)
    assert cluster.wait_leader().name != leader.name
    log = (leader.base / "patroni.log").read_text(errors="replace")
    assert "running pg_rewind" in log, [x for x in log.splitlines() if "rewind" in x.lower()]
    with psycopg.connect(leader.conninfo(), autocommit=True) as conn:
        # rewound: the commit only the old leader had is gone
        assert conn.execute("SELECT to_regclass('diverged')").fetchone() == (None,)


def test_leader_cut_off_from_etcd(harness: Harness) -> None:
    """Only the leader loses etcd: it demotes itself within retry_timeout, its tasks end, and
    only then (its key expired) a replica takes over; reconnected, it rejoins as a replica."""
    cluster = harness.cluster
    leader = cluster.wait_leader()
    cluster.wait_sync([n.name for n in cluster.nodes if n.name != leader.name])

    def cut(old: PatroniNode) -> None:
        old.dcs.cut()
        try:
            poll_until(lambda: not is_primary(old), timeout=WAIT, message="leader demoted")
            poll_until(
                lambda: running_on(harness, old) == 0,
                timeout=WAIT,
                message="the demoted leader's runs ended",
            )
            cluster.wait_leader(timeout=WAIT, exclude=old.name)
        finally:
            old.dcs.restore()

    scenario(harness, "leader cut off from etcd", cut, clean=True)
    assert cluster.wait_leader().name != leader.name


def test_etcd_paused(harness: Harness) -> None:
    """All of the DCS stops answering (SIGSTOP): the leader demotes itself; nobody runs tasks
    until etcd is back and a leader is elected again."""
    cluster = harness.cluster
    leader = cluster.wait_leader()
    cluster.wait_sync([n.name for n in cluster.nodes if n.name != leader.name])
    etcd = harness.stack.etcd
    assert etcd is not None

    def cut(old: PatroniNode) -> None:
        etcd.pause()
        try:
            # the leader cannot renew its key: it must demote itself, ending its tasks
            poll_until(lambda: not is_primary(old), timeout=WAIT, message="leader demoted")
            poll_until(
                lambda: running_on(harness, old) == 0,
                timeout=WAIT,
                message="the demoted leader's runs ended",
            )
        finally:
            etcd.resume()

    scenario(harness, "etcd paused (SIGSTOP) for everyone", cut, clean=True)
