"""``pgbq web`` in a real browser: a real cluster, the real server process (``pgbq web``), and
Debian's headless Chromium driven by Playwright (no browser is downloaded).

Set ``PGBQ_WEB_SCREENSHOTS=DIR`` to save screenshots of the pages (the README's come from
there).
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core_helpers import make_role, query, scalar
from pg_background_queue.testing.cluster import conninfo, poll_until

CHROMIUM = os.environ.get("PGBQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOPICS = {
    "critical": {"priority": 1, "max_parallel_running_tasks_count": 2},
    "reports": {"priority": 50, "retry_count": 5},
    "maintenance": {"max_parallel_running_tasks_count": 1, "timeout_in_sec": 600},
}
UI_TIMEOUT_MS = 30_000  # the machine is shared: generous, and every wait is a poll
STARTUP_TIMEOUT_S = 300  # pgbq demo --web runs the demo first

pytestmark = [
    pytest.mark.version_independent,
    pytest.mark.pgbq_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            "pg_background_queue.topic_config": json.dumps(TOPICS),
        }
    ),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (Debian: chromium)"
    ),
]

LATER = "now() + interval '1 hour'"  # pending, never picked up during a test


@pytest.fixture(scope="module")
def roles(node: Any) -> tuple[str, str]:
    for name in ("web_alice", "web_bob"):
        make_role(node, name)
    return "web_alice", "web_bob"


def enqueue_as(
    node: Any, role: str, sql: str, *, topic: str | None = None, run_at: str | None = LATER
) -> int:
    """Enqueue as ``role`` (pending for an hour unless ``run_at`` is None)."""
    at = run_at or "NULL"
    task_id: int = scalar(
        node,
        f"SELECT pg_background_enqueue(%s, %s, NULL, {at})",
        (sql, topic),
        user=role,
    )
    return task_id


def state_of(node: Any, task_id: int) -> str:
    return str(scalar(node, "SELECT state::text FROM pg_background_tasks WHERE id = %s", [task_id]))


class WebServer:
    """A ``pgbq`` process serving the dashboard (``pgbq web`` by default); ``url`` is read
    from its line ``serving the dashboard on URL``; ``output`` holds what it printed."""

    def __init__(self, dsn: str, *extra: str, argv: list[str] | None = None) -> None:
        script = Path(sys.executable).with_name("pgbq")
        cmd = (
            [str(script)] if script.exists() else [sys.executable, "-m", "pg_background_queue.cli"]
        )
        args = argv or ["web", "--dsn", dsn, "--listen", "127.0.0.1:0", *extra]
        self.proc = subprocess.Popen(
            [*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/"
        )
        self.output: list[str] = []
        self.errors: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        stdout, stderr = self.proc.stdout, self.proc.stderr
        threading.Thread(target=lambda: [lines.put(x) for x in stdout], daemon=True).start()
        threading.Thread(target=lambda: self.errors.extend(stderr), daemon=True).start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                self.stop()
                raise AssertionError(
                    f"no dashboard after {STARTUP_TIMEOUT_S} s; stdout: {self.output}; "
                    f"stderr: {self.errors}"
                ) from None
            self.output.append(line)
            if line.startswith("serving the dashboard on "):
                break
        assert line.startswith("serving the dashboard on http://127.0.0.1:"), line
        self.url = line.split()[4].rstrip("/")
        # the socket listens before uvicorn serves: wait until it answers
        poll_until(
            lambda: self.get("/")[0] == 200,
            timeout=60,
            message="pgbq web answering",
            ignore=(OSError,),
        )

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, headers=headers)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def stop(self) -> int:
        """SIGTERM (as Ctrl-C would), then the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode


