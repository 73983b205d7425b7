"""Many roles share the workers (issue 14, section 3): how close to the task-time ideal?

``python -m pg_background_queue.bench.roles`` makes a throwaway cluster (``$PG_CONFIG``),
creates ``--roles`` roles, lets each enqueue ``--tasks`` tasks of ``--task-ms`` milliseconds
at once, and waits until all finished on ``--slots`` worker slots. It prints, per run:

- the ratio of the task-time ideal (all task time spread over the slots) to the wall time
  from the first enqueue's commit to the last task's end (1.0: no time lost to hand-overs);
- each role's first start after the enqueue (p50, max): how long a role waited for a worker;
- worker starts (distinct worker processes that ran tasks) and tasks per worker start;

and once: the pickup of a role's first task (enqueue commit to task start) when a slot is free
(a worker start: launcher, fork, connection, first claim) and when every slot holds another
role's idle worker (a hand-over: that worker is asked to leave, then a start).

Not a test: the numbers depend on the machine and its load. The tests (tests/test_many_roles.py)
keep only what is deterministic.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until, query


@dataclass(frozen=True)
class RolesRun:
    """One run: every role's tasks enqueued at once, then drained."""

    roles: int
    tasks: int
    task_ms: int
    slots: int
    wall_s: float
    ideal_s: float
    first_start_p50_s: float
    first_start_max_s: float
    worker_starts: int

    @property
    def ratio(self) -> float:
        """Task-time ideal over wall time (1.0: no time lost)."""
        return self.ideal_s / self.wall_s if self.wall_s > 0 else 0.0


def role_name(i: int) -> str:
    """The i-th benchmark role."""
    return f"bench_role_{i:03d}"


def setup_roles(node: Any, roles: int) -> None:
    """Create the roles, each allowed to use the queue, and the table tasks log their pid in."""
    query(node, "CREATE TABLE IF NOT EXISTS public.bench_pids (pid integer)")
    query(node, "GRANT INSERT ON public.bench_pids TO PUBLIC")
    for i in range(roles):
        name = role_name(i)
        query(node, f"DROP ROLE IF EXISTS {name}")
        query(node, f"CREATE ROLE {name} LOGIN")
        query(node, f"SELECT pg_background_queue_grant_usage('{name}')")


def run_once(node: Any, roles: int, tasks: int, task_ms: int, slots: int) -> RolesRun:
    """Enqueue every role's tasks (one transaction per role), wait for all, measure."""
    query(node, "TRUNCATE pg_background_tasks, public.bench_pids")
    stmt = (
        "INSERT INTO public.bench_pids VALUES (pg_backend_pid()); "
        f"SELECT pg_sleep({task_ms / 1000.0})"
    )
    for i in range(roles):
        query(
            node,
            "SELECT pg_background_enqueue(%s, 'roles') FROM generate_series(1, %s)",
            (stmt, tasks),
            user=role_name(i),
        )
    total = roles * tasks
    done = "SELECT count(*) FROM pg_background_tasks WHERE state = 'finished'"
    poll_until(
        lambda: int(query(node, done)[0][0]) >= total,
        timeout=max(120.0, 20 * total * task_ms / 1000.0 / slots),
        message="the roles' tasks did not all finish",
    )
    row = query(
        node,
        """
        SELECT extract(epoch FROM max(closed_at) - min(joined_at)),
               (SELECT count(DISTINCT pid) FROM public.bench_pids)
          FROM pg_background_tasks
        """,
    )[0]
    firsts = [
        float(r[0])
        for r in query(
            node,
            """
            SELECT extract(epoch FROM min(started_at) - min(joined_at))
              FROM pg_background_tasks GROUP BY owner
            """,
        )
    ]
    return RolesRun(
        roles=roles,
        tasks=tasks,
        task_ms=task_ms,
        slots=slots,
        wall_s=float(row[0]),
        ideal_s=total * task_ms / 1000.0 / slots,
        first_start_p50_s=statistics.median(firsts),
        first_start_max_s=max(firsts),
        worker_starts=int(row[1]),
    )


def first_pickup_ms(node: Any, role: str) -> float:
    """Enqueue one task as a role that has no worker; its pickup time in milliseconds."""
    query(node, f"DROP ROLE IF EXISTS {role}")
    query(node, f"CREATE ROLE {role} LOGIN")
    query(node, f"SELECT pg_background_queue_grant_usage('{role}')")
    task = int(query(node, "SELECT pg_background_enqueue('SELECT 1')", user=role)[0][0])
    state = "SELECT state FROM pg_background_tasks WHERE id = %s"
    poll_until(
        lambda: query(node, state, (task,))[0][0] == "finished",
        timeout=60,
        message=f"the first task of {role} did not finish",
    )
    sql = "SELECT extract(epoch FROM started_at - joined_at) FROM pg_background_tasks WHERE id = %s"
    return float(query(node, sql, (task,))[0][0]) * 1000.0


def describe(run: RolesRun) -> str:
    """One line per run."""
    return (
        f"{run.roles} roles x {run.tasks} tasks of {run.task_ms} ms on {run.slots} slots: "
        f"wall {run.wall_s:.2f} s, ideal {run.ideal_s:.2f} s, ratio {run.ratio:.2f}; "
        f"first start p50 {run.first_start_p50_s * 1000:.0f} ms, "
        f"max {run.first_start_max_s * 1000:.0f} ms; {run.worker_starts} worker starts "
        f"({run.roles * run.tasks / max(run.worker_starts, 1):.1f} tasks each)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the many-roles benchmark and print one line per run and a summary."""
    parser = argparse.ArgumentParser(prog="python -m pg_background_queue.bench.roles")
    parser.add_argument("--roles", type=int, default=24)
    parser.add_argument("--tasks", type=int, default=40, help="tasks per role")
    parser.add_argument("--task-ms", type=int, default=20)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--idle-timeout", type=int, default=60, help="pg_background_queue.worker_idle_timeout"
    )
    args = parser.parse_args(argv)
    node = make_node(
        "pgbq-bench-roles",
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": args.slots,
            "pg_background_queue.worker_idle_timeout": args.idle_timeout,
            "max_worker_processes": args.slots + 8,
        },
    )
    try:
        setup_roles(node, args.roles)
        starts = [first_pickup_ms(node, f"bench_start_{i}") for i in range(min(3, args.slots))]
        ratios = []
        for _ in range(args.runs):
            run = run_once(node, args.roles, args.tasks, args.task_ms, args.slots)
            ratios.append(run.ratio)
            print(describe(run), flush=True)
            time.sleep(0.5)  # between runs only: let idle workers settle
        print(
            f"ratio over {len(ratios)} runs: median {statistics.median(ratios):.2f}, "
            f"min {min(ratios):.2f}, max {max(ratios):.2f}"
        )
        # every slot now holds an idle worker of a benchmark role
        handovers = [first_pickup_ms(node, f"bench_handover_{i}") for i in range(5)]
        print(
            "first task of a role without a worker: slot free (a worker start) "
            + ", ".join(f"{v:.0f}" for v in starts)
            + " ms; every slot held by another role's idle worker (a hand-over) "
            + ", ".join(f"{v:.0f}" for v in handovers)
            + " ms"
        )
    finally:
        destroy_node(node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
