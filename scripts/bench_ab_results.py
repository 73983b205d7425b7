"""A/B of trivial-task throughput on one cluster: extension 1.2 vs 1.3 SQL objects under the
same 1.3 library (1.3 adds the result columns: each task runs with the result-capturing
receiver and its finish writes result and result_truncated), alternating ABBA rounds, same
node, the bench's settings (fsync on), a warm-up run per version.  The bench's trivial task
returns no rows: the path that must not get slower.

    python scripts/bench_ab_results.py [TASKS=4000] [ROUNDS=4]     # as the postgres user

Prints tasks/s per round, the median, min and max per version, and the ratio of medians.
"""

import statistics
import sys

from pg_background_queue.bench.runner import Bench, _node

TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
WORKERS = 4
A, B = "1.2", "1.3"

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
