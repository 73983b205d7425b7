"""Orchestration of the benchmark: cluster, measurements, report."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from tqdm import tqdm

from pg_background_queue.client import Client
from pg_background_queue.testing.build import bindir
from pg_background_queue.testing.cluster import (
    ConfValue,
    conninfo,
    destroy_node,
    make_node,
    poll_until,
)

TASK_SQL = "INSERT INTO public.bench_sink (at) VALUES (clock_timestamp())"
CEILING_SCRIPT = (
    "\\set id random(1, 10000)\nUPDATE public.bench_ceiling SET n = n + 1 WHERE id = :id;\n"
)
#: The worker's claim (pgbq_sql_claim, src/task_rows.c), from the claim floor ($4, $5, $6),
#: but for the tasks a batch ran ($7).
CLAIM_SQL = (
    "SELECT id, topic, state::text, priority, next_run_at FROM public.pg_background_tasks "
    "WHERE owner = $1 AND state IN ('pending', 'retrying') AND next_run_at <= $2 "
    "AND COALESCE(topic, '') <> ALL ($3) AND (priority, next_run_at, id) >= ($4, $5, $6) "
    "AND id <> ALL ($7) ORDER BY priority, next_run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
BENCH_CONF: dict[str, ConfValue] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "shared_buffers": "512MB",
    "max_wal_size": "4GB",
    "max_worker_processes": 24,
    "max_connections": 60,
    "pg_background_queue.worker_idle_timeout": "300s",
}


#: Regimes ``pgbq bench --regime`` can select (default: all of them, in this order).
REGIMES: tuple[str, ...] = (
    "durable",
    "cpu",
    "held",
    "sustained",
    "reload",
    "latency",
    "batched",
    "enqueue",
    "backlog",
    "memory",
    "peers",
)

#: The topic of the batched regime and its configuration (the key may not be supported).
BATCHED_TOPIC = "bench_batched"
TASKS_PER_COMMIT = 64


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (``Sizes.quick()`` for a smoke run)."""

    workers: tuple[int, ...] = (1, 2, 4, 8)
    #: worker count (and pgbench clients, peer concurrency) of every regime but the sweep
    regime_workers: int = 8
    tasks: int = 20_000
    ceiling_seconds: float = 10.0
    latency_samples: int = 200
    enqueue_single: int = 50_000
    enqueue_many: int = 100_000
    backlogs: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    rss_tasks: tuple[int, int] = (1_000, 100_000)
    competitor_tasks: int = 20_000
    held_tasks: int = 50_000
    sustained_tasks: int = 100_000
    reload_tasks: int = 20_000
    #: how long to wait for autovacuum after the held snapshot is released (then VACUUM)
    autovacuum_wait: float = 150.0
    #: interleaved rounds (ceiling, then ours) of the durable and CPU-bound ratios, and of
    #: the reload regime (reload, then a fresh start, the order alternating)
    rounds: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes: checks that every measurement runs, in well under a minute."""
        return cls(
            workers=(2,),
            regime_workers=2,
            tasks=300,
            ceiling_seconds=1.0,
            latency_samples=10,
            enqueue_single=1_000,
            enqueue_many=2_000,
            backlogs=(100, 2_000),
            rss_tasks=(100, 400),
            competitor_tasks=300,
            held_tasks=400,
            sustained_tasks=300,
            reload_tasks=200,
            autovacuum_wait=0.0,
            rounds=1,
        )


@dataclass
class Results:
    """Every figure of one run (written to JSON and rendered to BENCHMARKS.md).

    ``regimes`` holds one entry per regime of issue 15 that ran (``durable``, ``cpu``, ``held``,
    ``sustained``, ``reload``, ``batched``), each with its own figures, the baseline they are
    compared with (measured in the same run) and ``ratio``; ``peers`` one entry per peer queue
    (``throughput`` and ``ours``, our own run just before it, or ``skipped`` with the reason)
    plus ``workers``.
    """

    machine: dict[str, Any] = field(default_factory=dict)
    regimes_run: list[str] = field(default_factory=list)
    regime_workers: int = 0
    ceiling: dict[int, float] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    enqueue: dict[str, float] = field(default_factory=dict)
    backlog: dict[int, float] = field(default_factory=dict)
    claim_plan: str = ""
    regimes: dict[str, dict[str, Any]] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)
    rss_kb: dict[int, dict[str, int]] = field(default_factory=dict)
    log_bytes_per_task: float | None = None
    seconds: float = 0.0


class Bench:
    """The measurements, on one node, through one superuser connection."""

    def __init__(self, node: Any, progress: bool) -> None:
        self.node = node
        self.dsn = conninfo(node)
        self.progress = progress
        self.conn = psycopg.connect(self.dsn, autocommit=True)
        self.client = Client(self.conn, poll_interval=0.5)
        self.conn.execute("CREATE TABLE bench_sink (at timestamptz NOT NULL)")
        self.conn.execute("CREATE TABLE bench_ceiling (id int PRIMARY KEY, n bigint NOT NULL)")
        self.conn.execute("INSERT INTO bench_ceiling SELECT g, 0 FROM generate_series(1, 10000) g")
        self.conn.execute("VACUUM ANALYZE bench_ceiling")
        # exact dead-tuple counts; contrib may be missing (the 16/18 wheels lack it)
        self.pgstattuple = bool(
            self.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'pgstattuple'")
        )
        if self.pgstattuple:
            self.conn.execute("CREATE EXTENSION pgstattuple SCHEMA public")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- helpers -------------------------------------------------------------------------

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        """First column of the first row."""
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def now(self) -> float:
        """The server's clock (epoch s), the clock the sink's timestamps come from."""
        return float(self.scalar("SELECT extract(epoch FROM clock_timestamp())"))

    def set_conf(self, name: str, value: str | int | None) -> None:
        """ALTER SYSTEM SET (RESET for None) and reload; wait until this session sees it."""
        if value is None:
            self.conn.execute(
                sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(*name.split(".")))
            )
        else:
            self.conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(*name.split(".")), sql.Literal(str(value))
                )
            )
        self.conn.execute("SELECT pg_reload_conf()")
        if value is not None:
            poll_until(
                lambda: self.scalar("SELECT current_setting(%s)", (name,)) == str(value),
                timeout=30,
                message=f"{name} = {value}",
            )

    def set_workers(self, n: int) -> None:
        """Set max_parallel_running_tasks_count; at 0, wait until no task is running."""
        self.set_conf("pg_background_queue.max_parallel_running_tasks_count", n)
        if n == 0:  # idle workers may stay; none may be running a task
            poll_until(
                lambda: (
                    self.scalar(
                        "SELECT count(*) FROM pg_background_queue_workers WHERE task_id IS NOT NULL"
                    )
                    == 0
                ),
                timeout=120,
                message="no task running",
            )

    def reset(self) -> None:
        """No workers, empty queue and sink: every measurement starts from a cold pool."""
        self.set_workers(0)
        self.conn.execute("SELECT pg_terminate_backend(pid) FROM pg_background_queue_workers")
        poll_until(
            lambda: self.scalar("SELECT count(*) FROM pg_background_queue_workers") == 0,
            timeout=60,
            message="workers gone",
        )
        self.conn.execute("TRUNCATE pg_background_tasks, pg_background_queue_stats, bench_sink")
        self.conn.execute("VACUUM ANALYZE pg_background_tasks")

    def bar(self, total: int, desc: str) -> tqdm[Any]:
        """A progress bar (disabled unless progress was asked for)."""
        return tqdm(total=total, desc=desc, unit="task", leave=False, disable=not self.progress)

    def wait_sink(self, n: int, desc: str, timeout: float = 1800) -> float:
        """Wait until the sink holds n rows; return the time of the last one (epoch s)."""
        with self.bar(n, desc) as bar:

            def count() -> bool:
                done = int(self.scalar("SELECT count(*) FROM bench_sink"))
                bar.update(done - bar.n)
                return done >= n

            poll_until(count, timeout=timeout, interval=0.1, message=f"{n} rows in the sink")
        return float(self.scalar("SELECT extract(epoch FROM max(at)) FROM bench_sink"))

    def enqueue_tasks(self, n: int, priority: int | None = None) -> float:
        """Enqueue n trivial tasks in one transaction; return the commit time (epoch s)."""
        with self.conn.transaction():
            self.conn.execute(
                "SELECT count(*) FROM pg_background_enqueue_many(array_fill(%s::text, "
                "ARRAY[%s]), NULL, %s)",
                (TASK_SQL, n, priority),
            )
        return float(self.scalar("SELECT extract(epoch FROM clock_timestamp())"))

    # -- measurements --------------------------------------------------------------------

    def ceiling(self, clients: int, seconds: float) -> float:
        """pgbench: durable single-row UPDATEs per second at ``clients`` clients."""
        script = Path(self.node.base_dir) / "ceiling.sql"
        script.write_text(CEILING_SCRIPT)
        out = subprocess.run(
            [
                str(bindir() / "pgbench"), "-n", "-f", str(script), "-c", str(clients),
                "-j", str(clients), "-T", str(max(1, round(seconds))),
                "-h", "127.0.0.1", "-p", str(self.node.port), "postgres",
            ],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        match = re.search(r"tps = ([0-9.]+)", out)
        if not match:
            raise RuntimeError(f"no tps in pgbench output: {out}")
        return float(match[1])

    def throughput(self, workers: int, tasks: int) -> float:
        """Trivial tasks per second, from the enqueue's commit to the last task's effect."""
        self.reset()
        self.set_workers(workers)
        t0 = self.enqueue_tasks(tasks)
        t1 = self.wait_sink(tasks, f"{workers} worker(s)")
        return tasks / (t1 - t0)

    def latency(self, samples: int, workers: int = 2) -> dict[str, float]:
        """Pickup latency: from just before the enqueue's COMMIT is sent to the task's start,
        in ms; beside it the COMMIT's own round trip (its WAL flush included), whose p50 is the
        baseline: ``p50_above_commit`` = p50 of pickup - p50 of commit."""
        self.reset()
        self.set_workers(workers)
        self.client.wait([self.client.enqueue("SELECT 1")], timeout=60)  # warm pool
        values: list[float] = []
        commits: list[float] = []
        with psycopg.connect(self.dsn) as tx, self.bar(samples, "pickup latency") as bar:
            for _ in range(samples):
                task_id = int(tx.execute("SELECT pg_background_enqueue('SELECT 1')").fetchone()[0])  # type: ignore[index]
                before = time.time()
                tx.commit()
                commits.append((time.time() - before) * 1000)
                [task] = self.client.wait([task_id], timeout=60)
                assert task.started_at is not None
                values.append((task.started_at.timestamp() - before) * 1000)
                bar.update()
        values.sort()
        commits.sort()

        def pct(data: list[float], p: float) -> float:
            return data[min(len(data) - 1, round(p * (len(data) - 1)))]

        return {
            "p50": pct(values, 0.5), "p95": pct(values, 0.95), "p99": pct(values, 0.99),
            "max": values[-1], "mean": statistics.fmean(values),
            "commit_p50": pct(commits, 0.5), "commit_p99": pct(commits, 0.99),
            "p50_above_commit": pct(values, 0.5) - pct(commits, 0.5),
        }  # fmt: skip

    def enqueue_rates(self, single: int, many: int) -> dict[str, float]:
        """Tasks/s of enqueue calls (server-side loop, client pipeline) and enqueue_many."""
        self.reset()
        rates: dict[str, float] = {}
        start = time.perf_counter()
        with self.conn.transaction():
            self.conn.execute(
                "SELECT count(pg_background_enqueue('SELECT 1')) FROM generate_series(1, %s)",
                (single,),
            )
        rates["single_calls_one_transaction"] = single / (time.perf_counter() - start)
        client_n = max(1, single // 5)
        start = time.perf_counter()
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany("SELECT pg_background_enqueue(%s)", [("SELECT 1",)] * client_n)
        rates["client_calls_pipelined_one_transaction"] = client_n / (time.perf_counter() - start)
        start = time.perf_counter()
        with self.conn.transaction():
            self.conn.execute(
                "SELECT count(*) FROM pg_background_enqueue_many(array_fill('SELECT 1'::text, "
                "ARRAY[%s]))",
                (many,),
            )
        rates["enqueue_many"] = many / (time.perf_counter() - start)
        self.reset()
        return rates

    def backlog(self, queued: int, tasks: int, workers: int) -> tuple[float, str]:
        """Throughput of ``tasks`` tasks with ``queued`` lower-priority tasks also queued,
        and the claim statement's plan on that queue."""
        self.reset()
        chunk = 100_000
        with self.bar(queued, f"queue {queued:,} backlog") as bar:
            for offset in range(0, queued, chunk):
                n = min(chunk, queued - offset)
                with self.conn.transaction():
                    self.conn.execute(
                        "SELECT count(*) FROM pg_background_enqueue_many(array_fill("
                        "'SELECT 1'::text, ARRAY[%s]), NULL, 1000)",
                        (n,),
                    )
                bar.update(n)
        self.enqueue_tasks(tasks, priority=10)
        self.conn.execute("VACUUM ANALYZE pg_background_tasks")
        t0 = float(self.scalar("SELECT extract(epoch FROM clock_timestamp())"))
        self.set_workers(workers)
        t1 = self.wait_sink(tasks, f"{workers} worker(s), {queued:,} queued")
        return tasks / (t1 - t0), self.claim_plan()

    def claim_plan(self) -> str:
        """The worker's claim statement, planned generically as SPI does, on this queue."""
        with self.conn.transaction():
            self.conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            self.conn.execute(
                "PREPARE pgbq_claim(oid, timestamptz, text[], int4, timestamptz, int8, int8[]) "
                f"AS {CLAIM_SQL}"
            )
            # from the front (no floor): the claim's longest walk
            rows = self.conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE pgbq_claim("
                "'postgres'::regrole, now(), '{}', -1, '-infinity', 0, '{}')"
            ).fetchall()
            self.conn.execute("DEALLOCATE pgbq_claim")
        return "\n".join(r[0] for r in rows)

    def table_sizes(self) -> dict[str, dict[str, int]]:
        """Heap and index bytes, live and dead tuples (and free heap space, in bytes) of each
        of the extension's tables: exact, from pgstattuple, when the server has it, else the
        statistics counters (which workers flush at most once a second)."""
        rows = self.conn.execute(
            "SELECT c.oid::regclass::text, c.relname::text, pg_relation_size(c.oid), "
            "pg_indexes_size(c.oid), coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0) "
            "FROM pg_catalog.pg_depend d "
            "JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid "
            "JOIN pg_catalog.pg_class c ON c.oid = d.objid "
            "LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid "
            "WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e' "
            "AND e.extname = 'pg_background_queue' AND c.relkind = 'r' ORDER BY 2"
        ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for regclass, name, heap, idx, live, dead in rows:
            free = -1
            if self.pgstattuple:
                row = self.conn.execute(
                    "SELECT tuple_count, dead_tuple_count, free_space "
                    "FROM public.pgstattuple(%s::regclass)",
                    (regclass,),
                ).fetchone()
                assert row is not None
                live, dead, free = row
            out[name] = {"heap": heap, "indexes": idx, "live": live, "dead": dead, "free": free}
        return out

    def quarters(self, t0: float, t1: float) -> tuple[float, float]:
        """Tasks/s finished in the first and in the last quarter of [t0, t1] (sink times)."""
        q = (t1 - t0) / 4
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE at < to_timestamp(%s)), "
            "count(*) FILTER (WHERE at >= to_timestamp(%s)) FROM bench_sink",
            (t0 + q, t1 - q),
        ).fetchone()
        assert row is not None
        return int(row[0]) / q, int(row[1]) / q

    def rounds(self, workers: int, tasks: int, seconds: float, rounds: int) -> dict[str, Any]:
        """``rounds`` interleaved pairs (pgbench ceiling, then our throughput) at ``workers``;
        the ratio is the median of the rounds' ratios (load elsewhere moves both sides)."""
        pairs: list[tuple[float, float]] = []
        for _ in range(rounds):
            ceiling = self.ceiling(workers, seconds)
            pairs.append((self.throughput(workers, tasks), ceiling))
        return _rounds_summary(workers, tasks, pairs)

    def cpu_bound(self, workers: int, tasks: int, seconds: float, rounds: int) -> dict[str, Any]:
        """Throughput and pgbench ceiling with ``synchronous_commit = off`` on both sides."""
        self.set_conf("synchronous_commit", "off")
        try:
            return self.rounds(workers, tasks, seconds, rounds)
        finally:
            self.set_conf("synchronous_commit", "on")

    def held(self, workers: int, tasks: int, autovacuum_wait: float) -> dict[str, Any]:
        """Throughput while another session holds a REPEATABLE READ snapshot for the whole
        run, against the same run without it; the queue tables' size with the snapshot held
        and after it is released and (auto)vacuum has run."""
        free = self.throughput(workers, tasks)
        self.reset()
        before = self.table_sizes()
        self.set_workers(workers)
        with psycopg.connect(self.dsn) as holder:
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT 1")  # the snapshot is taken here and held until rollback
            backend_xmin = self.scalar(
                "SELECT backend_xmin::text FROM pg_stat_activity WHERE pid = %s",
                (holder.info.backend_pid,),
            )
            if backend_xmin is None:
                raise RuntimeError("the snapshot-holding session has no xmin")
            t0 = self.enqueue_tasks(tasks)
            t1 = self.wait_sink(tasks, f"{workers} worker(s), snapshot held")
            first, last = self.quarters(t0, t1)
            during = self.table_sizes()
            holder.rollback()
        after, vacuumed_by = self.await_vacuum("pg_background_tasks", autovacuum_wait)
        ours = tasks / (t1 - t0)
        return {
            "workers": workers, "tasks": tasks, "ours": ours, "free": free,
            "ratio": ours / free, "first_quarter": first, "last_quarter": last,
            "flatness": last / first if first else 0.0,
            "sizes_before": before, "sizes_during": during, "sizes_after": after,
            "vacuumed_by": vacuumed_by,
        }  # fmt: skip

    def await_vacuum(self, table: str, wait: float) -> tuple[dict[str, dict[str, int]], str]:
        """Wait up to ``wait`` s for autovacuum to process ``table`` (else VACUUM it);
        return the tables' sizes afterwards and who vacuumed it."""
        count_sql = "SELECT autovacuum_count FROM pg_stat_all_tables WHERE relid = %s::regclass"
        start = int(self.scalar(count_sql, (table,)) or 0)
        deadline = time.monotonic() + wait
        by = "manual VACUUM"
        while time.monotonic() < deadline:
            self.conn.execute("SELECT pg_stat_clear_snapshot()")
            if int(self.scalar(count_sql, (table,)) or 0) > start:
                by = "autovacuum"
                break
            time.sleep(1)
        if by != "autovacuum":
            if wait > 0:
                by = f"manual VACUUM (autovacuum did not run within {wait:.0f} s)"
            self.conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        return self.table_sizes(), by

    def sustained(self, workers: int, tasks: int, runs: int = 3) -> dict[str, Any]:
        """``runs`` back-to-back runs of ``tasks`` tasks on the same queue, no manual VACUUM
        (only autovacuum), the pool kept; last run vs first, and the tables' sizes.  The
        sink (the bench's instrument, not the queue) is emptied between runs: counting a sink
        that grows by ``tasks`` rows a run ten times a second would slow later runs by itself."""
        self.reset()
        self.set_workers(workers)
        rates: list[float] = []
        sizes: list[dict[str, dict[str, int]]] = []
        for i in range(runs):
            if i:
                self.conn.execute("TRUNCATE bench_sink")
            t0 = self.enqueue_tasks(tasks)
            t1 = self.wait_sink(tasks, f"sustained run {i + 1}/{runs}")
            rates.append(tasks / (t1 - t0))
            sizes.append(self.table_sizes())
        return {
            "workers": workers, "tasks": tasks, "runs": rates, "sizes": sizes,
            "ratio": rates[-1] / rates[0],
        }  # fmt: skip

    def reload_change(self, before: int, after: int, tasks: int) -> dict[str, Any]:
        """Change max_parallel_running_tasks_count from ``before`` to ``after`` by reload while
        the pool is busy; throughput of the tasks finished after the reload."""
        self.reset()
        self.set_workers(before)
        warm = max(1, tasks // 2)
        self.enqueue_tasks(warm + tasks)
        poll_until(
            lambda: int(self.scalar("SELECT count(*) FROM bench_sink")) >= warm,
            timeout=1800, interval=0.02, message=f"{warm} tasks before the reload",
        )  # fmt: skip
        t_reload = self.now()
        self.set_workers(after)
        t1 = self.wait_sink(warm + tasks, f"after reload {before} -> {after}")
        done_after = int(
            self.scalar("SELECT count(*) FROM bench_sink WHERE at > to_timestamp(%s)", (t_reload,))
        )
        return {
            "tasks_after_reload": done_after, "seconds_after_reload": t1 - t_reload,
            "ours": done_after / (t1 - t_reload),
        }  # fmt: skip

    def reload_rounds(self, before: int, after: int, tasks: int, rounds: int) -> dict[str, Any]:
        """``rounds`` interleaved pairs of :meth:`reload_change` and a fresh start (cold pool)
        at ``after`` workers with the same number of tasks, the order alternating from round
        to round (so that neither side always runs in the wake of the other); the ratio is
        the median of the rounds' ratios, with the median round's figures beside it."""
        runs: list[dict[str, Any]] = []
        for i in range(rounds):
            fresh_first = self.throughput(after, tasks) if i % 2 else None
            run = self.reload_change(before, after, tasks)
            run["fresh"] = fresh_first if fresh_first is not None else self.throughput(after, tasks)
            runs.append(run)
        return _reload_summary(before, after, runs)

    def batched(self, workers: int, tasks: int, ceiling: float) -> dict[str, Any]:
        """A topic with ``tasks_per_commit``; "not supported" if the extension rejects it.
        Beside the ceiling, the same tasks one commit each (``unbatched``), in the same run."""
        config = json.dumps({BATCHED_TOPIC: {"tasks_per_commit": TASKS_PER_COMMIT}})
        base: dict[str, Any] = {
            "workers": workers, "tasks_per_commit": TASKS_PER_COMMIT, "ceiling": ceiling,
        }  # fmt: skip
        try:
            self.set_conf("pg_background_queue.topic_config", config)
        except psycopg.errors.InvalidParameterValue as exc:
            detail = exc.diag.message_detail or exc.diag.message_primary or str(exc)
            return {**base, "supported": False, "reason": detail}
        try:
            self.reset()
            self.set_workers(workers)
            with self.conn.transaction():
                self.conn.execute(
                    "SELECT count(*) FROM pg_background_enqueue_many(array_fill(%s::text, "
                    "ARRAY[%s]), %s)",
                    (TASK_SQL, tasks, BATCHED_TOPIC),
                )
            t0 = self.now()
            t1 = self.wait_sink(tasks, f"{workers} worker(s), {TASKS_PER_COMMIT} per commit")
        finally:
            self.set_conf("pg_background_queue.topic_config", None)
        ours = tasks / (t1 - t0)
        unbatched = self.throughput(workers, tasks)
        return {
            **base, "supported": True, "tasks": tasks, "ours": ours, "ratio": ours / ceiling,
            "unbatched": unbatched, "vs_unbatched": ours / unbatched,
        }  # fmt: skip

    def memory(self, first: int, second: int) -> tuple[dict[int, dict[str, int]], float]:
        """RSS (kB) of one worker after ``first`` and ``second`` tasks; log bytes per task."""
        self.reset()
        self.set_workers(1)
        log = Path(self.node.pg_log_file)
        rss: dict[int, dict[str, int]] = {}
        done = 0
        pid: int | None = None
        log_start = 0
        for target in (first, second):
            self.enqueue_tasks(target - done)
            self.wait_sink(target, f"memory: {target:,} tasks")
            [(worker_pid,)] = self.conn.execute(
                "SELECT pid FROM pg_background_queue_workers"
            ).fetchall()
            if pid is None:
                pid, log_start = worker_pid, log.stat().st_size
            elif worker_pid != pid:
                raise RuntimeError("the worker was replaced between the two RSS samples")
            rss[target] = _rss_kb(worker_pid)
            done = target
        with log.open("rb") as f:
            f.seek(log_start)
            written = f.read()
        per_task = our_log_bytes(written.decode(errors="replace")) / (second - first)
        return rss, per_task


#: A server log line of one of our processes: the testing cluster's log_line_prefix is
#: "%m [%p] %b ", and the backend type of every process of ours starts with the extension's name.
OUR_LOG_LINE = re.compile(r"^\S+ \S+ \S+ \[\d+\] pg_background_queue ")


def our_log_bytes(text: str) -> int:
    """Bytes of the server log lines (continuation lines included) that our launcher, workers
    and maintenance processes wrote; the server's own (checkpoints, autovacuum) do not count."""
    total = 0
    ours = False
    for line in text.splitlines(keepends=True):
        if re.match(r"^\S+ \S+ \S+ \[\d+\] ", line):
            ours = OUR_LOG_LINE.match(line) is not None
        if ours:
            total += len(line.encode())
    return total


def _rounds_summary(workers: int, tasks: int, pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """Rounds of (ours, ceiling): medians, the median ratio and the ratios' range."""
    ratios = sorted(ours / ceiling for ours, ceiling in pairs)
    return {
        "workers": workers, "tasks": tasks, "rounds": [list(p) for p in pairs],
        "ours": statistics.median(p[0] for p in pairs),
        "ceiling": statistics.median(p[1] for p in pairs),
        "ratio": statistics.median(ratios), "min": ratios[0], "max": ratios[-1],
    }  # fmt: skip


def _reload_summary(before: int, after: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of the reload regime (each: tasks and seconds after the reload, ours, fresh):
    each round's ratio, the median round's figures, and the ratios' range."""
    runs = [{**r, "ratio": r["ours"] / r["fresh"]} for r in runs]
    ranked = sorted(runs, key=lambda r: float(r["ratio"]))
    return {
        "before": before, "after": after, **ranked[(len(ranked) - 1) // 2],
        "rounds": runs, "min": ranked[0]["ratio"], "max": ranked[-1]["ratio"],
    }  # fmt: skip


def _rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and its parts: private memory (RssAnon) and shared buffers touched (RssShmem)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0])
    return fields


def _machine(node: Any, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute("SELECT version()").fetchone()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": row[0] if row else "",
        "settings": {k: str(v) for k, v in BENCH_CONF.items()},
        "load_start": os.getloadavg()[0],
    }


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind (so the cluster is removed) and exit 128 + signal."""
    raise SystemExit(128 + signum)


@contextmanager
def _node() -> Iterator[Any]:
    """The throwaway cluster; removed on the way out, also when SIGTERM ends the run."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        node = make_node("pgbq-bench", extra_conf=BENCH_CONF)
        try:
            yield node
        finally:
            destroy_node(node)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _step(label: str, progress: bool) -> Callable[[str], None]:
    """A printer of progress lines, each with the time since the run started."""
    start = time.monotonic()

    def say(text: str) -> None:
        if progress:
            tqdm.write(f"[{label} {time.monotonic() - start:6.1f} s] {text}")

    return say


def parse_regimes(text: str) -> list[str]:
    """``--regime held,sustained`` -> the regimes, in the order of REGIMES ("all": every one)."""
    names = {part.strip() for part in text.split(",") if part.strip()}
    if not names or names == {"all"}:
        return list(REGIMES)
    unknown = sorted(names - set(REGIMES))
    if unknown:
        raise ValueError(
            f"unknown regime(s) {', '.join(unknown)}: choose from {', '.join(REGIMES)} or all"
        )
    return [r for r in REGIMES if r in names]


def run(
    sizes: Sizes,
    out_dir: Path,
    *,
    progress: bool = True,
    competitor: bool = True,
    regimes: Sequence[str] | None = None,
) -> Results:
    """Run the selected regimes (default: all; ``competitor=False`` drops the peers) on a
    throwaway cluster; write results.json, BENCHMARKS.md and bench.png into ``out_dir``."""
    from pg_background_queue.bench import report
    from pg_background_queue.bench.competitor import run_peers

    chosen = list(REGIMES if regimes is None else regimes)
    if not competitor and "peers" in chosen:
        chosen.remove("peers")
    unknown = set(chosen) - set(REGIMES)
    if unknown:
        raise ValueError(f"unknown regime(s): {', '.join(sorted(unknown))}")
    if sizes.regime_workers not in sizes.workers:
        raise ValueError("Sizes.workers must include Sizes.regime_workers")
    started = time.monotonic()
    res = Results(regimes_run=chosen, regime_workers=sizes.regime_workers)
    say = _step("bench", progress)
    w = sizes.regime_workers
    with _node() as node:
        bench = Bench(node, progress)
        try:
            res.machine = _machine(node, bench.conn)
            res.machine["tuple_counts"] = (
                "pgstattuple" if bench.pgstattuple else "the statistics counters (they lag)"
            )

            def durable_ceiling() -> float:
                if w not in res.ceiling:
                    say(f"pgbench ceiling, {w} client(s)")
                    res.ceiling[w] = bench.ceiling(w, sizes.ceiling_seconds)
                return res.ceiling[w]

            if "durable" in chosen:
                for n in sizes.workers:
                    say(f"pgbench ceiling, {n} client(s)")
                    res.ceiling[n] = bench.ceiling(n, sizes.ceiling_seconds)
                    say(f"throughput, {n} worker(s): {sizes.tasks:,} tasks")
                    res.throughput[n] = bench.throughput(n, sizes.tasks)
                    say(f"  {res.throughput[n]:,.0f} tasks/s vs ceiling {res.ceiling[n]:,.0f}/s")
                pairs = [(res.throughput[w], res.ceiling[w])]
                if sizes.rounds > 1:
                    say(f"durable: {sizes.rounds - 1} more round(s) at {w}")
                    more = bench.rounds(w, sizes.tasks, sizes.ceiling_seconds, sizes.rounds - 1)
                    pairs += [(a, b) for a, b in more["rounds"]]
                res.regimes["durable"] = _rounds_summary(w, sizes.tasks, pairs)
                d = res.regimes["durable"]
                say(f"  {d['ratio']:.2f} x the ceiling (rounds {d['min']:.2f}-{d['max']:.2f})")
            if "cpu" in chosen:
                say("CPU-bound: synchronous_commit = off on both sides")
                res.regimes["cpu"] = bench.cpu_bound(
                    w, sizes.tasks, sizes.ceiling_seconds, sizes.rounds
                )
                c = res.regimes["cpu"]
                say(f"  {c['ratio']:.2f} x the ceiling (rounds {c['min']:.2f}-{c['max']:.2f})")
            if "held" in chosen:
                say(f"held snapshot: {sizes.held_tasks:,} tasks, with and without")
                res.regimes["held"] = bench.held(w, sizes.held_tasks, sizes.autovacuum_wait)
                h = res.regimes["held"]
                say(f"  {h['ratio']:.2f} x the free run; last/first quarter {h['flatness']:.2f}")
            if "sustained" in chosen:
                say(f"sustained: 3 x {sizes.sustained_tasks:,} tasks, autovacuum only")
                res.regimes["sustained"] = bench.sustained(w, sizes.sustained_tasks)
                say(f"  last/first {res.regimes['sustained']['ratio']:.2f}")
            if "reload" in chosen:
                low = max(1, w // 2)
                changes: dict[str, Any] = {}
                for a, b in ((w, low), (low, w)):
                    say(f"reload: max_parallel_running_tasks_count {a} -> {b}")
                    r = bench.reload_rounds(a, b, sizes.reload_tasks, sizes.rounds)
                    changes[f"{a}->{b}"] = r
                    say(
                        f"  {r['ratio']:.2f} x a fresh start at {b} "
                        f"(rounds {r['min']:.2f}-{r['max']:.2f})"
                    )
                res.regimes["reload"] = changes
            if "latency" in chosen:
                say("pickup latency")
                res.latency_ms = bench.latency(sizes.latency_samples)
            if "batched" in chosen:
                say(f"batched: tasks_per_commit = {TASKS_PER_COMMIT}")
                res.regimes["batched"] = bench.batched(w, sizes.tasks, durable_ceiling())
                bat = res.regimes["batched"]
                say(
                    f"  {bat['ratio']:.2f} x the ceiling" if bat["supported"] else "  not supported"
                )
            if "enqueue" in chosen:
                say("enqueue rates")
                res.enqueue = bench.enqueue_rates(sizes.enqueue_single, sizes.enqueue_many)
            if "backlog" in chosen:
                for queued in sizes.backlogs:
                    say(f"backlog {queued:,}")
                    res.backlog[queued], res.claim_plan = bench.backlog(queued, sizes.tasks, w)
            if "memory" in chosen:
                say("worker memory and log volume")
                res.rss_kb, res.log_bytes_per_task = bench.memory(*sizes.rss_tasks)
            if "peers" in chosen:
                res.peers = run_peers(bench, sizes.competitor_tasks, w, TASK_SQL, say)
                res.peers["workers"] = w
        finally:
            bench.close()
    res.seconds = time.monotonic() - started
    res.machine["load_end"] = os.getloadavg()[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(asdict(res), indent=2, default=str))
    report.write(res, sizes, out_dir)
    return res
