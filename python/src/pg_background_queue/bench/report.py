"""BENCHMARKS.md and bench.png from one run's results.

Every figure is printed next to the baseline it is compared with, both measured in the same
run, and the ratio; a section whose regime did not run (``--regime``) says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pg_background_queue.bench.runner import Results, Sizes

#: the targets (issue 15 for the regimes; the earlier ones for the rest)
TARGETS = {
    "durable": 0.8,
    "cpu": 0.6,
    "held": 0.8,
    "held_flat": 0.9,
    "sustained": 0.9,
    "reload": 0.9,
    "pickup_above_commit_ms": 0.5,
    "batched": 2.0,
    "p99_ms": 10.0,
    "backlog": 0.9,
    "enqueue_many": 100_000,
    "single": 10_000,
    "competitor": 2.0,
    "rss": 0.10,
}


def _ok(passed: bool) -> str:
    return "met" if passed else "**missed**"


def _mb(n: int) -> str:
    return f"{n / 1048576:,.1f} MB"


def _queue_size(sizes: dict[str, dict[str, int]]) -> tuple[int, int, int, int]:
    """Heap, index bytes, live and dead tuples summed over the extension's tables."""
    keys = ("heap", "indexes", "live", "dead")
    h, i, live, dead = (sum(t[k] for t in sizes.values()) for k in keys)
    return h, i, live, dead


def _size_cell(sizes: dict[str, dict[str, int]]) -> str:
    h, i, live, dead = _queue_size(sizes)
    free = sum(t.get("free", -1) for t in sizes.values())
    cell = f"{_mb(h)} heap + {_mb(i)} indexes; {live:,} live / {dead:,} dead tuples"
    if all(t.get("free", -1) >= 0 for t in sizes.values()):
        cell += f"; {_mb(free)} free in the heap"
    return cell


