"""BENCHMARKS.md and bench.png from one run's results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pg_background_queue.bench.runner import Results, Sizes

TARGETS = {
    "ceiling": 0.5,
    "p50_ms": 2.0,
    "p99_ms": 10.0,
    "backlog": 0.9,
    "enqueue_many": 100_000,
    "single": 10_000,
    "competitor": 2.0,
    "rss": 0.10,
}


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


def markdown(res: Results, sizes: Sizes) -> str:
    """The report: tables, each figure next to its baseline and target."""
    best = max(res.throughput, key=res.throughput.__getitem__)
    ratio = res.throughput[best] / res.ceiling[best]
    out = [
        "# Benchmarks",
        "",
        "Produced by `pgbq bench` (see README, *Benchmarks*) on one throwaway cluster with",
        "durable commits (`fsync = on`, `synchronous_commit = on`). Every figure is compared",
        "with a baseline measured in the same run; absolute numbers depend on the machine.",
        "",
        f"Machine: {res.machine.get('cpus')} CPUs, {res.machine.get('platform')}; "
        f"{str(res.machine.get('postgres', '')).split(' on ')[0]}. Run time {res.seconds:.0f} s.",
        "",
        "## Summary",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| throughput >= 0.5 x pgbench ceiling (best worker count) | {ratio:.2f} x "
        f"({res.throughput[best]:,.0f} vs {res.ceiling[best]:,.0f}/s at {best}) "
        f"| {_ok(ratio >= TARGETS['ceiling'])} |",
        f"| pickup latency p50 <= 2 ms | {res.latency_ms['p50']:.2f} ms "
        f"| {_ok(res.latency_ms['p50'] <= TARGETS['p50_ms'])} |",
        f"| pickup latency p99 <= 10 ms | {res.latency_ms['p99']:.2f} ms "
        f"| {_ok(res.latency_ms['p99'] <= TARGETS['p99_ms'])} |",
    ]
    if res.backlog:
        small, large = min(res.backlog), max(res.backlog)
        b = res.backlog[large] / res.backlog[small]
        out.append(
            f"| throughput with {large:,} queued >= 0.9 x with {small:,} | {b:.2f} x "
            f"| {_ok(b >= TARGETS['backlog'])} |"
        )
    many = res.enqueue["enqueue_many"]
    single = res.enqueue["single_calls_one_transaction"]
    out += [
        f"| enqueue_many >= 100,000 tasks/s | {many:,.0f}/s "
        f"| {_ok(many >= TARGETS['enqueue_many'])} |",
        f"| single enqueue calls >= 10,000 tasks/s (one transaction) | {single:,.0f}/s "
        f"| {_ok(single >= TARGETS['single'])} |",
    ]
    comp = res.competitor
    if comp.get("throughput"):
        c = comp["ours"] / comp["throughput"]
        out.append(
            f"| >= 2 x PgQueuer ({comp['workers']} workers) | {c:.1f} x "
            f"({comp['ours']:,.0f} vs {comp['throughput']:,.0f}/s) "
            f"| {_ok(c >= TARGETS['competitor'])} |"
        )
    elif comp:
        out.append(f"| >= 2 x PgQueuer | not run: {comp.get('skipped')} | |")
    first, second = sizes.rss_tasks
    if res.rss_kb:
        a, b = res.rss_kb[first]["RssAnon"], res.rss_kb[second]["RssAnon"]
        growth = b / a - 1
        out.append(
            f"| worker private memory (RssAnon) after {second:,} tasks within 10% of after "
            f"{first:,} | {growth * 100:+.1f}% ({a:,} -> {b:,} kB) "
            f"| {_ok(abs(growth) <= TARGETS['rss'])} |"
        )
    out.append(
        f"| server log bytes per task = 0 | {res.log_bytes_per_task:.2f} "
        f"| {_ok(res.log_bytes_per_task == 0)} |"
    )
    out += [
        "",
        f"## Throughput ({sizes.tasks:,} trivial INSERT tasks, enqueue commit to last effect)",
        "",
        "| workers | tasks/s | pgbench ceiling (same clients) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for w in sorted(res.throughput):
        out.append(
            f"| {w} | {res.throughput[w]:,.0f} | {res.ceiling[w]:,.0f} | "
            f"{res.throughput[w] / res.ceiling[w]:.2f} |"
        )
    lat = res.latency_ms
    out += [
        "",
        f"## Pickup latency (idle queue, warm workers, {sizes.latency_samples} samples)",
        "",
        "From just before the enqueuing transaction's COMMIT is sent to the task's start",
        "(`started_at`); includes the commit's own WAL flush.",
        "",
        "| p50 | p95 | p99 | max | mean |",
        "|---:|---:|---:|---:|---:|",
        f"| {lat['p50']:.2f} ms | {lat['p95']:.2f} ms | {lat['p99']:.2f} ms | "
        f"{lat['max']:.2f} ms | {lat['mean']:.2f} ms |",
        "",
        "## Enqueue rate (one transaction, tasks/s)",
        "",
        "| how | tasks/s |",
        "|---|---:|",
        f"| `pg_background_enqueue` called {sizes.enqueue_single:,} times in one statement "
        f"| {single:,.0f} |",
        f"| `pg_background_enqueue` from a client, pipelined (psycopg `executemany`) "
        f"| {res.enqueue['client_calls_pipelined_one_transaction']:,.0f} |",
        f"| `pg_background_enqueue_many` with {sizes.enqueue_many:,} statements | {many:,.0f} |",
        "",
        f"## Backlog scaling ({sizes.tasks:,} tasks run while lower-priority tasks wait)",
        "",
        "| queued | tasks/s | ratio to smallest |",
        "|---:|---:|---:|",
    ]
    if res.backlog:
        base = res.backlog[min(res.backlog)]
        for q in sorted(res.backlog):
            out.append(f"| {q:,} | {res.backlog[q]:,.0f} | {res.backlog[q] / base:.2f} |")
    out += [
        "",
        f"Plan of the workers' claim statement (generic plan, as SPI runs it) with "
        f"{max(res.backlog or [0]):,} queued:",
        "",
        "```",
        res.claim_plan,
        "```",
        "",
        "## Memory and log volume",
        "",
        "| after tasks | VmRSS (kB) | private, RssAnon | shared buffers touched, RssShmem "
        "| RssFile |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {n:,} | {kb['VmRSS']:,} | {kb['RssAnon']:,} | {kb['RssShmem']:,} "
            f"| {kb['RssFile']:,} |"
            for n, kb in sorted(res.rss_kb.items())
        ),
        "",
        "VmRSS counts the pages of shared buffers a worker has touched (RssShmem), which grows",
        "with the data it writes up to `shared_buffers` and is not the worker's own memory;",
        "the target applies to its private memory (RssAnon).",
        "",
        f"Server log bytes per task at default settings: {res.log_bytes_per_task:.2f}.",
        "",
        "![throughput and latency](bench.png)",
        "",
    ]
    return "\n".join(out)


def plot(res: Results, path: Path) -> bool:
    """Throughput vs workers (with the ceiling) and backlog scaling; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ws = sorted(res.throughput)
    x = range(len(ws))
    left.bar([i - 0.2 for i in x], [res.ceiling[w] for w in ws], 0.4, label="pgbench ceiling")
    left.bar(
        [i + 0.2 for i in x], [res.throughput[w] for w in ws], 0.4, label="pg_background_queue"
    )
    comp = res.competitor
    if comp.get("throughput"):
        left.axhline(
            comp["throughput"], color="grey", ls="--", label=f"PgQueuer ({comp['workers']} w)"
        )
    left.set_xticks(list(x), [str(w) for w in ws])
    left.set_xlabel("workers / clients")
    left.set_ylabel("tasks (transactions) per second")
    left.set_title("Trivial-task throughput")
    left.legend()
    qs = sorted(res.backlog)
    right.plot([str(f"{q:,}") for q in qs], [res.backlog[q] for q in qs], marker="o")
    right.set_ylim(bottom=0)
    right.set_xlabel("tasks already queued")
    right.set_ylabel("tasks per second")
    right.set_title("Backlog scaling")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(res: Results, sizes: Sizes, out_dir: Path) -> None:
    """Write BENCHMARKS.md and bench.png into ``out_dir``."""
    (out_dir / "BENCHMARKS.md").write_text(markdown(res, sizes))
    plot(res, out_dir / "bench.png")
