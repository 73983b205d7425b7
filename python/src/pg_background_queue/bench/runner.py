"""Orchestration of the benchmark: cluster, measurements, report."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
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
CLAIM_SQL = (
    "SELECT id, topic, state::text FROM public.pg_background_tasks "
    "WHERE owner = $1 AND state IN ('pending', 'retrying') AND next_run_at <= $2 "
    "AND COALESCE(topic, '') <> ALL ($3) ORDER BY priority, next_run_at, id "
    "LIMIT 1 FOR UPDATE SKIP LOCKED"
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


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does (``Sizes.quick()`` for a smoke run)."""

    workers: tuple[int, ...] = (1, 2, 4, 8)
    tasks: int = 20_000
    ceiling_seconds: float = 10.0
    latency_samples: int = 200
    enqueue_single: int = 50_000
    enqueue_many: int = 100_000
    backlogs: tuple[int, ...] = (1_000, 100_000, 1_000_000)
    rss_tasks: tuple[int, int] = (1_000, 100_000)
    competitor_tasks: int = 20_000

    @classmethod
    def quick(cls) -> Sizes:
        """Tiny sizes: checks that every measurement runs, in well under a minute."""
        return cls(
            workers=(1, 2),
            tasks=300,
            ceiling_seconds=1.0,
            latency_samples=10,
            enqueue_single=1_000,
            enqueue_many=2_000,
            backlogs=(100, 2_000),
            rss_tasks=(100, 400),
            competitor_tasks=300,
        )


@dataclass
class Results:
    """Every figure of one run (written to JSON and rendered to BENCHMARKS.md)."""

    machine: dict[str, Any] = field(default_factory=dict)
    ceiling: dict[int, float] = field(default_factory=dict)
    throughput: dict[int, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    enqueue: dict[str, float] = field(default_factory=dict)
    backlog: dict[int, float] = field(default_factory=dict)
    claim_plan: str = ""
    competitor: dict[str, Any] = field(default_factory=dict)
    rss_kb: dict[int, dict[str, int]] = field(default_factory=dict)
    log_bytes_per_task: float = 0.0
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

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    # -- helpers -------------------------------------------------------------------------

    def scalar(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        """First column of the first row."""
        row = self.conn.execute(query, params).fetchone()
        return row[0] if row else None

    def set_workers(self, n: int) -> None:
        """Set max_parallel_running_tasks_count; at 0, wait until no task is running."""
        self.conn.execute(
            sql.SQL(
                "ALTER SYSTEM SET pg_background_queue.max_parallel_running_tasks_count = {}"
            ).format(sql.Literal(n))
        )
        self.conn.execute("SELECT pg_reload_conf()")
        poll_until(
            lambda: (
                self.scalar("SHOW pg_background_queue.max_parallel_running_tasks_count") == str(n)
            ),
            timeout=30,
            message=f"max_parallel_running_tasks_count = {n}",
        )
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
        """Commit of an enqueue (just before COMMIT is sent) to the task's start, in ms."""
        self.reset()
        self.set_workers(workers)
        self.client.wait([self.client.enqueue("SELECT 1")], timeout=60)  # warm pool
        values: list[float] = []
        with psycopg.connect(self.dsn) as tx, self.bar(samples, "pickup latency") as bar:
            for _ in range(samples):
                task_id = int(tx.execute("SELECT pg_background_enqueue('SELECT 1')").fetchone()[0])  # type: ignore[index]
                before = time.time()
                tx.commit()
                [task] = self.client.wait([task_id], timeout=60)
                assert task.started_at is not None
                values.append((task.started_at.timestamp() - before) * 1000)
                bar.update()
        values.sort()

        def pct(p: float) -> float:
            return values[min(len(values) - 1, round(p * (len(values) - 1)))]

        return {
            "p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": values[-1],
            "mean": statistics.fmean(values),
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
            self.conn.execute(f"PREPARE pgbq_claim(oid, timestamptz, text[]) AS {CLAIM_SQL}")
            rows = self.conn.execute(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE pgbq_claim("
                "'postgres'::regrole, now(), '{}')"
            ).fetchall()
            self.conn.execute("DEALLOCATE pgbq_claim")
        return "\n".join(r[0] for r in rows)

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
        per_task = (log.stat().st_size - log_start) / (second - first)
        return rss, per_task


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
    }


@contextmanager
def _node() -> Iterator[Any]:
    node = make_node("pgbq-bench", extra_conf=BENCH_CONF)
    try:
        yield node
    finally:
        destroy_node(node)


def _step(label: str, progress: bool) -> Callable[[str], None]:
    def say(text: str) -> None:
        if progress:
            tqdm.write(f"[{label}] {text}")

    return say


def run(
    sizes: Sizes,
    out_dir: Path,
    *,
    progress: bool = True,
    competitor: bool = True,
) -> Results:
    """Run every measurement on a throwaway cluster; write results.json, BENCHMARKS.md, PNG."""
    from pg_background_queue.bench import report
    from pg_background_queue.bench.competitor import pgqueuer_throughput

    started = time.monotonic()
    res = Results()
    say = _step("bench", progress)
    with _node() as node:
        bench = Bench(node, progress)
        try:
            res.machine = _machine(node, bench.conn)
            for w in sizes.workers:
                say(f"pgbench ceiling, {w} client(s)")
                res.ceiling[w] = bench.ceiling(w, sizes.ceiling_seconds)
                say(f"throughput, {w} worker(s): {sizes.tasks:,} tasks")
                res.throughput[w] = bench.throughput(w, sizes.tasks)
                say(f"  {res.throughput[w]:,.0f} tasks/s vs ceiling {res.ceiling[w]:,.0f}/s")
            best = max(res.throughput, key=res.throughput.__getitem__)
            say("pickup latency")
            res.latency_ms = bench.latency(sizes.latency_samples)
            say("enqueue rates")
            res.enqueue = bench.enqueue_rates(sizes.enqueue_single, sizes.enqueue_many)
            for queued in sizes.backlogs:
                say(f"backlog {queued:,}")
                res.backlog[queued], res.claim_plan = bench.backlog(queued, sizes.tasks, best)
            say("worker memory and log volume")
            res.rss_kb, res.log_bytes_per_task = bench.memory(*sizes.rss_tasks)
            if competitor:
                say(f"PgQueuer, {best} worker process(es)")
                bench.reset()
                res.competitor = pgqueuer_throughput(
                    bench.dsn, sizes.competitor_tasks, best, TASK_SQL, progress
                )
                res.competitor["ours"] = res.throughput[best]
                res.competitor["workers"] = best
        finally:
            bench.close()
    res.seconds = time.monotonic() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(asdict(res), indent=2, default=str))
    report.write(res, sizes, out_dir)
    return res