def summary(res: Results, sizes: Sizes) -> list[str]:
    """One row per target: measured ratio, its baseline from the same run, met or missed."""
    w = sizes.regime_workers
    rows = ["| target | measured (baseline from this run) | |", "|---|---|---|"]

    def row(target: str, measured: str, passed: bool | None) -> None:
        rows.append(f"| {target} | {measured} | {'' if passed is None else _ok(passed)} |")

    reg = res.regimes
    for key, target in (
        ("durable", f"durable: >= {TARGETS['durable']} x pgbench ceiling at {w} workers/clients"),
        ("cpu", f"CPU-bound (synchronous_commit = off both sides): >= {TARGETS['cpu']} x ceiling"),
    ):
        if key in reg:
            d = reg[key]
            spread = (
                f"; median of {len(d['rounds'])} interleaved rounds, {d['min']:.2f}-{d['max']:.2f}"
                if len(d["rounds"]) > 1
                else ""
            )
            row(
                target,
                f"{d['ratio']:.2f} x ({d['ours']:,.0f} tasks/s vs {d['ceiling']:,.0f} tps{spread})",
                d["ratio"] >= TARGETS[key],
            )
    if "held" in reg:
        h = reg["held"]
        row(
            f"snapshot held for the whole run: >= {TARGETS['held']} x the free run",
            f"{h['ratio']:.2f} x ({h['ours']:,.0f} vs {h['free']:,.0f} tasks/s)",
            h["ratio"] >= TARGETS["held"],
        )
        row(
            f"snapshot held: last quarter >= {TARGETS['held_flat']} x first quarter",
            f"{h['flatness']:.2f} x ({h['last_quarter']:,.0f} vs {h['first_quarter']:,.0f}/s)",
            h["flatness"] >= TARGETS["held_flat"],
        )
        during, after = _queue_size(h["sizes_during"]), _queue_size(h["sizes_after"])
        row(
            "snapshot held: queue tables bounded, reclaimed once released",
            f"{_mb(during[0] + during[1])} during ({during[3]:,} dead), "
            f"{_mb(after[0] + after[1])} after {h['vacuumed_by']} ({after[3]:,} dead)",
            None,
        )
    if "sustained" in reg:
        s = reg["sustained"]
        runs = " -> ".join(f"{v:,.0f}" for v in s["runs"])
        row(
            f"sustained: {len(s['runs'])} x {s['tasks']:,} tasks, autovacuum only: "
            f"last >= {TARGETS['sustained']} x first",
            f"{s['ratio']:.2f} x ({runs} tasks/s)",
            s["ratio"] >= TARGETS["sustained"],
        )
    for change, r in reg.get("reload", {}).items():
        row(
            f"reload {change} workers: >= {TARGETS['reload']} x a fresh start at {r['after']}",
            f"{r['ratio']:.2f} x ({r['ours']:,.0f} vs {r['fresh']:,.0f} tasks/s, "
            f"{r['seconds_after_reload']:.1f} s after the reload"
            + (
                f"; median of {len(r['rounds'])} interleaved rounds, {r['min']:.2f}-{r['max']:.2f})"
                if len(r.get("rounds", ())) > 1
                else ")"
            ),
            r["ratio"] >= TARGETS["reload"],
        )
    lat = res.latency_ms
    if lat:
        above = lat["p50_above_commit"]
        row(
            f"idle pickup p50 <= {TARGETS['pickup_above_commit_ms']} ms above the enqueuing "
            "COMMIT's own p50",
            f"{above:+.2f} ms ({lat['p50']:.2f} vs {lat['commit_p50']:.2f} ms)",
            above <= TARGETS["pickup_above_commit_ms"],
        )
        row(f"pickup p99 <= {TARGETS['p99_ms']:.0f} ms", f"{lat['p99']:.2f} ms",
            lat["p99"] <= TARGETS["p99_ms"])  # fmt: skip
    if "batched" in reg:
        b = reg["batched"]
        target = f'batched ("tasks_per_commit": {b["tasks_per_commit"]}): >= ' + (
            f"{TARGETS['batched']} x the durable ceiling"
        )
        if b["supported"]:
            row(
                target,
                f"{b['ratio']:.2f} x ({b['ours']:,.0f} vs {b['ceiling']:,.0f} tps)",
                b["ratio"] >= TARGETS["batched"],
            )
        else:
            row(target, f"not supported: the extension rejects the key ({b['reason']})", False)
    if res.backlog:
        small, large = min(res.backlog), max(res.backlog)
        r = res.backlog[large] / res.backlog[small]
        row(f"throughput with {large:,} queued >= {TARGETS['backlog']} x with {small:,}",
            f"{r:.2f} x", r >= TARGETS["backlog"])  # fmt: skip
    if res.enqueue:
        many = res.enqueue["enqueue_many"]
        single = res.enqueue["single_calls_one_transaction"]
        row("enqueue_many >= 100,000 tasks/s", f"{many:,.0f}/s", many >= TARGETS["enqueue_many"])
        row("single enqueue calls >= 10,000 tasks/s (one transaction)", f"{single:,.0f}/s",
            single >= TARGETS["single"])  # fmt: skip
    pq = res.peers.get("PgQueuer", {})
    if pq.get("throughput"):
        c = pq["ours"] / pq["throughput"]
        row(f">= {TARGETS['competitor']:.0f} x PgQueuer ({res.peers['workers']} in flight)",
            f"{c:.1f} x ({pq['ours']:,.0f} vs {pq['throughput']:,.0f}/s)",
            c >= TARGETS["competitor"])  # fmt: skip
    if res.rss_kb:
        first, second = sizes.rss_tasks
        a, b2 = res.rss_kb[first]["RssAnon"], res.rss_kb[second]["RssAnon"]
        growth = b2 / a - 1
        row(f"worker private memory (RssAnon) after {second:,} tasks within 10% of after "
            f"{first:,}", f"{growth * 100:+.1f}% ({a:,} -> {b2:,} kB)",
            abs(growth) <= TARGETS["rss"])  # fmt: skip
    if res.log_bytes_per_task is not None:
        row("server log bytes per task (our processes) = 0", f"{res.log_bytes_per_task:.2f}",
            res.log_bytes_per_task == 0)  # fmt: skip
    return rows


def _not_run(title: str, regime: str) -> list[str]:
    return [f"## {title}", "", f"Not run (regime `{regime}` not selected).", ""]


def _reload_rows(change: str, r: dict[str, Any]) -> list[str]:
    """One change of the reload regime: a row per round, then the median if several."""
    rounds = r.get("rounds", [r])
    rows = [
        f"| {change} | {i} | {x['tasks_after_reload']:,} | {x['ours']:,.0f} "
        f"| {x['fresh']:,.0f} | {x['ratio']:.2f} |"
        for i, x in enumerate(rounds, start=1)
    ]
    if len(rounds) > 1:
        rows.append(f"| {change} | median | | | | {r['ratio']:.2f} |")
    return rows


