"""Soak test: a long mixed workload on a throwaway cluster, checked for exactly-once effects,
bounded table size under retention, and flat worker memory.

Every task k updates its own row of a counter table (``n = n + 1``). Kinds, each in its own
topic: ``ok``; ``flaky`` (fails its first attempt, succeeds on the retry); ``doomed`` (fails
both attempts); ``slow`` (exceeds its topic's 1 s timeout); ``cancel`` (cancelled while
pending); ``sleepy`` (cancelled while running). At the end:

* ``lost``: tasks in no terminal state, plus tasks marked finished whose effect is missing;
* ``duplicated``: effects applied more than once (n > 1);
* ``leaked_effects``: effects of failed or cancelled tasks, or effects without a finished mark;
* ``states_match``: every kind ended in its expected state (counting the rows retention has
  already folded into ``pg_background_queue_stats``); ``spurious_failures`` counts ok/flaky
  tasks that ended failed.

While it runs, the driver keeps the backlog bounded, samples the resident memory of every
task worker (``/proc/<pid>/status``: VmRSS, and RssAnon, the private part, for the trend)
and the size of ``pg_background_tasks`` (``pg_total_relation_size``). Retention is short (30 s
by default, a maintenance pass every 5 s) so the table must stay bounded. A server crash
restart does not stop the driver: it reconnects, and the run reports the restarts and the
crash lines of the server log.

    python -m pg_background_queue.soak --tasks 500000 --json /var/tmp/pgbq-soak.json

Must run as an unprivileged OS user (the cluster is made with testgres, like the tests).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

#: kind -> (topic, expected terminal state, n expected after the run)
KINDS: dict[str, tuple[str, str, int]] = {
    "ok": ("soak_ok", "finished", 1),
    "flaky": ("soak_flaky", "finished", 1),
    "doomed": ("soak_doomed", "failed", 0),
    "slow": ("soak_slow", "failed", 0),
    "cancel": ("soak_cancel", "cancelled", 0),
    "sleepy": ("soak_sleepy", "cancelled", 0),
}

#: default share of each kind (ok takes the rest)
DEFAULT_MIX: dict[str, float] = {
    "flaky": 0.03,
    "doomed": 0.02,
    "cancel": 0.02,
    "slow": 0.0002,
    "sleepy": 0.0002,
}

TOPIC_CONFIG: dict[str, dict[str, int]] = {
    "soak_ok": {"retry_count": 0},
    "soak_flaky": {"retry_count": 1},
    "soak_doomed": {"retry_count": 1},
    "soak_slow": {"retry_count": 0, "timeout_in_sec": 1},
    "soak_cancel": {"retry_count": 0},
    "soak_sleepy": {"retry_count": 0, "timeout_in_sec": 120},
}

_UPDATE = "UPDATE public.soak_counters SET n = n + 1 WHERE task = {k}"
SQL: dict[str, str] = {
    "ok": _UPDATE,
    # the worker's own running row tells the attempt: 1 / 0 on the first, 1 / 1 on the retry
    "flaky": _UPDATE + "; SELECT 1 / (attempts - 1) FROM pg_background_tasks "
    "WHERE worker_pid = pg_backend_pid() AND state = 'running'",
    "doomed": _UPDATE + "; SELECT 1 / 0",
    "slow": _UPDATE + "; SELECT pg_sleep(5)",
    "cancel": _UPDATE,
    "sleepy": _UPDATE + "; SELECT pg_sleep(60)",
}

T = TypeVar("T")

LOG_TAIL_ON_ERROR = 80
CRASH_RESTART_LOG = "all server processes terminated; reinitializing"


@dataclass
class _Sample:
    at: float
    done: int
    rows: int
    table_bytes: int
    rss_kb: dict[int, int] = field(default_factory=dict)
    anon_kb: dict[int, int] = field(default_factory=dict)


def plan_kinds(total: int, mix: Mapping[str, float], seed: int) -> list[str]:
    """The kind of each task, shuffled; every kind with a share gets at least one task."""
    counts = {k: max(1, int(total * share)) for k, share in mix.items() if share > 0}
    unknown = set(counts) - set(KINDS) | ({"ok"} & set(counts))
    if unknown:
        raise ValueError(f"unknown or non-mixable kinds: {sorted(unknown)}")
    rest = total - sum(counts.values())
    if rest < 0:
        raise ValueError(f"{total} tasks are too few for the mix {dict(mix)}")
    kinds = ["ok"] * rest + [k for k, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(kinds)
    return kinds


def read_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) of a process in kB, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    try:
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x (None with fewer than 3 points or no spread of x)."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


class _Driver:
    """The soak's own session. A server crash restart (the queue's fault handling at work, or
    a bug) is survived: the driver reconnects, counts it, and carries on."""

    def __init__(self, dsn: str, reconnect_timeout: float) -> None:
        self.dsn = dsn
        self.reconnect_timeout = reconnect_timeout
        self.reconnects = 0
        self.samples: list[_Sample] = []
        self.conn = psycopg.connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def _reconnect(self) -> None:
        self.reconnects += 1
        self.conn.close()
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                self.conn = psycopg.connect(self.dsn, autocommit=True)
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def do(self, fn: Callable[[psycopg.Connection[tuple[Any, ...]]], T]) -> T:
        """fn(conn), again on a new connection if the server restarted (fn is idempotent)."""
        while True:
            try:
                return fn(self.conn)
            except psycopg.OperationalError:
                self._reconnect()

    def one(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        def go(conn: psycopg.Connection[tuple[Any, ...]]) -> Any:
            cur = conn.execute(sql, params)
            row = cur.fetchone() if cur.description is not None else None
            return row[0] if row else None

        return self.do(go)

    def active(self) -> int:
        return int(
            self.one(
                "SELECT count(*) FROM pg_background_tasks "
                "WHERE state IN ('pending', 'running', 'retrying')"
            )
        )

    def cancel_sleepy(self) -> None:
        self.one(
            "SELECT count(pg_background_cancel(id)) FROM pg_background_tasks "
            "WHERE topic = 'soak_sleepy' AND state = 'running'"
        )

    def sample(self, t0: float) -> _Sample:
        def go(conn: psycopg.Connection[tuple[Any, ...]]) -> _Sample:
            done, rows, size = conn.execute(
                "SELECT (SELECT coalesce(sum(tasks), 0) FROM pg_background_queue_stats)"
                " + (SELECT count(*) FROM pg_background_tasks "
                "    WHERE state IN ('finished', 'failed', 'cancelled')),"
                " (SELECT count(*) FROM pg_background_tasks),"
                " pg_total_relation_size('pg_background_tasks')"
            ).fetchone() or (0, 0, 0)
            s = _Sample(time.monotonic() - t0, int(done), int(rows), int(size))
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_background_queue_workers WHERE state IN ('idle', 'running')"
            ):
                mem = read_memory(int(pid))
                if mem is not None:
                    s.rss_kb[int(pid)], s.anon_kb[int(pid)] = mem
            return s

        sample = self.do(go)
        self.samples.append(sample)
        return sample


def _memory_figures(samples: Sequence[_Sample], total: int, warmup: float) -> dict[str, Any]:
    """RSS first/last/max (kB, over workers) and the worst per-worker slope after warm-up."""
    with_workers = [s for s in samples if s.rss_kb]
    if not with_workers:
        return {"rss_samples": 0}
    first, last = with_workers[0], with_workers[-1]
    figures: dict[str, Any] = {
        "rss_samples": len(with_workers),
        "rss_workers_seen": len({p for s in with_workers for p in s.rss_kb}),
        "rss_kb_first": max(first.rss_kb.values()),
        "rss_kb_last": max(last.rss_kb.values()),
        "rss_kb_max": max(max(s.rss_kb.values()) for s in with_workers),
        "rss_anon_kb_first": max(first.anon_kb.values()),
        "rss_anon_kb_last": max(last.anon_kb.values()),
        "rss_anon_kb_max": max(max(s.anon_kb.values()) for s in with_workers),
    }
    steady = [s for s in with_workers if s.done >= warmup * total]
    worst: dict[str, float | None] = {"rss": None, "anon": None}
    for key, attr in (("rss", "rss_kb"), ("anon", "anon_kb")):
        for pid in {p for s in steady for p in getattr(s, attr)}:
            points = [(s.done, getattr(s, attr)[pid]) for s in steady if pid in getattr(s, attr)]
            if len(points) < max(3, len(steady) // 2):
                continue  # a short-lived worker says nothing about a trend
            per_task = slope(points)
            if per_task is not None:
                value = per_task * 100_000
                current = worst[key]
                if current is None or value > current:
                    worst[key] = value
    figures["rss_slope_kb_per_100k_tasks"] = (
        None if worst["rss"] is None else round(worst["rss"], 1)
    )
    figures["rss_anon_slope_kb_per_100k_tasks"] = (
        None if worst["anon"] is None else round(worst["anon"], 1)
    )
    return figures


def run(
    total_tasks: int,
    *,
    workers: int = 4,
    batch: int = 1000,
    max_backlog: int = 20_000,
    retention_in_sec: int = 30,
    maintenance_interval: int = 5,
    sample_interval: float = 2.0,
    rate: float | None = None,
    mix: Mapping[str, float] | None = None,
    seed: int = 1,
    warmup: float = 0.1,
    drain_timeout: float = 600.0,
    wait_for_retention: bool = True,
    rss_slope_limit_kb: float = 64.0,
    progress: Callable[[str], None] | None = None,
    keep_on_error: bool = False,
) -> dict[str, Any]:
    """Run the soak on a throwaway cluster and return its figures (see the module doc).

    ``rate`` caps the enqueue rate (tasks/s); ``warmup`` is the share of tasks whose memory
    samples are left out of the slope. ``rss_slope_limit_kb`` is the per-worker growth of
    private memory per 100,000 tasks above which ``rss_trend_ok`` is false. With
    ``keep_on_error`` a failed run leaves its cluster in place for inspection.
    """
    from pg_background_queue.testing.cluster import conninfo, destroy_node, make_node, server_log

    kinds = plan_kinds(total_tasks, DEFAULT_MIX if mix is None else mix, seed)
    node = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": workers,
            "pg_background_queue.worker_idle_timeout": "1h",
            "pg_background_queue.retention_in_sec": retention_in_sec,
            "pg_background_queue.maintenance_interval": maintenance_interval,
            "pg_background_queue.topic_config": json.dumps(TOPIC_CONFIG),
        }
    )
    try:
        driver = _Driver(conninfo(node), reconnect_timeout=120)
        try:
            figures = _soak(
                driver,
                kinds,
                batch=batch,
                max_backlog=max_backlog,
                rate=rate,
                sample_interval=sample_interval,
                drain_timeout=drain_timeout,
                say=progress or (lambda _msg: None),
            )
            if wait_for_retention:
                figures.update(_settle(driver, retention_in_sec + 3 * maintenance_interval + 30))
        finally:
            driver.close()
        log = server_log(node)
        figures.update(
            {
                "workers": workers,
                "retention_in_sec": retention_in_sec,
                "maintenance_interval": maintenance_interval,
                "server_crash_restarts": log.count(
                    "all server processes terminated; reinitializing"
                ),
                "server_log_crashes": [
                    line.split(" LOG:  ", 1)[-1]
                    for line in log.splitlines()
                    if "was terminated by signal" in line
                ][:10],
                "driver_reconnects": driver.reconnects,
            }
        )
        window = retention_in_sec + 2 * maintenance_interval
        figures["table_rows_bound"] = int(
            max_backlog + batch + figures["peak_tasks_per_s"] * window
        )
        figures["table_bounded"] = figures["table_rows_max"] <= figures["table_rows_bound"]
        figures.update(_memory_figures(driver.samples, total_tasks, warmup))
        anon_slope = figures.get("rss_anon_slope_kb_per_100k_tasks")
        figures["rss_trend_ok"] = None if anon_slope is None else anon_slope <= rss_slope_limit_kb
        return figures
    except BaseException:
        tail = server_log(node).splitlines()[-LOG_TAIL_ON_ERROR:]
        print("\n".join(["----- server log (tail) -----", *tail]), file=sys.stderr)
        if keep_on_error:
            print(f"cluster kept for inspection: {node.base_dir}", file=sys.stderr)
            node = None
        raise
    finally:
        if node is not None:
            destroy_node(node)


def _enqueue_batch(
    conn: psycopg.Connection[tuple[Any, ...]], keys: Sequence[int], kinds: Sequence[str]
) -> list[int]:
    """One transaction: the batch's counter rows and its tasks (skipped if it committed
    before a crash). Returns the ids of the tasks to cancel while pending."""
    to_cancel: list[int] = []
    with conn.transaction():
        if conn.execute("SELECT 1 FROM soak_counters WHERE task = %s", (keys[0],)).fetchone():
            return to_cancel
        conn.execute(
            "INSERT INTO soak_counters (task, kind, n) "
            "SELECT t, k, 0 FROM unnest(%s::int[], %s::text[]) AS u(t, k)",
            (list(keys), list(kinds)),
        )
        groups: dict[str, list[int]] = {}
        for k, kind in zip(keys, kinds, strict=True):
            groups.setdefault(kind, []).append(k)
        for kind, ks in groups.items():
            run_at = "now() + interval '1 hour'" if kind == "cancel" else "NULL"
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT * FROM pg_background_enqueue_many(%s::text[], %s, NULL, {run_at})",
                    ([SQL[kind].format(k=k) for k in ks], KINDS[kind][0]),
                )
            ]
            if kind == "cancel":
                to_cancel.extend(ids)
    return to_cancel


def _soak(
    d: _Driver,
    kinds: Sequence[str],
    *,
    batch: int,
    max_backlog: int,
    rate: float | None,
    sample_interval: float,
    drain_timeout: float,
    say: Callable[[str], None],
) -> dict[str, Any]:
    total = len(kinds)
    d.one(
        "CREATE TABLE IF NOT EXISTS soak_counters "
        "(task int PRIMARY KEY, kind text NOT NULL, n int NOT NULL)"
    )
    t0 = time.monotonic()
    next_sample = 0.0

    def tick() -> None:
        nonlocal next_sample
        d.cancel_sleepy()
        if time.monotonic() - t0 >= next_sample:
            s = d.sample(t0)
            next_sample = s.at + sample_interval
            rss = max(s.rss_kb.values()) if s.rss_kb else 0
            anon = max(s.anon_kb.values()) if s.anon_kb else 0
            say(
                f"{s.at:7.1f}s done {s.done:>8}/{total} rows {s.rows:>7} "
                f"table {s.table_bytes / 1e6:6.1f} MB worker rss max {rss} kB (anon {anon} kB)"
            )

    for start in range(0, total, batch):
        keys = list(range(start + 1, min(start + batch, total) + 1))
        part = [kinds[k - 1] for k in keys]
        ids = d.do(functools.partial(_enqueue_batch, keys=keys, kinds=part))
        if ids:
            d.one("SELECT count(pg_background_cancel(id)) FROM unnest(%s::bigint[]) id", (ids,))
        tick()
        if rate:
            while time.monotonic() - t0 < (start + len(keys)) / rate:
                time.sleep(min(0.05, sample_interval))
                tick()
        while d.active() > max_backlog:
            time.sleep(0.02)
            tick()
    enqueued_s = time.monotonic() - t0

    deadline = time.monotonic() + drain_timeout
    sweep = 0.0
    while d.active() > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the queue did not drain within {drain_timeout:g} s")
        if time.monotonic() - sweep > 1:  # cancels lost to a crash between enqueue and cancel
            d.one(
                "SELECT count(pg_background_cancel(id)) FROM pg_background_tasks "
                "WHERE topic = 'soak_cancel' AND state = 'pending'"
            )
            sweep = time.monotonic()
        time.sleep(0.05)
        tick()
    elapsed = time.monotonic() - t0
    d.sample(t0)
    return {
        "tasks": total,
        "kinds": {k: kinds.count(k) for k in KINDS},
        "seconds": round(elapsed, 1),
        "enqueue_seconds": round(enqueued_s, 1),
        "tasks_per_s": round(total / elapsed, 1),
        **_check(d, kinds),
        **_table_figures(d.samples, total / elapsed),
    }


def _check(d: _Driver, kinds: Sequence[str]) -> dict[str, Any]:
    """Every task accounted for, in the state its kind must end in, with its effect once."""
    total = len(kinds)
    seen: dict[tuple[str, str], int] = {}

    def account(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        seen.clear()  # the table and what retention folded into the statistics: one snapshot
        for topic, state, n in conn.execute(
            "SELECT topic, state, sum(n)::bigint FROM ("
            " SELECT topic, state::text, tasks AS n FROM pg_background_queue_stats"
            " UNION ALL"
            " SELECT coalesce(topic, ''), state::text, 1 FROM pg_background_tasks"
            ") a GROUP BY 1, 2"
        ):
            seen[(str(topic), str(state))] = int(n)

    d.do(account)
    expected: dict[tuple[str, str], int] = {}
    for kind in kinds:
        topic, state, _ = KINDS[kind]
        expected[(topic, state)] = expected.get((topic, state), 0) + 1
    accounted = sum(seen.values())
    succeeding = [KINDS[k][0] for k in ("ok", "flaky")]
    finished_ok = sum(seen.get((t, "finished"), 0) for t in succeeding)
    duplicated, effects_ok, leaked = d.do(
        lambda conn: (
            conn.execute(
                "SELECT count(*) FILTER (WHERE n > 1), "
                "       count(*) FILTER (WHERE n = 1 AND kind IN ('ok', 'flaky')), "
                "       count(*) FILTER (WHERE n <> 0 AND kind NOT IN ('ok', 'flaky')) "
                "FROM soak_counters"
            ).fetchone()
            or (0, 0, 0)
        )
    )
    return {
        "accounted": accounted,
        # never terminal, or marked finished without its effect
        "lost": (total - accounted) + max(0, finished_ok - int(effects_ok)),
        "duplicated": int(duplicated),
        # effects of failed or cancelled tasks, or effects without a finished mark
        "leaked_effects": int(leaked) + max(0, int(effects_ok) - finished_ok),
        "states_match": all(seen.get(key, 0) == n for key, n in expected.items()),
        "unexpected_states": {
            f"{t}/{s}": n for (t, s), n in sorted(seen.items()) if (t, s) not in expected and n
        },
        "spurious_failures": sum(seen.get((t, "failed"), 0) for t in succeeding),
        "pruned_by_retention": int(
            d.one("SELECT coalesce(sum(tasks), 0) FROM pg_background_queue_stats")
        ),
        "all_terminal": d.active() == 0,
    }


def _table_figures(samples: Sequence[_Sample], mean_rate: float) -> dict[str, Any]:
    half = len(samples) // 2
    peak = max(
        (
            (b.done - a.done) / (b.at - a.at)
            for a, b in itertools.pairwise(samples)
            if b.at - a.at > 0.5
        ),
        default=mean_rate,
    )
    return {
        "peak_tasks_per_s": round(peak, 1),
        "samples": len(samples),
        "table_rows_max": max(s.rows for s in samples),
        "table_bytes_first": samples[0].table_bytes,
        "table_bytes_max": max(s.table_bytes for s in samples),
        "table_bytes_max_first_half": max((s.table_bytes for s in samples[:half]), default=0),
        "table_bytes_max_second_half": max((s.table_bytes for s in samples[half:]), default=0),
        "table_bytes_last": samples[-1].table_bytes,
        # about ten points of the run: [tasks done, table MB, max worker RssAnon kB]
        "series": [
            [s.done, round(s.table_bytes / 1e6, 1), max(s.anon_kb.values(), default=0)]
            for s in samples[:: max(1, len(samples) // 10)]
        ],
    }


def _settle(d: _Driver, timeout: float) -> dict[str, Any]:
    """Wait until retention has pruned every terminal task (or timeout)."""
    t0 = time.monotonic()
    while d.one("SELECT count(*) FROM pg_background_tasks") > 0:
        if time.monotonic() - t0 > timeout:
            break
        time.sleep(0.2)
    return {
        "rows_after_retention": int(d.one("SELECT count(*) FROM pg_background_tasks")),
        "retention_emptied_seconds": round(time.monotonic() - t0, 1),
        "table_bytes_after_retention": int(
            d.one("SELECT pg_total_relation_size('pg_background_tasks')")
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pg_background_queue.soak",
        description="Soak pg_background_queue with a mixed workload on a throwaway cluster: "
        "successes, failures that retry, timeouts and cancels; reports tasks/s, lost and "
        "duplicated effects, queue table size and worker memory over time.",
        epilog="Run it as an unprivileged OS user (PostgreSQL refuses to run as root). "
        "Exit status 0 when nothing was lost, duplicated or left unfinished, the table stayed "
        "bounded, worker memory showed no growth trend and the server never restarted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=500_000, help="tasks to run in all")
    parser.add_argument("--workers", type=int, default=4, help="task workers (the cap)")
    parser.add_argument("--batch", type=int, default=1000, help="tasks per enqueue_many call")
    parser.add_argument("--backlog", type=int, default=20_000, help="max queued tasks")
    parser.add_argument("--retention", type=int, default=30, help="retention_in_sec")
    parser.add_argument(
        "--maintenance-interval", type=int, default=5, help="seconds between maintenance passes"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=2.0, help="seconds between memory/size samples"
    )
    parser.add_argument("--rate", type=float, default=None, help="max enqueue rate (tasks/s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload mix")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--keep-on-error", action="store_true", help="leave the cluster behind if the run fails"
    )
    args = parser.parse_args(argv)

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    figures = run(
        args.tasks,
        workers=args.workers,
        batch=args.batch,
        max_backlog=args.backlog,
        retention_in_sec=args.retention,
        maintenance_interval=args.maintenance_interval,
        sample_interval=args.sample_interval,
        rate=args.rate,
        seed=args.seed,
        progress=None if args.quiet else progress,
        keep_on_error=args.keep_on_error,
    )
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            out.write(text + "\n")
    ok = (
        figures["lost"] == 0
        and figures["duplicated"] == 0
        and figures["leaked_effects"] == 0
        and figures["all_terminal"]
        and figures["states_match"]
        and figures["table_bounded"]
        and figures["rss_trend_ok"] is not False
        and figures["server_crash_restarts"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
