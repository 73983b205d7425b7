"""PgQueuer on the same cluster: jobs that execute the same SQL at the same concurrency.

Each of ``workers`` processes runs one PgQueuer ``QueueManager`` (psycopg driver) whose
entrypoint executes the task's SQL on a connection of its own, in autocommit mode, so each
job makes one durable commit of its effect, as our tasks do.  The processes start, connect
and register first; the clock starts when they are released together.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from datetime import timedelta
from typing import Any

import psycopg

from pg_background_queue.testing.cluster import poll_until

# PgQueuer's best of the batch sizes we tried here (10, 50, 100, 500) with no cap on picked
# jobs; capping picks (max_concurrent_tasks = 2 x batch) made it wait on its status buffer.
BATCH = 100


async def _install_and_enqueue(dsn: str, tasks: int) -> None:
    from pgqueuer import Queries
    from pgqueuer.db import PsycopgDriver

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        queries = Queries(PsycopgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
        await queries.enqueue(["bench"] * tasks, [None] * tasks, [0] * tasks)


async def _consume(dsn: str, task_sql: str, ready: Any, go: Any) -> None:
    from pgqueuer import Queries, QueueManager
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as work,
    ):
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("bench")
        async def bench(job: Job) -> None:
            await work.execute(task_sql)

        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        await qm.run(
            mode=QueueExecutionMode.drain,
            batch_size=BATCH,
            dequeue_timeout=timedelta(seconds=1),
            log_aggregation_interval=timedelta(0),
        )


def _worker(dsn: str, task_sql: str, ready: Any, go: Any) -> None:
    asyncio.run(_consume(dsn, task_sql, ready, go))


def pgqueuer_throughput(
    dsn: str, tasks: int, workers: int, task_sql: str, progress: bool
) -> dict[str, Any]:
    """Jobs/s of PgQueuer from the release of its workers to the last job's effect."""
    try:
        import pgqueuer
    except ImportError:
        return {"skipped": "pgqueuer is not installed (pip install 'pg-background-queue[bench]')"}
    asyncio.run(_install_and_enqueue(dsn, tasks))
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(workers)]
    procs = [
        ctx.Process(target=_worker, args=(dsn, task_sql, ready, go), daemon=True)
        for ready in readies
    ]
    for p in procs:
        p.start()
    try:
        for ready in readies:
            if not ready.wait(60):
                raise RuntimeError("a PgQueuer worker did not start")
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
            t0 = float(row[0]) if row else 0.0
            go.set()

            def done() -> bool:
                r = conn.execute("SELECT count(*) FROM public.bench_sink").fetchone()
                return bool(r and r[0] >= tasks)

            poll_until(done, timeout=1800, interval=0.1, message="PgQueuer jobs done")
            row = conn.execute(
                "SELECT extract(epoch FROM max(at)) FROM public.bench_sink"
            ).fetchone()
            t1 = float(row[0]) if row else t0
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return {
        "version": getattr(pgqueuer, "__version__", "?"),
        "tasks": tasks,
        "batch_size": BATCH,
        "throughput": tasks / (t1 - t0),
    }