def sections(res: Results, sizes: Sizes) -> list[str]:
    """The detail of every regime, each beside its same-run baseline."""
    w = sizes.regime_workers
    ran = set(res.regimes_run)
    reg = res.regimes
    out: list[str] = []
    if "durable" in ran:
        out += [
            f"## Throughput ({sizes.tasks:,} trivial INSERT tasks, enqueue commit to last effect)",
            "",
            "| workers | tasks/s | pgbench ceiling (same clients) | ratio |",
            "|---:|---:|---:|---:|",
            *(
                f"| {n} | {res.throughput[n]:,.0f} | {res.ceiling[n]:,.0f} | "
                f"{res.throughput[n] / res.ceiling[n]:.2f} |"
                for n in sorted(res.throughput)
                if n in res.ceiling
            ),
            "",
        ]
    else:
        out += _not_run("Throughput", "durable")
    for key, title in (
        ("durable", f"Durable at {w} workers: interleaved rounds (pgbench, then ours)"),
        ("cpu", "CPU-bound (`synchronous_commit = off` for the workers and for pgbench)"),
    ):
        if key in reg:
            d = reg[key]
            out += [
                f"## {title}",
                "",
                "| round | tasks/s | pgbench ceiling | ratio |",
                "|---:|---:|---:|---:|",
                *(
                    f"| {i + 1} | {a:,.0f} | {b:,.0f} | {a / b:.2f} |"
                    for i, (a, b) in enumerate(d["rounds"])
                ),
                f"| median | {d['ours']:,.0f} | {d['ceiling']:,.0f} | {d['ratio']:.2f} |",
                "",
            ]
    if "held" in reg:
        h = reg["held"]
        out += [
            f"## Held snapshot ({h['tasks']:,} tasks, {h['workers']} workers)",
            "",
            "Another session holds one REPEATABLE READ snapshot (and so the xmin horizon) from",
            "before the enqueue until the last task has run; the free run is the same work",
            "without it, measured just before.",
            "",
            "| run | tasks/s | ratio to the free run |",
            "|---|---:|---:|",
            f"| free | {h['free']:,.0f} | 1.00 |",
            f"| snapshot held | {h['ours']:,.0f} | {h['ratio']:.2f} |",
            f"| held, first quarter of the run | {h['first_quarter']:,.0f} | "
            f"{h['first_quarter'] / h['free']:.2f} |",
            f"| held, last quarter of the run | {h['last_quarter']:,.0f} | "
            f"{h['last_quarter'] / h['free']:.2f} |",
            "",
            f"Queue tables (all of the extension's tables, summed; tuples counted by "
            f"{res.machine.get('tuple_counts', '?')}):",
            "",
            "| when | size |",
            "|---|---|",
            f"| before the run | {_size_cell(h['sizes_before'])} |",
            f"| end of the run, snapshot still held | {_size_cell(h['sizes_during'])} |",
            f"| snapshot released, after {h['vacuumed_by']} | {_size_cell(h['sizes_after'])} |",
            "",
        ]
    if "sustained" in reg:
        s = reg["sustained"]
        out += [
            f"## Sustained ({len(s['runs'])} back-to-back runs of {s['tasks']:,} tasks, "
            f"{s['workers']} workers, autovacuum only)",
            "",
            "| run | tasks/s | ratio to run 1 | queue tables after the run |",
            "|---:|---:|---:|---|",
            *(
                f"| {i + 1} | {v:,.0f} | {v / s['runs'][0]:.2f} | {_size_cell(sz)} |"
                for i, (v, sz) in enumerate(zip(s["runs"], s["sizes"], strict=True))
            ),
            "",
        ]
    if "reload" in reg:
        out += [
            "## Worker count changed by reload",
            "",
            "`max_parallel_running_tasks_count` changed by `ALTER SYSTEM` + `pg_reload_conf()`",
            "while the pool is busy; throughput of the tasks that finish after the reload,",
            "against a fresh start (cold pool) at the new count with the same number of tasks.",
            "Interleaved rounds, the order alternating (reload first in odd rounds, the fresh",
            "start first in even ones); the ratio is the median of the rounds'.",
            "",
            "| change | round | tasks after reload | tasks/s after | fresh start | ratio |",
            "|---|---:|---:|---:|---:|---:|",
            *(line for k, r in reg["reload"].items() for line in _reload_rows(k, r)),
            "",
        ]
    lat = res.latency_ms
    if lat:
        out += [
            f"## Pickup latency (idle queue, warm workers, {sizes.latency_samples} samples)",
            "",
            "Pickup: from just before the enqueuing transaction's COMMIT is sent to the task's",
            "start (`started_at`), so it includes the COMMIT's own WAL flush; the baseline is",
            "that COMMIT's round trip alone, measured in the same loop.",
            "",
            "| | p50 | p95 | p99 | max | mean |",
            "|---|---:|---:|---:|---:|---:|",
            f"| pickup | {lat['p50']:.2f} ms | {lat['p95']:.2f} ms | {lat['p99']:.2f} ms | "
            f"{lat['max']:.2f} ms | {lat['mean']:.2f} ms |",
            f"| enqueue COMMIT | {lat['commit_p50']:.2f} ms | | {lat['commit_p99']:.2f} ms | | |",
            f"| pickup - COMMIT | {lat['p50_above_commit']:+.2f} ms | | | | |",
            "",
        ]
    else:
        out += _not_run("Pickup latency", "latency")
    if "batched" in reg:
        b = reg["batched"]
        out += [
            f'## Batched commits (topic with `"tasks_per_commit": {b["tasks_per_commit"]}`)',
            "",
        ]
        if b["supported"]:
            out += [
                "| workers | tasks/s | durable pgbench ceiling | ratio "
                "| one commit per task (same run) | batched / one per task |",
                "|---:|---:|---:|---:|---:|---:|",
                f"| {b['workers']} | {b['ours']:,.0f} | {b['ceiling']:,.0f} | {b['ratio']:.2f} "
                f"| {b['unbatched']:,.0f} | {b['vs_unbatched']:.2f} |",
                "",
            ]
        else:
            out += [
                "Not supported by this build: setting the topic's `tasks_per_commit` is",
                f"rejected ({b['reason']}).",
                "",
            ]
    if res.enqueue:
        e = res.enqueue
        out += [
            "## Enqueue rate (one transaction, tasks/s)",
            "",
            "| how | tasks/s |",
            "|---|---:|",
            f"| `pg_background_enqueue` called {sizes.enqueue_single:,} times in one statement "
            f"| {e['single_calls_one_transaction']:,.0f} |",
            f"| `pg_background_enqueue` from a client, pipelined (psycopg `executemany`) "
            f"| {e['client_calls_pipelined_one_transaction']:,.0f} |",
            f"| `pg_background_enqueue_many` with {sizes.enqueue_many:,} statements "
            f"| {e['enqueue_many']:,.0f} |",
            "",
        ]
    if res.backlog:
        base = res.backlog[min(res.backlog)]
        out += [
            f"## Backlog scaling ({sizes.tasks:,} tasks run while lower-priority tasks wait, "
            f"{w} workers)",
            "",
            "| queued | tasks/s | ratio to smallest |",
            "|---:|---:|---:|",
            *(
                f"| {q:,} | {res.backlog[q]:,.0f} | {res.backlog[q] / base:.2f} |"
                for q in sorted(res.backlog)
            ),
            "",
            f"Plan of the workers' claim statement (generic plan, as SPI runs it) with "
            f"{max(res.backlog):,} queued:",
            "",
            "```",
            res.claim_plan,
            "```",
            "",
        ]
    if res.rss_kb:
        out += [
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
            "VmRSS counts the pages of shared buffers a worker has touched (RssShmem), which",
            "grows with the data it writes up to `shared_buffers` and is not the worker's own",
            "memory; the target applies to its private memory (RssAnon).",
            "",
            "Server log bytes per task at default settings, written by the launcher, the "
            "workers and maintenance (the server's own lines, a checkpoint say, do not count): "
            f"{res.log_bytes_per_task or 0:.2f}.",
            "",
        ]
    if res.peers:
        out += peers_section(res)
    return out


