"""``pgbq``: the command line of pg_background_queue.

Connection: ``--dsn`` or the standard PG* environment variables (PGHOST, PGPORT, PGDATABASE,
PGUSER, PGPASSWORD, ...).  Exit status: 0 success, 1 error, 2 usage, 3 timeout, 4 a task
failed or was cancelled, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

import psycopg
from tqdm import tqdm

from pg_background_queue import metrics
from pg_background_queue._poll import PollTimeout
from pg_background_queue._table import duration, render
from pg_background_queue.client import Client
from pg_background_queue.errors import PgbqError, WaitTimeout
from pg_background_queue.models import Task, TaskState

EXIT_ERROR, EXIT_TIMEOUT, EXIT_TASK_FAILED = 1, 3, 4

EXAMPLES = """examples:
  pgbq demo                                   demo on a throwaway cluster
  pgbq --dsn "dbname=app" demo                the demo against your server
  pgbq enqueue "VACUUM (ANALYZE) orders" --topic maintenance --wait
  echo "REFRESH MATERIALIZED VIEW daily" | pgbq enqueue - --at 2h
  pgbq tasks --state failed --topic etl       what failed, and why
  pgbq wait 41 42 43 --timeout 600            block until they are done
  pgbq enqueue "REFRESH MATERIALIZED VIEW daily" --dedupe-key daily
                                              unless a refresh is already queued
  pgbq enqueue "CALL load()" --after 41,42     once tasks 41 and 42 have finished
  pgbq pause maintenance; pgbq resume maintenance
  pgbq reschedule 41 --at 0s --priority 0     run it now, first
  pgbq metrics --listen :9187                 Prometheus endpoint
  pgbq web --listen 127.0.0.1:8080            live dashboard in the browser
  pgbq bench --output /tmp/bench              benchmark suite (BENCHMARKS.md, bench.png)

exit status: 0 ok, 1 error, 2 usage, 3 timeout, 4 a task failed or was cancelled
"""

_DELAY = re.compile(r"^\+?(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?$")
_UNITS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_at(text: str) -> datetime | timedelta:
    """``--at``: an ISO 8601 time (local time if no offset) or a delay like 30s, 5m, 2h, 1d."""
    match = _DELAY.match(text.strip())
    if match:
        return timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use ISO 8601 (2026-05-01T03:00+00:00) or a delay (90s, 5m)"
        ) from None
    return at if at.tzinfo else at.astimezone()


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, not {text!r}")
    return value


def _ids(text: str) -> list[int]:
    """``--after``: task ids separated by commas."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected task ids like 12,13, not {text!r}") from None


