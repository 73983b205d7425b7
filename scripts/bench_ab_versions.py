"""A/B of trivial-task throughput on one cluster: extension 1.1 vs 1.2 (the 1.2 trigger and
indexes on the task table), alternating ABBA rounds, same library, same node, the bench's
settings (fsync on), a warm-up run per version.

    python scripts/bench_ab_versions.py [TASKS=4000] [ROUNDS=4]     # as the postgres user

Prints tasks/s per round, the median, min and max per version, and the ratio of medians.
"""

import statistics
import sys

from pg_background_queue.bench.runner import Bench, _node

TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
WORKERS = 4

results = {"1.1": [], "1.2": []}
with _node() as node:
    b = Bench(node, progress=False)
    b.throughput(WORKERS, 500)  # warm-up
    for r in range(ROUNDS):
        for version in ("1.1", "1.2") if r % 2 == 0 else ("1.2", "1.1"):
            b.set_workers(0)
            b.conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_background_queue_workers"
            )
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
m11, m12 = statistics.median(results["1.1"]), statistics.median(results["1.2"])
print(f"ratio 1.2/1.1 = {m12 / m11:.3f}")
