"""Typed rows of pg_background_queue: tasks, their errors, statistics, workers and topics."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


class TaskState(str, enum.Enum):
    """State of a task (the ``pg_background_queue_task_state`` enum)."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    FAILED = "failed"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    WAITING = "waiting"  # for prerequisites (``after``), 1.2

    @property
    def terminal(self) -> bool:
        """True for states a task only leaves by an explicit retry."""
        return self in TERMINAL_STATES

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset({TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED})


@dataclass(frozen=True, slots=True)
class AttemptError:
    """One failed attempt, from ``error_history``."""

    attempt: int
    sqlstate: str
    message: str
    detail: str | None
    at: str | None

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> AttemptError:
        """Build from one element of the ``error_history`` jsonb array."""
        return cls(
            attempt=int(item.get("attempt", 0)),
            sqlstate=str(item.get("sqlstate", "")),
            message=str(item.get("message", "")),
            detail=item.get("detail"),
            at=item.get("at"),
        )


@dataclass(frozen=True, slots=True)
class Task:
    """One row of ``pg_background_tasks``."""

    id: int
    sql_statement: str
    topic: str | None
    owner: str
    priority: int
    state: TaskState
    joined_at: datetime
    run_at: datetime | None
    next_run_at: datetime
    started_at: datetime | None
    closed_at: datetime | None
    attempts: int
    retry_count: int
    retry_delay_in_sec: int
    errors: str | None
    error_history: tuple[AttemptError, ...]
    worker_pid: int | None
    dedupe_key: str | None = None
    after: tuple[int, ...] = ()
    #: Rows of the last statement that returned rows, one dict per row (extension 1.3;
    #: None if no statement returned rows, the task did not finish, or before 1.3).
    result: list[dict[str, Any]] | None = None
    #: True if ``result`` was cut at a row boundary by ``pg_background_queue.max_result_size``.
    result_truncated: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Task:
        """Build from a dict row of ``pg_background_tasks`` (owner read as text)."""
        return cls(
            id=row["id"],
            sql_statement=row["sql_statement"],
            topic=row["topic"],
            owner=str(row["owner"]),
            priority=row["priority"],
            state=TaskState(row["state"]),
            joined_at=row["joined_at"],
            run_at=row["run_at"],
            next_run_at=row["next_run_at"],
            started_at=row["started_at"],
            closed_at=row["closed_at"],
            attempts=row["attempts"],
            retry_count=row["retry_count"],
            retry_delay_in_sec=row["retry_delay_in_sec"],
            errors=row["errors"],
            error_history=tuple(AttemptError.from_json(e) for e in row["error_history"] or ()),
            worker_pid=row["worker_pid"],
            dedupe_key=row.get("dedupe_key"),
            after=tuple(row.get("after") or ()),
            result=row.get("result"),
            result_truncated=bool(row.get("result_truncated")),
        )

    @property
    def done(self) -> bool:
        """True once the task is finished, failed or cancelled."""
        return self.state.terminal

    @property
    def run_time(self) -> timedelta | None:
        """Duration of the latest attempt, once it has ended."""
        if self.started_at is None or self.closed_at is None:
            return None
        return self.closed_at - self.started_at


@dataclass(frozen=True, slots=True)
class TopicStats:
    """Tasks of one topic in one state (view ``pg_background_queue_task_stats``)."""

    topic: str | None
    state: TaskState
    tasks: int
    attempts: int
    oldest_age: timedelta
    p50_run_seconds: float | None
    p95_run_seconds: float | None
    max_run_seconds: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TopicStats:
        """Build from a dict row of the view."""
        return cls(
            topic=row["topic"],
            state=TaskState(row["state"]),
            tasks=int(row["tasks"]),
            attempts=int(row["attempts"] or 0),
            oldest_age=row["oldest_age"],
            p50_run_seconds=row["p50_run_seconds"],
            p95_run_seconds=row["p95_run_seconds"],
            max_run_seconds=row["max_run_seconds"],
        )


@dataclass(frozen=True, slots=True)
class Worker:
    """A live worker (view ``pg_background_queue_workers``)."""

    pid: int
    database: str | None
    role: str | None
    state: str
    task_id: int | None
    topic: str | None
    running_since: datetime | None
    backend_start: datetime | None
    tasks_done: int


@dataclass(frozen=True, slots=True)
class Topic:
    """Effective configuration and queue counts of a topic (view ``pg_background_queue_topics``)."""

    topic: str | None
    configured: bool
    max_parallel_running_tasks_count: int
    retry_count: int
    delay_in_sec: float
    priority: int
    timeout_in_sec: int
    pending: int
    running: int
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative counters of a topic: live rows plus what retention folded into statistics."""

    topic: str | None
    state: TaskState
    tasks: int
    run_seconds: float
