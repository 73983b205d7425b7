"""`pgbq bench --quick`: every regime runs and the report shows each figure beside its
same-run baseline (figures are reported, never asserted: the full-size run is `pgbq bench`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pg_background_queue.bench import REGIMES, Sizes, parse_regimes, run
from pg_background_queue.bench.report import markdown
from pg_background_queue.bench.runner import Results, _reload_summary, our_log_bytes
from pg_background_queue.cli import main

# the benchmark tool and the packages are the same whatever the server: once per matrix run
pytestmark = pytest.mark.version_independent


def test_quick_bench_writes_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    quick = Sizes.quick()
    res = run(quick, tmp_path, progress=False)
    report = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in (
        "## Summary", "## Throughput", "## Durable at 2 workers", "## CPU-bound",
        "## Held snapshot", "## Sustained",
        "## Worker count changed by reload", "## Pickup latency", "## Batched commits",
        "## Enqueue rate", "## Backlog scaling", "## Memory and log volume", "## Peers",
    ):  # fmt: skip
        assert heading in report, heading
    assert res.regimes_run == list(REGIMES)
    assert set(res.throughput) == set(res.ceiling) == set(quick.workers)
    assert all(v > 0 for v in [*res.throughput.values(), *res.ceiling.values()])
    w = quick.regime_workers

    durable = res.regimes["durable"]  # quick: one round, the sweep's own figures at w
    assert durable["rounds"] == [[res.throughput[w], res.ceiling[w]]]
    assert durable["ratio"] == res.throughput[w] / res.ceiling[w]

    cpu = res.regimes["cpu"]
    assert len(cpu["rounds"]) == quick.rounds
    assert cpu["ours"] > 0
    assert cpu["ceiling"] > 0
    assert cpu["min"] <= cpu["ratio"] <= cpu["max"]
    for label in ("durable", "CPU-bound"):
        assert re.search(rf"\| {label}.* \| [0-9.]+ x \([0-9,]+ tasks/s vs [0-9,]+ tps\)", report)

    held = res.regimes["held"]
    assert held["free"] > 0
    assert held["ours"] > 0
    assert held["last_quarter"] > 0  # the last task finishes in it
    if held["first_quarter"]:  # 0 only if starting the pool took a quarter of the run
        assert held["flatness"] == pytest.approx(held["last_quarter"] / held["first_quarter"])
    # the queue table is measured during and after; after the VACUUM no dead tuple is left
    assert held["sizes_during"]["pg_background_tasks"]["heap"] > 0
    assert held["sizes_after"]["pg_background_tasks"]["dead"] == 0
    assert held["vacuumed_by"] == "manual VACUUM"  # quick: no wait for autovacuum
    assert "snapshot still held" in report

    sustained = res.regimes["sustained"]
    assert len(sustained["runs"]) == 3
    assert all(v > 0 for v in sustained["runs"])
    assert sustained["ratio"] == sustained["runs"][2] / sustained["runs"][0]

    reload = res.regimes["reload"]
    assert set(reload) == {f"{w}->{w // 2}", f"{w // 2}->{w}"}
    for change in reload.values():
        assert change["tasks_after_reload"] > 0
        assert change["fresh"] > 0
        assert len(change["rounds"]) == 1  # quick: one round
        assert change["ratio"] == change["ours"] / change["fresh"]
    assert re.search(rf"\| reload {w}->{w // 2} workers: .* \| [0-9.]+ x", report)

    lat = res.latency_ms
    assert lat["commit_p50"] > 0
    assert lat["p50_above_commit"] == pytest.approx(lat["p50"] - lat["commit_p50"])
    assert "above the enqueuing COMMIT's own p50" in report

    batched = res.regimes["batched"]
    if batched["supported"]:
        assert batched["ours"] > 0
        assert batched["ratio"] == batched["ours"] / res.ceiling[w]
        assert batched["vs_unbatched"] == batched["ours"] / batched["unbatched"]
    else:  # the build rejects the key at SET time: reported, the run goes on
        assert "tasks_per_commit" in batched["reason"]
        assert "not supported: the extension rejects the key" in report

    assert set(res.backlog) == set(quick.backlogs)
    # the claim is an index scan of the claim index: no sort, no sequential scan
    assert "Index Scan using pg_background_tasks_claim_idx" in res.claim_plan
    # the claim floor bounds the index scan itself (1.3), not a filter on what it returns
    index_cond = [ln for ln in res.claim_plan.splitlines() if "Index Cond:" in ln]
    assert index_cond, res.claim_plan
    # (1.4: priority is a domain over integer, shown with its cast to the base type)
    assert re.search(
        r"ROW\((\(priority\)::integer|priority), next_run_at, id\) >= ROW\(\$4, \$5, \$6\)",
        index_cond[0],
    ), res.claim_plan
    assert "Sort" not in res.claim_plan
    assert "Seq Scan" not in res.claim_plan

    peers = res.peers
    assert peers["workers"] == w
    for name in ("PgQueuer", "procrastinate"):
        assert peers[name].get("throughput", 0) > 0, peers[name]
        assert peers[name]["ours"] > 0  # our own run, just before the peer's
        assert peers[name]["wal_per_job"] > 0
        assert peers[name]["ours_wal_per_job"] > 0
    for name in ("graphile-worker", "graphile-worker (batched completion)"):
        # optional (npm): measured, or skipped with the reason on its report line
        if "skipped" in peers[name]:
            assert "graphile-worker" in peers[name]["skipped"] or "node" in peers[name]["skipped"]
        else:
            assert peers[name]["throughput"] > 0
            assert peers[name]["ours"] > 0
        assert re.search(rf"\| {re.escape(name)} \| ", report)
    assert re.search(r"\| >= 2 x PgQueuer \(\d in flight\) \| [0-9.]+ x", report)

    assert (tmp_path / "bench.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["log_bytes_per_task"] == res.log_bytes_per_task
    assert saved["regimes"]["sustained"]["runs"] == sustained["runs"]


def test_selected_regimes_only(tmp_path: Path) -> None:
    res = run(Sizes.quick(), tmp_path, progress=False, regimes=parse_regimes("batched,latency"))
    assert res.regimes_run == ["latency", "batched"]
    assert set(res.regimes) == {"batched"}
    assert res.latency_ms["p50"] > 0
    # batched compares with the durable ceiling, measured for it even without `durable`
    assert set(res.ceiling) == {Sizes.quick().regime_workers}
    assert res.throughput == {}
    assert not res.peers
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Pickup latency" in report
    assert "Not run (regime `durable` not selected)" in report
    assert "## Held snapshot" not in report


def test_unknown_regime_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"unknown regime.*nope.*choose from durable"):
        parse_regimes("held,nope")
    assert parse_regimes("all") == list(REGIMES)
    assert parse_regimes(" sustained , held") == ["held", "sustained"]
    assert main(["bench", "--quick", "--regime", "held,nope"]) == 1
    assert "unknown regime(s) nope" in capsys.readouterr().err


def test_log_volume_counts_only_our_processes_lines() -> None:
    """The log-volume figure counts what the extension's processes wrote (continuation lines
    included), not the server's own lines: a checkpoint during the run is not ours."""
    ours = (
        "2026-12-04 19:45:01.123 GMT [4242] pg_background_queue worker LOG:  something\n"
        "\tDETAIL:  more of it\n"
    )
    theirs = (
        "2026-12-04 19:45:02.456 GMT [77] checkpointer LOG:  checkpoint starting: wal\n"
        "2026-12-04 19:45:03.789 GMT [78] client backend postgres@postgres ERROR:  oops\n"
        "\tSTATEMENT:  SELECT 1/0\n"
    )
    maintenance = "2026-12-04 19:45:04.000 GMT [79] pg_background_queue maintenance LOG:  x\n"
    assert our_log_bytes(theirs) == 0
    assert our_log_bytes(ours + theirs + maintenance) == len(ours) + len(maintenance)