@contextmanager
def _progress(args: argparse.Namespace, total: int) -> Iterator[Callable[[int, int], None]]:
    disable = not sys.stderr.isatty() if args.progress is None else not args.progress
    with tqdm(total=total, desc="tasks done", unit="task", disable=disable) as bar:

        def update(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        yield update


def _result_text(task: Task, width: int | None) -> str | None:
    """A task's result as compact JSON (cut to ``width`` characters), flagged if truncated."""
    if task.result is None:
        return None
    text = json.dumps(task.result, separators=(",", ":"), default=str)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text + " (truncated)" if task.result_truncated else text


def _task_rows(tasks: Sequence[Task]) -> str:
    rows = [
        (
            t.id,
            t.topic or "(default)",
            t.owner,
            t.state.value,
            t.attempts,
            t.run_time,
            t.sql_statement.replace("\n", " ")[:40],
            (t.errors or "")[:60] or None,
            _result_text(t, 40),
        )
        for t in tasks
    ]
    headers = ("id", "topic", "owner", "state", "tries", "run", "sql", "error", "result")
    return render(headers, rows, empty="no tasks")


def _wait_and_report(client: Client, args: argparse.Namespace, ids: list[int]) -> int:
    with _progress(args, len(ids)) as update:
        tasks = client.wait(ids, timeout=args.timeout, on_progress=update)
    print(_task_rows(tasks))
    bad = [t for t in tasks if t.state is not TaskState.FINISHED]
    return EXIT_TASK_FAILED if bad else 0


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    """Summary per topic, and workers."""
    stats = client.stats()
    topics: dict[str | None, dict[str, object]] = {}
    for s in stats:
        row = topics.setdefault(s.topic, {})
        row[s.state.value] = s.tasks
        if s.state in (TaskState.PENDING, TaskState.RETRYING):
            old = row.get("oldest")
            if not isinstance(old, timedelta) or s.oldest_age > old:
                row["oldest"] = s.oldest_age
        if s.state is TaskState.FINISHED:
            row["p50"], row["p95"] = s.p50_run_seconds, s.p95_run_seconds
    states = [s.value for s in TaskState]
    rows = [
        (
            topic or "(default)",
            *(int(str(r.get(st, 0))) for st in states),
            r.get("oldest"),
            None if r.get("p50") is None else duration(float(str(r["p50"]))),
            None if r.get("p95") is None else duration(float(str(r["p95"]))),
        )
        for topic, r in topics.items()
    ]
    print(render(("topic", *states, "oldest pending", "p50 run", "p95 run"), rows, "no tasks"))
    workers = client.workers()
    busy = sum(1 for w in workers if w.task_id is not None)
    print(f"\nworkers: {len(workers)} live, {busy} running a task")
    return 0


def cmd_tasks(client: Client, args: argparse.Namespace) -> int:
    """List tasks."""
    print(_task_rows(client.tasks(state=args.state, topic=args.topic, limit=args.limit)))
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    """One task in full, its result as JSON."""
    task = client.get(args.id)
    print(_task_rows([task]))
    if task.errors:
        print(f"error: {task.errors}")
    if task.result is not None:
        print(json.dumps(task.result, indent=2, default=str))
        if task.result_truncated:
            print("(result truncated by pg_background_queue.max_result_size)")
    return 0


def cmd_enqueue(client: Client, args: argparse.Namespace) -> int:
    """Enqueue one task, optionally waiting for it."""
    text = sys.stdin.read() if args.sql == "-" else args.sql
    task_id = client.enqueue(
        text,
        topic=args.topic,
        priority=args.priority,
        run_at=args.at,
        dedupe_key=args.dedupe_key,
        after=args.after,
    )
    print(task_id)
    return _wait_and_report(client, args, [task_id]) if args.wait else 0


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    """Wait for tasks."""
    return _wait_and_report(client, args, args.ids)


def _each(verb: str, action: Callable[[int], bool], client: Client, ids: list[int]) -> int:
    status = 0
    for task_id in ids:
        if action(task_id):
            print(f"task {task_id}: {verb}")
        else:
            state = client.get(task_id).state
            print(f"pgbq: task {task_id} was not {verb}: it is {state}", file=sys.stderr)
            status = EXIT_ERROR
    return status


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    """Cancel tasks."""
    return _each("cancelled", client.cancel, client, args.ids)


def cmd_retry(client: Client, args: argparse.Namespace) -> int:
    """Retry tasks."""
    return _each("queued again", client.retry, client, args.ids)


def cmd_purge(client: Client, args: argparse.Namespace) -> int:
    """Purge old terminal tasks."""
    print(f"{client.purge(args.older_than)} task(s) purged")
    return 0


def cmd_workers(client: Client, args: argparse.Namespace) -> int:
    """List live workers."""
    rows = [
        (w.pid, w.database, w.role, w.state, w.task_id, w.topic, w.running_since, w.tasks_done)
        for w in client.workers()
    ]
    headers = ("pid", "database", "role", "state", "task", "topic", "running since", "done")
    print(render(headers, rows, empty="no live workers"))
    return 0


def cmd_topics(client: Client, args: argparse.Namespace) -> int:
    """Effective topic configuration."""
    rows = [
        (
            t.topic or "(default)",
            t.configured,
            t.max_parallel_running_tasks_count,
            t.priority,
            t.retry_count,
            t.delay_in_sec,
            t.timeout_in_sec,
            t.pending,
            t.running,
            t.paused,
        )
        for t in client.topics()
    ]
    headers = (
        "topic", "configured", "max parallel", "priority", "retries", "delay s", "timeout s",
        "pending", "running", "paused",
    )  # fmt: skip
    print(render(headers, rows))
    return 0


def cmd_reschedule(client: Client, args: argparse.Namespace) -> int:
    """Reschedule a queued task."""
    if args.priority is None and args.at is None:
        raise ValueError("pass --priority, --at, or both")
    if client.reschedule(args.id, priority=args.priority, run_at=args.at):
        print(f"task {args.id}: rescheduled")
        return 0
    state = client.get(args.id).state
    print(f"pgbq: task {args.id} was not rescheduled: it is {state}", file=sys.stderr)
    return EXIT_ERROR


def _topic_arg(args: argparse.Namespace) -> str | None:
    if args.default == (args.topic is not None):
        raise ValueError("name a TOPIC, or pass --default for the default topic (not both)")
    return None if args.default else str(args.topic)


def cmd_pause(client: Client, args: argparse.Namespace) -> int:
    """Pause a topic."""
    topic = _topic_arg(args)
    changed = client.pause(topic)
    print(f"topic {topic or '(default)'}: {'paused' if changed else 'was already paused'}")
    return 0


def cmd_resume(client: Client, args: argparse.Namespace) -> int:
    """Resume a topic."""
    topic = _topic_arg(args)
    changed = client.resume(topic)
    print(f"topic {topic or '(default)'}: {'resumed' if changed else 'was not paused'}")
    return 0


def cmd_metrics(client: Client, args: argparse.Namespace) -> int:
    """Prometheus metrics, printed or served."""

    def scrape() -> str:
        return metrics.render(client.stats(), client.totals(), client.workers())

    if args.listen is None:
        sys.stdout.write(scrape())
        return 0
    host, port = metrics.parse_address(args.listen)
    print(f"serving metrics on http://{host}:{port}/metrics (Ctrl-C to stop)", file=sys.stderr)
    metrics.serve(args.listen, scrape)
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "status": cmd_status,
    "tasks": cmd_tasks,
    "show": cmd_show,
    "enqueue": cmd_enqueue,
    "wait": cmd_wait,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "purge": cmd_purge,
    "workers": cmd_workers,
    "topics": cmd_topics,
    "reschedule": cmd_reschedule,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "metrics": cmd_metrics,
}


