"""Exceptions of the client, mapped from the server's SQLSTATEs.

Every error raised by :class:`~pg_background_queue.Client` and
:class:`~pg_background_queue.AsyncClient` derives from :class:`PgbqError`; the original
``psycopg.Error`` is chained as ``__cause__`` and kept in :attr:`PgbqError.pgerror`.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

PRELOAD_HINT = (
    "add pg_background_queue to shared_preload_libraries in postgresql.conf, restart the "
    "server, and run CREATE EXTENSION pg_background_queue in this database"
)


class PgbqError(Exception):
    """Base class of the client's errors."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.pgerror: psycopg.Error | None = None


class NotInstalledError(PgbqError):
    """The extension is not preloaded, not created in this database, or too old."""


class InvalidSQLError(PgbqError, ValueError):
    """The task's SQL text was refused at enqueue (syntax, empty text, forbidden statement).

    ``position`` is the 1-based character position in the task's SQL text, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        position: int | None = None,
        sql: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate)
        self.position = position
        self.sql = sql


class InvalidArgumentError(PgbqError, ValueError):
    """An argument (topic, priority, run_at, interval, ...) was refused."""


class PermissionDeniedError(PgbqError, PermissionError):
    """The role is not granted usage, or acts on tasks that are not its own."""


class TaskNotFoundError(PgbqError, LookupError):
    """No task with that id is visible to the connected role."""


class DatabaseError(PgbqError):
    """Any other server or connection error."""


class WaitTimeout(PgbqError, TimeoutError):
    """:meth:`Client.wait` gave up; ``unfinished`` lists the ids still not done."""

    def __init__(self, unfinished: Iterable[int], timeout: float) -> None:
        self.unfinished = sorted(unfinished)
        shown = ", ".join(str(i) for i in self.unfinished[:20])
        more = f" and {len(self.unfinished) - 20} more" if len(self.unfinished) > 20 else ""
        super().__init__(
            f"{len(self.unfinished)} task(s) not done after {timeout:g} s: {shown}{more}"
        )


def _is_not_installed(exc: psycopg.Error) -> bool:
    diag = exc.diag
    text = f"{diag.message_primary or ''} {diag.message_hint or ''}"
    if exc.sqlstate == "55000":
        return "shared_preload_libraries" in text or "CREATE EXTENSION" in text
    if exc.sqlstate in ("42883", "42P01", "3F000"):  # undefined function / table / schema
        return "pg_background" in text or exc.sqlstate == "3F000"
    return False


def _is_invalid_sql(sqlstate: str | None, message: str) -> bool:
    """Refusals of the task's SQL text: syntax, forbidden statements, empty text."""
    if sqlstate is None:
        return False
    if sqlstate in ("0A000", "25001") or message.startswith("SQL statement"):
        return True
    return sqlstate.startswith("42") and sqlstate not in ("42501", "42704")


def translate(exc: psycopg.Error) -> PgbqError:
    """Map a psycopg error to the client's hierarchy (the caller chains the original)."""
    diag = exc.diag
    sqlstate = exc.sqlstate
    message = diag.message_primary or str(exc).strip() or type(exc).__name__
    err: PgbqError
    if _is_not_installed(exc):
        err = NotInstalledError(
            f"pg_background_queue is not available: {message} ({PRELOAD_HINT})",
            sqlstate=sqlstate,
        )
    elif _is_invalid_sql(sqlstate, message):
        raw = diag.internal_position
        err = InvalidSQLError(
            message,
            sqlstate=sqlstate,
            position=int(raw) if raw else None,
            sql=diag.internal_query,
        )
    elif sqlstate == "42501":
        err = PermissionDeniedError(message, sqlstate=sqlstate)
    elif sqlstate is not None and (sqlstate.startswith("22") or sqlstate == "42704"):
        err = InvalidArgumentError(message, sqlstate=sqlstate)
    else:
        err = DatabaseError(message, sqlstate=sqlstate)
    if diag.message_hint and not isinstance(err, NotInstalledError):
        err.message = f"{message} (hint: {diag.message_hint})"
        err.args = (err.message,)
    err.pgerror = exc
    return err