@pytest.fixture
def web(node: Any) -> Iterator[Callable[..., WebServer]]:
    """Factory: ``web(dsn, *extra_args)`` starts a server; all are stopped afterwards."""
    started: list[WebServer] = []

    def start(dsn: str, *extra: str, argv: list[str] | None = None) -> WebServer:
        server = WebServer(dsn, *extra, argv=argv)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="pgbq-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A fresh tab that accepts every confirmation and records the page's own errors."""
    tab = browser_context.new_page()
    tab.dialogs = []
    tab.page_errors = []

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(dialog.message)
        dialog.accept()

    tab.on("dialog", on_dialog)
    tab.on("pageerror", lambda exc: tab.page_errors.append(str(exc)))
    yield tab
    errors = list(tab.page_errors)
    tab.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def screenshot(page: Any, name: str) -> None:
    out = os.environ.get("PGBQ_WEB_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / name))


def task_row(page: Any, table: str, task_id: int) -> Any:
    return page.locator(f'#{table} tr[data-task-id="{task_id}"]')


def test_page_shows_a_task_just_enqueued_and_updates_live(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    from playwright.sync_api import expect

    alice, _ = roles
    first = enqueue_as(node, alice, "SELECT 'first task'", topic="reports")
    server = web(conninfo(node, user=alice), "--refresh", "0.5")
    page.goto(server.url + "/")
    page.evaluate("window.__sameDocument = true")  # a reload would lose it
    row = task_row(page, "tasks", first)
    expect(row).to_be_visible()
    expect(row.locator(".state")).to_have_text("pending")
    expect(row).to_contain_text("SELECT 'first task'")
    expect(page.locator("#whoami")).to_contain_text(f"as {alice}")

    # enqueued after the page loaded: it appears without a reload
    second = enqueue_as(node, alice, "SELECT 'second task'", topic="critical")
    expect(task_row(page, "tasks", second)).to_be_visible()
    expect(page.locator('#topics tr[data-topic="critical"] td[data-count="pending"]')).to_have_text(
        "1"
    )
    # and a task that runs and finishes changes state on the page
    done = enqueue_as(node, alice, "SELECT 'runs now'", run_at=None)
    expect(task_row(page, "tasks", done).locator(".state")).to_have_text("finished")
    assert page.evaluate("window.__sameDocument") is True


def test_cancel_from_the_page(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    from playwright.sync_api import expect

    alice, _ = roles
    pending = enqueue_as(node, alice, "SELECT 'cancel me'")
    running = enqueue_as(node, alice, "SELECT pg_sleep(600)", topic="maintenance", run_at=None)
    poll_until(lambda: state_of(node, running) == "running", timeout=60, message="task running")
    server = web(conninfo(node, user=alice))
    page.goto(server.url + "/")

    task_row(page, "tasks", pending).locator('button[data-action="cancel"]').click()
    expect(page.locator("#flash")).to_contain_text(f"task {pending}: cancel requested")
    assert page.dialogs[-1] == f"Cancel task {pending}?"
    assert state_of(node, pending) == "cancelled"
    expect(task_row(page, "tasks", pending).locator(".state")).to_have_text("cancelled")

    # a running task, from the Running table: interrupted, then cancelled
    run_row = task_row(page, "running", running)
    expect(run_row).to_contain_text("pg_sleep(600)")
    run_row.locator('button[data-action="cancel"]').click()
    poll_until(lambda: state_of(node, running) == "cancelled", timeout=60, message="cancelled")
    expect(run_row).to_have_count(0)

    # the retry button queues it again
    task_row(page, "tasks", pending).locator('button[data-action="retry"]').click()
    expect(page.locator("#flash")).to_contain_text(f"task {pending}: queued again")
    assert state_of(node, pending) != "cancelled"  # queued again (and may run at once)


def test_refusals_are_reported(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    from playwright.sync_api import expect

    alice, _ = roles
    task_id = enqueue_as(node, alice, "SELECT 'cancelled behind the page'")
    server = web(conninfo(node, user=alice), "--refresh", "3600")  # the page will not update
    page.goto(server.url + "/")
    button = task_row(page, "tasks", task_id).locator('button[data-action="cancel"]')
    expect(button).to_be_visible()
    query(node, "SELECT pg_background_cancel(%s)", [task_id])
    button.click()
    expect(page.locator("#flash")).to_have_class("error")
    expect(page.locator("#flash")).to_contain_text(
        f"refused: task {task_id} was not cancelled: it is cancelled"
    )


def test_a_role_sees_only_its_own_tasks(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    from playwright.sync_api import expect

    alice, bob = roles
    mine = enqueue_as(node, alice, "SELECT 'alice task'", topic="reports")
    theirs = enqueue_as(node, bob, "SELECT 'bob secret'", topic="bob_only_topic")
    server = web(conninfo(node, user=alice))
    page.goto(server.url + "/")
    expect(task_row(page, "tasks", mine)).to_be_visible()
    expect(page.locator(f'[data-task-id="{theirs}"]')).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text("bob secret")
    expect(page.locator('#topics tr[data-topic="bob_only_topic"]')).to_have_count(0)

    # nor by its address, nor by a forged action
    page.goto(f"{server.url}/task/{theirs}")
    expect(page.locator("#live")).to_contain_text("does not exist or is not yours")
    expect(page.locator("body")).not_to_contain_text("bob secret")
    token = page.locator('meta[name="pgbq-token"]').get_attribute("content")
    status, _, body = server.request(
        "POST",
        f"/api/tasks/{theirs}/cancel",
        b"{}",
        {"Content-Type": "application/json", "X-Pgbq-Token": token},
    )
    assert status == 409, body
    assert "does not exist or is not yours" in json.loads(body)["error"]
    assert state_of(node, theirs) == "pending"

    # bob's own dashboard shows it
    bob_server = web(conninfo(node, user=bob))
    page.goto(bob_server.url + "/")
    expect(task_row(page, "tasks", theirs)).to_contain_text("bob secret")
    expect(page.locator(f'[data-task-id="{mine}"]')).to_have_count(0)
    query(
        node,
        "SELECT pg_background_cancel(id) FROM pg_background_tasks WHERE id IN (%s, %s)",
        [mine, theirs],
    )


HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><b>bold</b>'


def test_html_from_the_database_is_shown_as_text(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    from playwright.sync_api import expect

    alice, _ = roles
    literal = HOSTILE.replace("'", "''")
    pending = enqueue_as(node, alice, f"SELECT '{literal}'", topic="<i>topic</i>")
    failing = enqueue_as(
        node, alice, f"DO $$BEGIN RAISE EXCEPTION '%', '{literal}'; END$$", run_at=None
    )
    poll_until(lambda: state_of(node, failing) == "failed", timeout=60, message="task failed")
    server = web(conninfo(node, user=alice))
    page.goto(server.url + "/")

    sql_cell = task_row(page, "tasks", pending).locator("td.sql")
    expect(sql_cell).to_have_text(f"SELECT '{HOSTILE}'")
    expect(task_row(page, "tasks", pending)).to_contain_text("<i>topic</i>")
    expect(page.locator('#topics tr[data-topic="<i>topic</i>"]')).to_have_count(1)
    expect(task_row(page, "failures", failing)).to_contain_text(f"P0001 {HOSTILE}")
    for tag in ("img", "script:not([src])", "b", "i"):
        assert page.locator(f"main {tag}").count() == 0, tag
    assert page.evaluate("window.__pwned") is None

    page.goto(f"{server.url}/task/{failing}")
    expect(page.locator("#task-errors tbody")).to_contain_text(HOSTILE)
    expect(page.locator('#task-columns tr[data-column="sql_statement"] td')).to_contain_text(
        HOSTILE
    )
    assert page.locator("main img, main b, main script").count() == 0
    assert page.evaluate("window.__pwned") is None
    query(node, "SELECT pg_background_cancel(%s)", [pending])


def test_overview_of_a_mixed_workload_and_the_task_page(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    from playwright.sync_api import expect

    alice, _ = roles
    ids = [enqueue_as(node, alice, f"SELECT {n}", topic="critical", run_at=None) for n in range(8)]
    ids += [enqueue_as(node, alice, "SELECT 1/0", topic="reports", run_at=None)]
    missing = enqueue_as(node, alice, "SELECT * FROM no_such_table", run_at=None)
    sleeper = enqueue_as(node, alice, "SELECT pg_sleep(600)", topic="maintenance", run_at=None)
    poll_until(
        lambda: scalar(
            node,
            "SELECT count(*) = 8 FROM pg_background_tasks "
            "WHERE id = ANY(%s) AND state = 'finished'",
            [ids[:8]],
        ),
        timeout=60,
        message="8 tasks finished",
    )
    poll_until(lambda: state_of(node, ids[8]) == "retrying", timeout=60, message="retrying")
    poll_until(lambda: state_of(node, sleeper) == "running", timeout=60, message="running")
    poll_until(lambda: state_of(node, missing) == "failed", timeout=60, message="failed")
    server = web(conninfo(node, user=alice))
    page.goto(server.url + "/")

    expect(task_row(page, "running", sleeper)).to_contain_text("pg_sleep(600)")
    expect(task_row(page, "failures", ids[8])).to_contain_text("#1 22012 division by zero")
    expect(task_row(page, "failures", missing)).to_contain_text("#1 42P01 relation")
    expect(page.locator("#chart-all .legend")).to_contain_text(re.compile(r"\b[1-9][0-9]* failed"))
    expect(
        page.locator('#topics tr[data-topic="maintenance"] td[data-count="running"]')
    ).to_have_text("1")
    expect(page.locator('#topics tr[data-topic="reports"] td[data-count="retrying"]')).to_have_text(
        "1"
    )
    expect(page.locator("#chart-all .legend")).to_contain_text("finished")
    assert page.locator("#chart-all svg rect").count() > 0
    # pause/resume only where the extension has it (1.2)
    has_pause = bool(scalar(node, "SELECT to_regproc('pg_background_queue_pause') IS NOT NULL"))
    expect(page.locator('button[data-action="pause"]')).to_have_count(0)  # alice is no admin
    screenshot(page, "web-dashboard.png")

    page.goto(f"{server.url}/task/{ids[8]}")
    expect(page.locator("#task-title")).to_contain_text(f"Task #{ids[8]}")
    expect(page.locator('#task-columns tr[data-column="owner"] td')).to_have_text(alice)
    expect(page.locator("#task-errors tbody")).to_contain_text("division by zero")
    if _has_column(node, "result"):
        expect(page.locator("#task-result-box")).to_be_visible()
    else:
        expect(page.locator("#task-result-box")).to_be_hidden()
    screenshot(page, "web-task.png")

    # the superuser's dashboard has the admin actions, where the extension has them
    admin = web(conninfo(node))
    page.goto(admin.url + "/")
    expect(task_row(page, "running", sleeper)).to_be_visible()
    expect(task_row(page, "failures", ids[8])).to_be_visible()
    topics = page.locator("#topics tbody tr").count()
    assert topics >= len(TOPICS) + 1  # the configured ones and the default topic
    expect(page.locator('#topics button[data-action="pause"]')).to_have_count(
        topics if has_pause else 0
    )
    if has_pause:  # extension 1.2: a confirmed pause shows in the topics view, then resume
        row = page.locator('#topics tr[data-topic="maintenance"]')
        row.locator('button[data-action="pause"]').click()
        expect(page.locator("#flash")).to_contain_text("topic maintenance: paused")
        assert scalar(
            node, "SELECT paused FROM pg_background_queue_topics WHERE topic = 'maintenance'"
        )
        token = page.locator('meta[name="pgbq-token"]').get_attribute("content")
        status, _, body = admin.request(
            "POST",
            "/api/topics/pause",
            b'{"topic": "maintenance"}',
            {"Content-Type": "application/json", "X-Pgbq-Token": token},
        )
        assert status == 409
        assert json.loads(body)["error"] == "topic maintenance was already paused"
        row.locator('button[data-action="resume"]').click()
        expect(page.locator("#flash")).to_contain_text("topic maintenance: resumed")
        assert not scalar(
            node, "SELECT paused FROM pg_background_queue_topics WHERE topic = 'maintenance'"
        )
    query(node, "SELECT pg_background_cancel(%s)", [sleeper])


def test_waiting_task_and_its_dependencies(
    node: Any, roles: tuple[str, str], web: Callable[..., WebServer], page: Any
) -> None:
    """Where the extension has dependencies (1.2: ``after``, state ``waiting``), the page
    counts waiting tasks and the task page links prerequisites and dependents; before 1.2
    it shows neither."""
    from playwright.sync_api import expect

    alice, _ = roles
    first = enqueue_as(node, alice, "SELECT 'prerequisite'", topic="etl_deps")
    server = web(conninfo(node, user=alice))
    if not _has_column(node, "after"):
        page.goto(f"{server.url}/task/{first}")
        expect(page.locator("#task-title")).to_contain_text(f"Task #{first}")
        expect(page.locator("#task-deps-box")).to_be_hidden()
        expect(page.locator('#task-columns tr[data-column="after"]')).to_have_count(0)
        query(node, "SELECT pg_background_cancel(%s)", [first])
        return
    then: int = scalar(
        node,
        "SELECT pg_background_enqueue(%s, %s, after => ARRAY[%s]::bigint[])",
        ["SELECT 'dependent'", "etl_deps", first],
        user=alice,
    )
    assert state_of(node, then) == "waiting"
    page.goto(server.url + "/")
    expect(task_row(page, "tasks", then).locator(".state")).to_have_text("waiting")
    topic = page.locator('#topics tr[data-topic="etl_deps"]')
    expect(topic.locator('td[data-count="waiting"]')).to_have_text("1")
    expect(topic.locator('td[data-count="pending"]')).to_have_text("1")

    page.goto(f"{server.url}/task/{then}")
    expect(page.locator("#task-prereqs")).to_contain_text(f"#{first}")
    expect(page.locator("#task-prereqs")).to_contain_text("pending")
    expect(page.locator("#task-dependents")).to_have_text("none")
    page.goto(f"{server.url}/task/{first}")
    expect(page.locator("#task-dependents")).to_contain_text(f"#{then}")
    # cancelling the prerequisite from the page cancels the dependent with it
    page.locator('#task-actions button[data-action="cancel"]').click()
    expect(page.locator("#flash")).to_contain_text(f"task {first}: cancel requested")
    poll_until(lambda: state_of(node, then) == "cancelled", timeout=60, message="cascade")
    expect(page.locator("#task-dependents")).to_contain_text("cancelled")


def test_dashboard_recovers_after_a_server_restart(
    make_cluster: Any, web: Callable[..., WebServer]
) -> None:
    other = make_cluster()
    task_id = enqueue_as(other, "postgres", "SELECT 'survives the restart'")
    server = web(conninfo(other))
    status, _, body = server.get("/api/overview")
    assert status == 200
    assert task_id in [t["id"] for t in json.loads(body)["tasks"]]
    other.restart()
    # the lost connection is replaced within the same request: no error reaches the page
    status, _, body = server.get("/api/overview")
    assert status == 200, body
    assert task_id in [t["id"] for t in json.loads(body)["tasks"]]
    # while the server is down, a clear error; once it is back, the page recovers by itself
    other.stop()
    # (an answer computed just before may be served again for half a second)
    status, _, body = poll_until(
        lambda: (r := server.get("/api/overview"))[0] != 200 and r,
        timeout=30,
        interval=0.2,
        message="an error while the server is down",
    )
    assert status == 500
    assert json.loads(body)["error"]
    other.start()

    def answers() -> bool:
        return server.get("/api/overview")[0] == 200

    poll_until(answers, timeout=60, interval=0.2, message="the dashboard answering again")


def test_dashboard_of_a_fresh_demo_cluster(web: Callable[..., WebServer], page: Any) -> None:
    """``pgbq demo --web``: the demo's throwaway cluster, then its dashboard until SIGTERM."""
    from playwright.sync_api import expect

    demo = web("", argv=["demo", "--timeout", "300", "--web", "127.0.0.1:0"])
    assert any(line.startswith("Rows written as:") for line in demo.output), demo.output
    page.goto(demo.url + "/")
    expect(page.locator("#whoami")).to_contain_text("(superuser)")
    # 18 tasks of the tour, then the 1.2 workflow: load -> (clean, enrich) -> report ->
    # archive and a deduplicated refresh; enrich fails and cancels report and archive
    expect(page.locator("#tasks tbody tr[data-task-id]")).to_have_count(24)
    expect(page.locator('#tasks tr[data-state="finished"]')).to_have_count(19)
    expect(page.locator('#tasks tr[data-state="failed"]')).to_have_count(3)
    expect(page.locator('#tasks tr[data-state="cancelled"]')).to_have_count(2)
    expect(page.locator("#tasks")).to_contain_text("pgbq_demo_user")
    flaky = page.locator("#failures tbody tr[data-task-id]", has_text="no_such_table")
    expect(flaky).to_contain_text("#3 ")  # every attempt of a task that failed three times
    screenshot(page, "web-demo.png")
    assert demo.stop() == 0
    assert not any("Traceback" in line for line in demo.errors), demo.errors


def _has_column(node: Any, column: str) -> bool:
    return bool(
        scalar(
            node,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'pg_background_tasks'::regclass "
            "AND attname = %s AND NOT attisdropped",
            [column],
        )
    )


def test_http_guards(node: Any, roles: tuple[str, str], web: Callable[..., WebServer]) -> None:
    alice, _ = roles
    task_id = enqueue_as(node, alice, "SELECT 'guarded'")
    server = web(conninfo(node, user=alice))
    status, headers, body = server.get("/")
    assert status == 200
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    token = body.decode().split('name="pgbq-token" content="')[1].split('"')[0]

    # a cross-site form cannot send the token header
    status, _, _ = server.request(
        "POST", f"/api/tasks/{task_id}/cancel", b"{}", {"Content-Type": "application/json"}
    )
    assert status == 403
    # DNS rebinding: a foreign Host is refused on a loopback address
    status, _, _ = server.get("/api/overview", {"Host": "attacker.example:8080"})
    assert status == 421
    # bad bodies are refused with a clear message
    status, _, body = server.request("POST", "/api/topics/pause", b"[1]", {"X-Pgbq-Token": token})
    assert (status, json.loads(body)["error"]) == (400, "the request body must be a JSON object")
    assert state_of(node, task_id) == "pending"
    status, _, body = server.get("/api/overview")  # an answer the server may serve again
    assert {"id": task_id, "state": "pending"}.items() <= _listed(body, task_id).items()
    status, _, body = server.request(
        "POST", f"/api/tasks/{task_id}/cancel", b"", {"X-Pgbq-Token": token}
    )
    assert status == 200
    assert json.loads(body) == {"id": task_id, "state": "cancelled"}
    # after an action the next overview is computed afresh
    status, _, body = server.get("/api/overview")
    assert _listed(body, task_id)["state"] == "cancelled"
    status, _, body = server.get("/api/tasks/999999999")
    assert status == 404
    assert "does not exist or is not yours" in json.loads(body)["error"]


def _listed(overview: bytes, task_id: int) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = json.loads(overview)["tasks"]
    return next(t for t in tasks if t["id"] == task_id)


def test_server_errors_are_clear(node: Any, web: Callable[..., WebServer]) -> None:
    # a role without usage: the page says what the server said
    query(node, "DROP ROLE IF EXISTS web_nobody")
    query(node, "CREATE ROLE web_nobody LOGIN")
    server = web(conninfo(node, user="web_nobody"))
    status, _, body = server.get("/api/overview")
    assert status == 403, body
    assert json.loads(body)["sqlstate"] == "42501"

    # a database without the extension: 503 and what to do
    query(node, "DROP DATABASE IF EXISTS web_noext")
    query(node, "CREATE DATABASE web_noext")
    server = web(conninfo(node, dbname="web_noext"))
    status, _, body = server.get("/api/overview")
    assert status == 503, body
    assert "CREATE EXTENSION pg_background_queue" in json.loads(body)["error"]

    # --listen that cannot be parsed: usage error in one line, no traceback
    script = Path(sys.executable).with_name("pgbq")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pg_background_queue.cli"]
    result = subprocess.run(
        [*cmd, "web", "--dsn", conninfo(node), "--listen", "127.0.0.1:http"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith("pgbq: error: invalid listen address"), result.stderr
    assert "Traceback" not in result.stderr
