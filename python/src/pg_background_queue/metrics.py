"""Prometheus text exposition of the queue (``pgbq metrics``)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pg_background_queue.models import TaskState, TopicStats, Totals, Worker

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str | None) -> str:
    inner = ",".join(f'{k}="{_escape(v or "")}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, str, float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str | None) -> None:
        self.samples.append((suffix, _labels(**labels), value))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for suffix, labels, value in self.samples:
            yield f"{self.name}{suffix}{labels} {value:.17g}"


def render(stats: list[TopicStats], totals: list[Totals], workers: list[Worker]) -> str:
    """The metrics of one scrape; topic ``""`` is the default (NULL) topic."""
    tasks = _Family("pgbq_tasks", "gauge", "Tasks currently in the table, by topic and state.")
    depth = _Family("pgbq_queue_depth", "gauge", "Pending and retrying tasks, by topic.")
    running = _Family("pgbq_running_tasks", "gauge", "Running tasks, by topic.")
    oldest = _Family(
        "pgbq_oldest_pending_age_seconds", "gauge", "Age of the oldest pending task, by topic."
    )
    done = _Family(
        "pgbq_tasks_completed_total", "counter",
        "Tasks that finished, failed or were cancelled, including purged ones.",
    )  # fmt: skip
    run = _Family(
        "pgbq_task_run_seconds", "summary",
        "Run time of finished tasks (quantiles over the tasks still in the table).",
    )  # fmt: skip
    live = _Family("pgbq_workers", "gauge", "Live workers, by database, role and state.")

    per_topic: dict[str, dict[str, float]] = {}
    for s in stats:
        topic = s.topic or ""
        tasks.add(s.tasks, topic=topic, state=s.state.value)
        agg = per_topic.setdefault(topic, {"depth": 0, "running": 0, "oldest": 0.0})
        if s.state in (TaskState.PENDING, TaskState.RETRYING):
            agg["depth"] += s.tasks
            agg["oldest"] = max(agg["oldest"], s.oldest_age.total_seconds())
        elif s.state is TaskState.RUNNING:
            agg["running"] += s.tasks
        elif s.state is TaskState.FINISHED:
            for q, v in (("0.5", s.p50_run_seconds), ("0.95", s.p95_run_seconds)):
                if v is not None:
                    run.add(v, topic=topic, quantile=q)
    for topic, agg in sorted(per_topic.items()):
        depth.add(agg["depth"], topic=topic)
        running.add(agg["running"], topic=topic)
        oldest.add(agg["oldest"], topic=topic)
    for t in totals:
        topic = t.topic or ""
        done.add(t.tasks, topic=topic, state=t.state.value)
        if t.state is TaskState.FINISHED:
            run.add(t.run_seconds, "_sum", topic=topic)
            run.add(t.tasks, "_count", topic=topic)
    counts: dict[tuple[str, str, str], int] = {}
    for w in workers:
        key = (w.database or "", w.role or "", w.state)
        counts[key] = counts.get(key, 0) + 1
    for (database, role, state), n in sorted(counts.items()):
        live.add(n, database=database, role=role, state=state)
    lines = ["# pg_background_queue metrics"]
    for family in (tasks, depth, running, oldest, done, run, live):
        lines.extend(family.render())
    return "\n".join(lines) + "\n"


def parse_address(addr: str, *, allow_any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (host defaults to 127.0.0.1); port 0 (any free
    port) only with ``allow_any_port``."""
    host, _, port = addr.rpartition(":")
    lowest = 0 if allow_any_port else 1
    if not port.isdigit() or not lowest <= int(port) < 65536:
        raise ValueError(f"invalid listen address {addr!r} (expected HOST:PORT)")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(addr: str, scrape: Callable[[], str], ready: threading.Event | None = None) -> None:
    """Serve ``GET /metrics`` (and ``/``) until interrupted; each request runs ``scrape``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/metrics"):
                self.send_error(404, "try /metrics")
                return
            try:
                with lock:  # one scrape at a time on the shared connection
                    body = scrape().encode()
                status = 200
            except Exception as exc:
                body, status = f"scrape failed: {exc}\n".encode(), 503
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(parse_address(addr), Handler)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    finally:
        server.server_close()
