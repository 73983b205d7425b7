"""A/B of trivial-task throughput on one cluster between two versions of the extension's SQL
objects under the same library: alternating ABBA rounds, same node, the bench's settings
(fsync on), a warm-up run per version.  The bench's trivial task (an INSERT) returns no rows.

    python scripts/bench_ab_versions.py [A=1.2] [B=1.3] [TASKS=4000] [ROUNDS=4]   # as postgres

E.g. 1.1 against 1.2 measures 1.2's trigger and indexes on the task table; 1.2 against 1.3 the
result columns (each task runs with the result-capturing receiver) and the claim floor's
trigger.  Prints tasks/s per round, the median, min and max per version, and the ratio of
medians.
"""

import statistics
import sys

from pg_background_queue.bench.runner import Bench, _node

A = sys.argv[1] if len(sys.argv) > 1 else "1.2"
B = sys.argv[2] if len(sys.argv) > 2 else "1.3"
TASKS = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 4
WORKERS = 4

results: dict[str, list[float]] = {A: [], B: []}
with _node() as node:
    b = Bench(node, progress=False)
    b.throughput(WORKERS, 500)  # warm-up
    for r in range(ROUNDS):
        for version in (A, B) if r % 2 == 0 else (B, A):
            b.set_workers(0)
            b.conn.execute("SELECT pg_terminate_backend(pid) FROM pg_background_queue_workers")
            b.conn.execute("DROP EXTENSION pg_background_queue")
            b.conn.execute(f"CREATE EXTENSION pg_background_queue VERSION '{version}'")
            b.throughput(WORKERS, 1000)  # warm-up of this version
            tps = b.throughput(WORKERS, TASKS)
            results[version].append(tps)
            print(f"round {r} {version}: {tps:.0f} tasks/s", flush=True)
    b.close()
for v, xs in results.items():
    print(
        f"{v}: median {statistics.median(xs):.0f}  min {min(xs):.0f}  max {max(xs):.0f}  n={len(xs)}"
    )
print(f"ratio {B}/{A} = {statistics.median(results[B]) / statistics.median(results[A]):.3f}")
