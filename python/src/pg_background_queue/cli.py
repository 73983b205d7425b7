"""``pgbq``: command line of pg_background_queue.

Connection: ``--dsn`` or the standard PG* environment variables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import psycopg

EXAMPLES = """examples:
  pgbq demo                       run the demo on a throwaway cluster
  pgbq --dsn "dbname=app" demo    run it against an existing server
  pgbq status                     tasks per topic and state, and live workers
  pgbq enqueue "VACUUM users" --topic maintenance
"""


def _status(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(topic, '(default)'), state::text, count(*) "
            "FROM pg_background_tasks GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        workers = conn.execute("SELECT count(*) FROM pg_background_queue_workers").fetchone()
    print(f"{'topic':<20} {'state':<10} {'tasks':>8}")
    for topic, state, n in rows:
        print(f"{topic:<20} {state:<10} {n:>8}")
    print(f"live workers: {workers[0] if workers else 0}")
    return 0


def _enqueue(dsn: str, text: str, topic: str | None, priority: int | None) -> int:
    if text == "-":
        text = sys.stdin.read()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_background_enqueue(%s, %s, %s)", (text, topic, priority)
        ).fetchone()
    print(row[0] if row else "")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="pgbq",
        description="Enqueue, watch and administer pg_background_queue.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dsn", default="", help="libpq connection string (default: PG* environment variables)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run a short demo (throwaway cluster unless --dsn)",
        description="Run a mixed workload and print what happened.",
    )
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for tasks")
    sub.add_parser("status", help="tasks per topic and state, and live workers")
    enq = sub.add_parser("enqueue", help="enqueue one task (SQL text, or - for stdin)")
    enq.add_argument("sql")
    enq.add_argument("--topic")
    enq.add_argument("--priority", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pgbq`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from pg_background_queue import demo

            return demo.run(args.dsn or None, timeout=args.timeout)
        if args.command == "status":
            return _status(args.dsn)
        if args.command == "enqueue":
            return _enqueue(args.dsn, args.sql, args.topic, args.priority)
    except psycopg.Error as exc:
        message = exc.diag.message_primary or str(exc).strip()
        print(f"pgbq: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