def peers_section(res: Results) -> list[str]:
    """Peers on the same cluster, same SQL per job, same jobs in flight, each against our
    own run of the same jobs just before it."""
    w = res.peers["workers"]
    out = [
        f"## Peers (same cluster, same INSERT per job, {w} jobs in flight)",
        "",
        f"Baseline: our own run of the same jobs at {w} workers, just before each peer's.",
        "Each peer runs the job's SQL on a connection of its own and records the job's",
        "completion in another transaction (graphile-worker's batched completion: one for",
        "many jobs), so a crash between the two runs the job again; our tasks commit their",
        "effect and their `finished` mark together.",
        "",
        "WAL bytes per job count everything written from the enqueue to the last job's",
        "effect (the peer's schema setup too, on its first run).",
        "",
        "| queue | version | configuration | jobs/s | ours just before | us / peer "
        "| WAL B/job, peer | WAL B/task, ours |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, p in res.peers.items():
        if not isinstance(p, dict):
            continue
        if "skipped" in p:
            out.append(f"| {name} | | skipped: {p['skipped']} | | | | | |")
        else:
            out.append(
                f"| {name} | {p['version']} | {p['config']} | {p['throughput']:,.0f} "
                f"| {p['ours']:,.0f} | {p['ours'] / p['throughput']:.2f} "
                f"| {p['wal_per_job']:,.0f} | {p['ours_wal_per_job']:,.0f} |"
            )
    return [*out, ""]


def markdown(res: Results, sizes: Sizes) -> str:
    """The report: the summary of targets, then each regime next to its baseline."""
    out = [
        "# Benchmarks",
        "",
        "Produced by `pgbq bench` (see README, *Benchmarks*) on one throwaway cluster with",
        "durable commits (`fsync = on`, `synchronous_commit = on`). Every figure is compared",
        "with a baseline measured in the same run; absolute numbers depend on the machine.",
        "",
        f"Machine: {res.machine.get('cpus')} CPUs, {res.machine.get('platform')}; "
        f"{str(res.machine.get('postgres', '')).split(' on ')[0]}. Run time {res.seconds:.0f} s. "
        f"Regimes: {', '.join(res.regimes_run)}. Load average (1 min) at the start and "
        f"the end: {res.machine.get('load_start', 0):.2f} and {res.machine.get('load_end', 0):.2f} "
        f"on {res.machine.get('cpus')} CPUs (other work on the machine makes every figure "
        "noisy; compare ratios across repeated runs).",
        "",
        "## Summary",
        "",
        *summary(res, sizes),
        "",
        *sections(res, sizes),
        "![throughput, regimes and peers](bench.png)",
        "",
    ]
    return "\n".join(out)


def _ratios(res: Results) -> list[tuple[str, float, float]]:
    """(label, ratio, target) of every regime that ran, for the plot."""
    out: list[tuple[str, float, float]] = []
    reg: dict[str, Any] = res.regimes
    if "durable" in reg:
        out.append(("durable\nvs ceiling", reg["durable"]["ratio"], TARGETS["durable"]))
    if "cpu" in reg:
        out.append(("CPU-bound\nvs ceiling", reg["cpu"]["ratio"], TARGETS["cpu"]))
    if "held" in reg:
        out.append(("held\nvs free", reg["held"]["ratio"], TARGETS["held"]))
        out.append(("held last/\nfirst qtr", reg["held"]["flatness"], TARGETS["held_flat"]))
    if "sustained" in reg:
        out.append(("sustained\nlast/first", reg["sustained"]["ratio"], TARGETS["sustained"]))
    for k, r in reg.get("reload", {}).items():
        out.append((f"reload {k}\nvs fresh", r["ratio"], TARGETS["reload"]))
    if "batched" in reg:
        supported = reg["batched"]["supported"]
        label = "batched\nvs ceiling" if supported else "batched\n(not supported)"
        out.append((label, reg["batched"]["ratio"] if supported else 0.0, TARGETS["batched"]))
    return out


def plot(res: Results, path: Path) -> bool:
    """Throughput vs workers (with the ceiling and the peers), every regime's ratio against
    its target, and backlog scaling; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(16, 4.5), gridspec_kw={"width_ratios": [1, 1.6, 0.8]}
    )
    ws = sorted(n for n in res.throughput if n in res.ceiling)
    if ws:
        x = range(len(ws))
        left.bar([i - 0.2 for i in x], [res.ceiling[n] for n in ws], 0.4, label="pgbench ceiling")
        left.bar(
            [i + 0.2 for i in x], [res.throughput[n] for n in ws], 0.4, label="pg_background_queue"
        )
        left.set_xticks(list(x), [str(n) for n in ws])
    for (name, p), style in zip(
        ((k, v) for k, v in res.peers.items() if isinstance(v, dict) and "throughput" in v),
        ("--", ":", "-.", (0, (5, 5))),
        strict=False,
    ):
        left.axhline(p["throughput"], color="grey", ls=style, label=name)
    left.set_xlabel("workers / clients (peers: jobs in flight)")
    left.set_ylabel("tasks (transactions) per second")
    left.set_title("Durable trivial-task throughput")
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize="x-small")
    ratios = _ratios(res)
    if ratios:
        xs = range(len(ratios))
        colors = ["tab:green" if r >= t else "tab:red" for _, r, t in ratios]
        middle.bar(list(xs), [r for _, r, _ in ratios], 0.6, color=colors)
        middle.scatter(list(xs), [t for _, _, t in ratios], marker="_", s=600, color="black",
                       label="target", zorder=3)  # fmt: skip
        middle.set_xticks(list(xs), [label for label, _, _ in ratios], fontsize="x-small")
        middle.legend(fontsize="x-small")
    middle.set_ylabel("ratio to the same-run baseline")
    middle.set_title("Regimes (green: target met)")
    qs = sorted(res.backlog)
    if qs:
        right.plot([f"{q:,}" for q in qs], [res.backlog[q] for q in qs], marker="o")
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