def test_reload_rounds_report_the_median_round_and_the_spread() -> None:
    """Three interleaved rounds of the reload regime: the summary is the median round's
    ratio (not the mean, not the last round), the range beside it, every round listed."""
    rounds = [
        {"tasks_after_reload": 900, "seconds_after_reload": 1.0, "ours": 900.0, "fresh": 1000.0},
        {"tasks_after_reload": 800, "seconds_after_reload": 1.0, "ours": 800.0, "fresh": 1000.0},
        {"tasks_after_reload": 990, "seconds_after_reload": 1.0, "ours": 990.0, "fresh": 1000.0},
    ]
    r = _reload_summary(8, 4, rounds)
    assert (r["before"], r["after"]) == (8, 4)
    assert r["ratio"] == pytest.approx(0.9)
    assert r["ours"] == 900.0
    assert (r["min"], r["max"]) == (pytest.approx(0.8), pytest.approx(0.99))
    assert [x["ratio"] for x in r["rounds"]] == pytest.approx([0.9, 0.8, 0.99])

    res = Results(regimes_run=["reload"], regime_workers=8, regimes={"reload": {"8->4": r}})
    text = markdown(res, Sizes())
    assert re.search(
        r"\| reload 8->4 workers: .* \| 0\.90 x \(900 vs 1,000 tasks/s, 1\.0 s after the "
        r"reload; median of 3 interleaved rounds, 0\.80-0\.99\) \| met \|",
        text,
    )
    assert "| 8->4 | 2 | 800 | 800 | 1,000 | 0.80 |" in text
    assert "| 8->4 | median | | | | 0.90 |" in text