def _add_wait_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout", type=_positive, default=None, help="give up after SECONDS (exit status 3)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="pgbq",
        description="Enqueue, watch and administer pg_background_queue.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dsn", help="libpq connection string (default: the PG* environment variables)"
    )
    parser.add_argument("--schema", help="schema of the extension, if not on the search_path")
    parser.add_argument(
        "--pooled",
        action="store_true",
        default=os.environ.get("PGBQ_POOLED", "") not in ("", "0"),
        help="connected through a transaction-pooling PgBouncer: wait without LISTEN "
        "(default: on when PGBQ_POOLED is set)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("status", help="tasks per topic and state, run times, workers")

    p = sub.add_parser("tasks", help="list tasks, newest first")
    p.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in TaskState],
        help="only this state (repeatable)",
    )
    p.add_argument("--topic", help="only this topic")
    p.add_argument("--limit", type=int, default=50, help="at most N tasks (default 50)")

    p = sub.add_parser("show", help="one task in full, with its result")
    p.add_argument("id", type=int, help="task id")

    p = sub.add_parser(
        "enqueue",
        help="queue SQL (a statement or script; - reads stdin)",
        description="Queue one task; prints its id.",
    )
    p.add_argument("sql", metavar="SQL", help="SQL text, or - to read it from stdin")
    p.add_argument("--topic", help="topic (default: the default topic)")
    p.add_argument("--priority", type=int, help="lower runs first (default: the topic's)")
    p.add_argument(
        "--at", type=parse_at, help="run at an ISO 8601 time, or after a delay (90s, 5m, 2h, 1d)"
    )
    p.add_argument(
        "--dedupe-key",
        metavar="KEY",
        help="if a task of yours with this topic and key is queued, print its id instead",
    )
    p.add_argument(
        "--after",
        type=_ids,
        metavar="ID,ID",
        help="wait until these tasks are finished (cancelled if one fails)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the task and show its result")
    _add_wait_options(p)

    p = sub.add_parser("wait", help="wait until tasks are finished, failed or cancelled")
    p.add_argument("ids", metavar="ID", type=int, nargs="+")
    _add_wait_options(p)

    for name, text in (("cancel", "cancel tasks"), ("retry", "queue failed/cancelled tasks again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", metavar="ID", type=int, nargs="+")

    p = sub.add_parser("purge", help="delete your finished/failed/cancelled tasks (keeps stats)")
    p.add_argument(
        "--older-than",
        default="0",
        metavar="INTERVAL",
        help="only tasks closed before now() - INTERVAL, e.g. '7 days' (default: all)",
    )

    sub.add_parser("workers", help="live workers of the cluster")
    sub.add_parser("topics", help="effective configuration of each topic")

    p = sub.add_parser("reschedule", help="change the priority or start time of a queued task")
    p.add_argument("id", metavar="ID", type=int)
    p.add_argument("--priority", type=int, help="new priority (lower runs first)")
    p.add_argument("--at", type=parse_at, help="new start: ISO 8601 time, or a delay (90s, 5m)")

    for name, text in (
        ("pause", "start no more tasks of a topic, in every database (admin)"),
        ("resume", "start tasks of a paused topic again (admin)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("topic", metavar="TOPIC", nargs="?", help="the topic")
        p.add_argument("--default", action="store_true", help="the default (NULL) topic")

    p = sub.add_parser("metrics", help="Prometheus metrics (stdout, or HTTP with --listen)")
    p.add_argument("--listen", metavar="ADDR", help="serve /metrics on HOST:PORT")

    p = sub.add_parser(
        "web",
        help="a local web dashboard (needs the [web] extra)",
        description="Serve a live dashboard of the queue, connected as the role of --dsn "
        "(row level security decides what it shows). Binds to loopback by default.",
    )
    p.add_argument(
        "--dsn",
        default=argparse.SUPPRESS,
        help="libpq connection string (default: the PG* environment variables)",
    )
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8080; port 0 picks a free one)",
    )
    p.add_argument(
        "--refresh",
        type=_positive,
        default=2.0,
        metavar="S",
        help="page update interval in seconds (default 2; stretched when answers are slow)",
    )

    p = sub.add_parser(
        "demo",
        help="a short tour on a throwaway cluster (or --dsn)",
        description="Run a mixed workload and print what happened.",
    )
    p.add_argument("--timeout", type=_positive, default=120.0, help="seconds to wait for tasks")
    _add_server_option(p)
    p.add_argument(
        "--web",
        nargs="?",
        const="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="then serve pgbq web on the demo's server until Ctrl-C (default 127.0.0.1:8080; "
        "needs the [web] extra)",
    )

    p = sub.add_parser(
        "bench",
        help="benchmark suite on a throwaway cluster (writes BENCHMARKS.md, bench.png)",
        description="Measure the throughput regimes (durable, CPU-bound, held snapshot, "
        "sustained, reload, batched), pickup latency, enqueue rate, backlog scaling, memory and "
        "peer queues (PgQueuer, procrastinate, graphile-worker) on one throwaway cluster; "
        "every figure next to a same-run baseline.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--output", default=".", metavar="DIR", help="where to write the report")
    p.add_argument(
        "--regime",
        default="all",
        metavar="LIST",
        help="comma-separated regimes to run (default all): durable, cpu, held, sustained, "
        "reload, latency, batched, enqueue, backlog, memory, peers",
    )
    p.add_argument("--no-competitor", action="store_true", help="skip the peers (PgQueuer, ...)")
    _add_server_option(p)
    return parser


def _add_server_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pg-config",
        metavar="PATH",
        help="pg_config of the PostgreSQL installation to make the throwaway cluster with, "
        "e.g. another major version (default: $PG_CONFIG, else pg_config on PATH); the "
        "extension must be installed there",
    )


