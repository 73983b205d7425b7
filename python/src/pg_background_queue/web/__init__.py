"""``pgbq web``: a local dashboard of the queue (optional extra ``[web]``).

A Starlette application served by uvicorn.  The page is static (``static/``): its script
fetches JSON from ``/api/...`` every few seconds and builds the DOM with ``textContent`` only,
so nothing that comes from the database is ever parsed as HTML.  A Content-Security-Policy
allows no inline script.  The server connects as the role of ``--dsn``: row level security
decides what the page shows, and the server's refusals are shown as they are.

Actions (cancel, retry, pause/resume) are POSTs that must carry the per-process token of the
page (a custom header, so a cross-site form cannot send them); on a loopback address the
``Host`` header must name a loopback host (no DNS rebinding).
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import json
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "pgbq web needs the optional dependencies of the [web] extra: "
        "pip install 'pg-background-queue[web]'"
    ) from exc

from pg_background_queue.errors import (
    InvalidArgumentError,
    NotInstalledError,
    PermissionDeniedError,
    PgbqError,
    TaskNotFoundError,
)
from pg_background_queue.web._data import ActionRefused, Dashboard

__all__ = ["create_app", "serve"]

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "x-pgbq-token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return str(value)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_jsonable, ensure_ascii=False).encode()


def _error(exc: PgbqError) -> Response:
    if isinstance(exc, PermissionDeniedError):
        status = 403
    elif isinstance(exc, TaskNotFoundError) or exc.sqlstate == "P0002":
        status = 404
    elif isinstance(exc, InvalidArgumentError):
        status = 400
    elif isinstance(exc, ActionRefused):
        status = 409
    elif isinstance(exc, NotInstalledError):
        status = 503
    else:
        status = 500
    return _JSON({"error": exc.message, "sqlstate": exc.sqlstate}, status_code=status)


def _host_name(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:8080`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(dsn: str, *, refresh: float = 2.0, loopback_only: bool = True) -> Starlette:
    """The dashboard application for the database at ``dsn`` (a libpq connection string).

    ``refresh`` is the page's update interval in seconds.  With ``loopback_only`` requests
    whose ``Host`` is not a loopback name are refused (421).
    """
    dashboard = Dashboard(dsn)
    token = secrets.token_urlsafe(24)
    index = (STATIC / "index.html").read_text()
    index = index.replace("{{token}}", token).replace("{{refresh}}", str(int(refresh * 1000)))

    async def page(_request: Request) -> Response:
        return HTMLResponse(index)

    async def overview(request: Request) -> Response:
        state = request.query_params.get("state") or None
        topic = request.query_params.get("topic")
        try:
            return _JSON(await dashboard.overview(state, topic if topic else None))
        except PgbqError as exc:
            return _error(exc)

    async def task(request: Request) -> Response:
        try:
            return _JSON(await dashboard.task(int(request.path_params["task_id"])))
        except PgbqError as exc:
            return _error(exc)

    def action(
        run: Callable[[Request, Any], Awaitable[dict[str, Any]]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not secrets.compare_digest(request.headers.get(TOKEN_HEADER, ""), token):
                return _JSON({"error": "missing or wrong page token: reload the page"}, 403)
            try:
                body = await request.json() if await request.body() else {}
            except ValueError:
                return _JSON({"error": "the request body is not JSON"}, 400)
            if not isinstance(body, dict):
                return _JSON({"error": "the request body must be a JSON object"}, 400)
            try:
                return _JSON(await run(request, body))
            except PgbqError as exc:
                return _error(exc)

        return endpoint

    async def cancel(request: Request, _body: Any) -> dict[str, Any]:
        return await dashboard.cancel(int(request.path_params["task_id"]))

    async def retry(request: Request, _body: Any) -> dict[str, Any]:
        return await dashboard.retry(int(request.path_params["task_id"]))

    def pause_action(paused: bool) -> Callable[[Request, Any], Awaitable[dict[str, Any]]]:
        async def run(_request: Request, body: Any) -> dict[str, Any]:
            topic = body.get("topic")
            if topic is not None and not isinstance(topic, str):
                raise InvalidArgumentError("topic must be a string or null", sqlstate="22023")
            return await dashboard.set_paused(topic, paused)

        return run

    class Guard(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            host = _host_name(request.headers.get("host", ""))
            if loopback_only and not is_loopback(host):
                return PlainTextResponse(
                    f"this dashboard only answers to loopback host names, not {host!r}", 421
                )
            response = await call_next(request)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await dashboard.close()

    routes = [
        Route("/", page),
        Route("/task/{task_id:int}", page),
        Route("/api/overview", overview),
        Route("/api/tasks/{task_id:int}", task),
        Route("/api/tasks/{task_id:int}/cancel", action(cancel), methods=["POST"]),
        Route("/api/tasks/{task_id:int}/retry", action(retry), methods=["POST"]),
        Route("/api/topics/pause", action(pause_action(True)), methods=["POST"]),
        Route("/api/topics/resume", action(pause_action(False)), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard)], lifespan=lifespan)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(dsn: str, host: str = "127.0.0.1", port: int = 8080, *, refresh: float = 2.0) -> None:
    """Serve the dashboard until interrupted; port 0 picks a free port.

    Prints ``serving the dashboard on http://HOST:PORT/`` (the real port) on stdout once
    the socket listens.
    """
    loopback = is_loopback(host)
    if not loopback:
        print(
            f"pgbq web: warning: listening on {host}, not a loopback address: the dashboard "
            "has no authentication; anyone who can reach it sees and acts as the connected role",
            file=sys.stderr,
        )
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    app = create_app(dsn, refresh=refresh, loopback_only=loopback)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    print(f"serving the dashboard on http://{shown}:{bound}/ (Ctrl-C to stop)", flush=True)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the
    # previous handler: make SIGTERM, like Ctrl-C, end here so that callers clean up
    # (pgbq demo --web removes its throwaway cluster)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt
