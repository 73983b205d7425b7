"""Peer job queues on the same cluster: every job executes the same SQL, same concurrency.

Each peer runs at its best documented configuration, with ``workers`` jobs in flight at
once, each job making one commit of its effect (the task's INSERT) on a connection of the
peer's own pool, as our tasks do; throughput is measured up to the last job's effect:

- **PgQueuer** (PyPI ``pgqueuer``, psycopg driver): ``PROCESSES`` processes, each with one
  ``QueueManager`` dequeuing batches of ``PGQUEUER_BATCH`` and a pool of ``workers /
  PROCESSES`` connections for the jobs' SQL (the best of the 14 layouts tried for issue 15);
  the processes start, connect and register first, and the clock starts when they are
  released together.
- **procrastinate** (PyPI): ``PROCESSES`` worker processes with ``concurrency = workers /
  PROCESSES`` async jobs each, LISTEN/NOTIFY on, jobs run the SQL through procrastinate's
  own psycopg pool; released together like PgQueuer.
- **graphile-worker** (npm; Node.js): one runner with ``concurrency = workers`` and
  ``maxPoolSize = workers + 1`` (its documented sizing), the job runs the SQL with
  ``helpers.query``; once with the defaults and once with its documented batching
  (``localQueue.size = 500``, ``completeJobBatchDelay = 0``, ``failJobBatchDelay = 0``: job
  completion is then committed in batches, apart from the job's effect). The runner is up
  and idle first; the clock starts at the COMMIT that enqueues the jobs (as for our own
  throughput, which starts at the enqueue's commit).

Beside the rate, the WAL each side wrote per job (enqueue, run, completion, and the
peer's schema setup on its first run; the report says so).

A peer that is not installed is skipped with the reason (and the way to install it). Each
peer runs right after our own run of the same jobs at the same concurrency, its baseline.
graphile-worker is looked for in ``$PGBQ_NODE_DIR`` (default: ``<venv>/node``), installed
there with ``npm install --prefix DIR graphile-worker``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from pg_background_queue.bench.runner import Bench

#: worker processes of the Python peers (the jobs in flight are spread over them)
PROCESSES = 2
#: PgQueuer's dequeue batch (best of 10, 50, 100, 500 with 2 x 4 and 8 x 1 layouts)
PGQUEUER_BATCH = 500
#: graphile-worker's documented batching options (worker.graphile.org/docs/performance)
GRAPHILE_BATCHED = {"localQueue": {"size": 500}, "completeJobBatchDelay": 0, "failJobBatchDelay": 0}
#: how long a peer may take to drain its jobs before the run is abandoned
DRAIN_TIMEOUT = 1800.0


def _layout(workers: int) -> tuple[int, int]:
    """(processes, jobs in flight per process) with processes x per = workers."""
    procs = PROCESSES if workers % PROCESSES == 0 else 1
    return procs, workers // procs


# -- PgQueuer --------------------------------------------------------------------------


async def _pgqueuer_enqueue(dsn: str, tasks: int) -> None:
    from pgqueuer import Queries
    from pgqueuer.db import PsycopgDriver

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.enqueue(["bench"] * tasks, [None] * tasks, [0] * tasks)


async def _pgqueuer_consume(dsn: str, task_sql: str, per: int, ready: Any, go: Any) -> None:
    from pgqueuer import Queries, QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    pool: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
    for _ in range(per):
        pool.put_nowait(await psycopg.AsyncConnection.connect(dsn, autocommit=True))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("bench")
        async def bench(job: Job) -> None:
            work = await pool.get()
            try:
                await work.execute(task_sql)
            finally:
                pool.put_nowait(work)

        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        await qm.run(
            mode=QueueExecutionMode.drain,
            batch_size=PGQUEUER_BATCH,
            dequeue_timeout=timedelta(seconds=1),
            log_aggregation_interval=timedelta(0),
        )
    while not pool.empty():
        await pool.get_nowait().close()


def _pgqueuer_worker(dsn: str, task_sql: str, per: int, ready: Any, go: Any) -> None:
    asyncio.run(_pgqueuer_consume(dsn, task_sql, per, ready, go))


# -- procrastinate ---------------------------------------------------------------------


def _procrastinate_app(dsn: str, task_sql: str, pool_size: int) -> tuple[Any, Any]:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=dsn, min_size=pool_size, max_size=pool_size
        )
    )

    @app.task(name="bench", queue="bench")
    async def bench() -> None:
        await app.connector.execute_query_async(task_sql)

    return app, bench


async def _procrastinate_enqueue(dsn: str, task_sql: str, tasks: int) -> None:
    app, bench = _procrastinate_app(dsn, task_sql, 2)
    async with app.open_async():
        installed = await app.connector.execute_query_one_async(
            "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS installed"
        )
        if not installed["installed"]:
            await app.schema_manager.apply_schema_async()
        chunk = 5_000
        for start in range(0, tasks, chunk):
            await bench.batch_defer_async(*([{}] * min(chunk, tasks - start)))


async def _procrastinate_consume(dsn: str, task_sql: str, per: int, ready: Any, go: Any) -> None:
    # the jobs' connections, the fetch/finish statements and the LISTEN connection
    app, _ = _procrastinate_app(dsn, task_sql, per + 2)
    async with app.open_async():
        await app.connector.execute_query_async("SELECT 1")
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        await app.run_worker_async(
            queues=["bench"],
            concurrency=per,
            wait=False,
            listen_notify=True,
            install_signal_handlers=False,
        )


def _procrastinate_worker(dsn: str, task_sql: str, per: int, ready: Any, go: Any) -> None:
    import logging

    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    asyncio.run(_procrastinate_consume(dsn, task_sql, per, ready, go))


# -- the Python peers' common driver ---------------------------------------------------


def _released_processes(
    bench: Bench, target: Callable[..., None], task_sql: str, tasks: int, workers: int
) -> float:
    """Start the peer's processes, release them together, return jobs/s to the last effect."""
    procs_n, per = _layout(workers)
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(procs_n)]
    procs = [
        ctx.Process(target=target, args=(bench.dsn, task_sql, per, ready, go), daemon=True)
        for ready in readies
    ]
    for p in procs:
        p.start()
    try:
        for ready in readies:
            if not ready.wait(120):
                raise RuntimeError(f"a {target.__name__} process did not start")
        t0 = bench.now()
        go.set()
        t1 = bench.wait_sink(tasks, "peer", timeout=DRAIN_TIMEOUT)
    finally:
        go.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
    return tasks / (t1 - t0)


def pgqueuer_throughput(bench: Bench, tasks: int, workers: int, task_sql: str) -> dict[str, Any]:
    """Jobs/s of PgQueuer from the release of its processes to the last job's effect."""
    import pgqueuer

    bench.reset()
    asyncio.run(_pgqueuer_enqueue(bench.dsn, tasks))
    rate = _released_processes(bench, _pgqueuer_worker, task_sql, tasks, workers)
    procs, per = _layout(workers)
    return {
        "version": getattr(pgqueuer, "__version__", "?"),
        "config": f"{procs} processes x {per} connections, batch_size {PGQUEUER_BATCH}",
        "tasks": tasks,
        "throughput": rate,
    }


def procrastinate_throughput(
    bench: Bench, tasks: int, workers: int, task_sql: str
) -> dict[str, Any]:
    """Jobs/s of procrastinate from the release of its workers to the last job's effect."""
    import procrastinate

    bench.reset()
    asyncio.run(_procrastinate_enqueue(bench.dsn, task_sql, tasks))
    rate = _released_processes(bench, _procrastinate_worker, task_sql, tasks, workers)
    procs, per = _layout(workers)
    return {
        "version": getattr(procrastinate, "__version__", "?"),
        "config": f"{procs} worker processes x concurrency {per}, listen_notify",
        "tasks": tasks,
        "throughput": rate,
    }


# -- graphile-worker -------------------------------------------------------------------

_GRAPHILE_SCRIPT = r"""
const path = require("path");
const gw = require(path.join(process.env.PGBQ_NODE_DIR, "node_modules", "graphile-worker"));
const opts = JSON.parse(process.argv[2]);
const logger = new gw.Logger(() => (level, message) => {
  if (level === "error") console.error(message);
});
(async () => {
  const runner = await gw.run({
    connectionString: opts.url,
    concurrency: opts.concurrency,
    maxPoolSize: opts.concurrency + 1,
    noHandleSignals: true,
    logger,
    preset: { worker: opts.preset },
    taskList: { bench: async (payload, helpers) => { await helpers.query(opts.sql); } },
  });
  process.stdout.write("ready\n");
  process.stdin.on("end", async () => { await runner.stop(); process.exit(0); });
  process.stdin.resume();
})().catch((e) => { console.error(e); process.exit(1); });
"""


def node_dir() -> Path:
    """Where graphile-worker is looked for: ``$PGBQ_NODE_DIR`` or ``<venv>/node``."""
    return Path(os.environ.get("PGBQ_NODE_DIR") or Path(sys.prefix) / "node")


def graphile_version() -> str | None:
    """The installed graphile-worker's version, or None."""
    manifest = node_dir() / "node_modules" / "graphile-worker" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def graphile_throughput(
    bench: Bench, tasks: int, workers: int, task_sql: str, batched: bool
) -> dict[str, Any]:
    """Jobs/s of graphile-worker from the enqueue's commit to the last job's effect."""
    node = shutil.which("node")
    version = graphile_version()
    if node is None or version is None:
        raise RuntimeError(_missing_graphile() or "graphile-worker is missing")
    bench.reset()
    user = bench.scalar("SELECT current_user")
    url = f"postgres://{user}@{bench.node.host}:{bench.node.port}/postgres"
    opts = {
        "url": url,
        "concurrency": workers,
        "sql": task_sql,
        "preset": GRAPHILE_BATCHED if batched else {},
    }
    with tempfile.TemporaryDirectory(prefix="pgbq-graphile-") as tmp:
        script = Path(tmp) / "runner.cjs"
        script.write_text(_GRAPHILE_SCRIPT)
        proc = subprocess.Popen(
            [node, str(script), json.dumps(opts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PGBQ_NODE_DIR": str(node_dir())},
        )
        try:
            assert proc.stdout is not None
            assert proc.stdin is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                proc.wait(timeout=30)
                err = proc.stderr.read() if proc.stderr else ""
                raise RuntimeError(f"graphile-worker did not start: {line}{err}".strip())
            with bench.conn.transaction():
                bench.conn.execute(
                    "SELECT count(graphile_worker.add_job('bench')) FROM generate_series(1, %s)",
                    (tasks,),
                )
            t0 = bench.now()
            t1 = bench.wait_sink(tasks, "graphile-worker", timeout=DRAIN_TIMEOUT)
            proc.stdin.close()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    config = f"concurrency {workers}, maxPoolSize {workers + 1}"
    if batched:
        config += ", localQueue.size 500, completeJobBatchDelay 0, failJobBatchDelay 0"
    return {"version": version, "config": config, "tasks": tasks, "throughput": tasks / (t1 - t0)}


def _missing_module(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install 'pg-background-queue[bench]')"
    return None


def _missing_graphile() -> str | None:
    if shutil.which("node") is None:
        return "Node.js (node) is not on PATH"
    if graphile_version() is None:
        return (
            f"graphile-worker is not installed in {node_dir()} "
            f"(npm install --prefix {node_dir()} graphile-worker, or set PGBQ_NODE_DIR)"
        )
    return None


#: peer name -> (why it cannot run, or None; how to measure it)
PEERS: dict[
    str, tuple[Callable[[], str | None], Callable[[Bench, int, int, str], dict[str, Any]]]
] = {
    "PgQueuer": (lambda: _missing_module("pgqueuer"), pgqueuer_throughput),
    "procrastinate": (lambda: _missing_module("procrastinate"), procrastinate_throughput),
    "graphile-worker": (
        _missing_graphile,
        lambda b, t, w, s: graphile_throughput(b, t, w, s, batched=False),
    ),
    "graphile-worker (batched completion)": (
        _missing_graphile,
        lambda b, t, w, s: graphile_throughput(b, t, w, s, batched=True),
    ),
}


def run_peers(
    bench: Bench,
    tasks: int,
    workers: int,
    task_sql: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Every peer in turn on ``bench``'s cluster, each right after our own run of the same
    jobs at the same concurrency (its baseline, ``ours``, so both see the same machine load):
    {name: figures, or {"skipped": reason}}."""
    out: dict[str, Any] = {}
    for name, (missing, measure) in PEERS.items():
        reason = missing()
        if reason is not None:
            say(f"{name}: skipped: {reason}")
            out[name] = {"skipped": reason}
            continue
        say(f"{name}: {tasks:,} jobs, {workers} in flight, after ours")
        lsn = [bench.scalar("SELECT pg_current_wal_lsn()::text")]
        ours = bench.throughput(workers, tasks)
        lsn.append(bench.scalar("SELECT pg_current_wal_lsn()::text"))
        figures = measure(bench, tasks, workers, task_sql)
        lsn.append(bench.scalar("SELECT pg_current_wal_lsn()::text"))
        wal = [
            float(bench.scalar("SELECT pg_wal_lsn_diff(%s, %s)", (b, a))) / tasks
            for a, b in itertools.pairwise(lsn)
        ]
        out[name] = {**figures, "ours": ours, "ours_wal_per_job": wal[0], "wal_per_job": wal[1]}
        say(f"  {figures['throughput']:,.0f} jobs/s vs ours {ours:,.0f} just before")
    return out