def _choose_server(pg_config: str | None) -> None:
    """Make the throwaway cluster with the installation ``pg_config`` names (via PG_CONFIG,
    which the harness reads), after checking the extension is installed there."""
    if not pg_config:
        return
    from pathlib import Path

    from pg_background_queue._pgconfig import extension_installed

    if not Path(pg_config).is_file():
        raise ValueError(f"--pg-config {pg_config}: no such file")
    if not extension_installed(pg_config):
        raise ValueError(
            f"pg_background_queue is not installed for {pg_config}: "
            f"make PG_CONFIG={pg_config} install (scripts/bootstrap.sh --pg N does it)"
        )
    os.environ["PG_CONFIG"] = pg_config


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pg_background_queue import bench

    if args.dsn:
        raise ValueError("bench makes its own throwaway cluster: --dsn is not used")
    sizes = bench.Sizes.quick() if args.quick else bench.Sizes()
    out = Path(args.output)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    regimes = bench.parse_regimes(args.regime)
    bench.run(sizes, out, progress=progress, competitor=not args.no_competitor, regimes=regimes)
    print((out / "BENCHMARKS.md").read_text())
    return 0


def _web(args: argparse.Namespace) -> int:
    from pg_background_queue import web

    if args.schema:
        raise ValueError("pgbq web finds the extension's schema itself: --schema is not used")
    host, port = metrics.parse_address(args.listen, allow_any_port=True)
    web.serve(args.dsn or "", host, port, refresh=max(args.refresh, 0.2))
    return 0


def _fail(kind: str, exc: BaseException) -> None:
    """One line on stderr, whatever the message's shape."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    print(f"pgbq: {kind}: {text or type(exc).__name__}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgbq`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("demo", "bench"):
            _choose_server(args.pg_config)
        if args.command == "demo":
            from pg_background_queue import demo

            web = None if args.web is None else metrics.parse_address(args.web, allow_any_port=True)
            return demo.run(args.dsn, timeout=args.timeout, progress=args.progress, web=web)
        if args.command == "bench":
            return _bench(args)
        if args.command == "web":
            return _web(args)
        with Client(args.dsn or "", schema=args.schema, pooled=args.pooled) as client:
            return COMMANDS[args.command](client, args)
    except WaitTimeout as exc:
        _fail("timeout", exc)
        return EXIT_TIMEOUT
    except (
        PgbqError,
        OSError,
        ValueError,
        RuntimeError,
        ImportError,
        PollTimeout,
        psycopg.Error,
    ) as exc:
        _fail("error", exc)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
