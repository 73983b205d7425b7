"""`pgbq bench --quick`: every measurement runs and the report is complete (figures are
reported, never asserted: the full-size run is `pgbq bench`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pg_background_queue.bench import Sizes, run


def test_quick_bench_writes_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    res = run(Sizes.quick(), tmp_path, progress=False)
    report = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in (
        "## Summary", "## Throughput", "## Pickup latency", "## Enqueue rate",
        "## Backlog scaling", "## Memory and log volume",
    ):  # fmt: skip
        assert heading in report
    assert set(res.throughput) == set(res.ceiling) == set(Sizes.quick().workers)
    assert all(v > 0 for v in [*res.throughput.values(), *res.ceiling.values()])
    assert set(res.latency_ms) == {"p50", "p95", "p99", "max", "mean"}
    assert set(res.backlog) == set(Sizes.quick().backlogs)
    # the claim is an index scan of the claim index: no sort, no sequential scan
    assert "Index Scan using pg_background_tasks_claim_idx" in res.claim_plan
    assert "Sort" not in res.claim_plan
    assert "Seq Scan" not in res.claim_plan
    assert res.competitor.get("throughput", 0) > 0, res.competitor
    assert re.search(r"\| >= 2 x PgQueuer \(\d workers\) \| [0-9.]+ x", report)
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["log_bytes_per_task"] == res.log_bytes_per_task
