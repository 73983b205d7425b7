"""``pgbq bench``: the benchmark suite of pg_background_queue.

Everything runs on one throwaway cluster with durable commits (fsync on, synchronous_commit
on), and every figure is reported next to a baseline measured in the same run: the pgbench
ceiling of one durable single-row UPDATE per transaction, the smallest backlog, the first RSS
sample, and PgQueuer executing the same SQL at the same concurrency.
"""

from pg_background_queue.bench.runner import REGIMES, Sizes, parse_regimes, run

__all__ = ["REGIMES", "Sizes", "parse_regimes", "run"]
