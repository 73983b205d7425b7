"""Python client of the pg_background_queue PostgreSQL extension.

>>> from pg_background_queue import Client
>>> with Client("dbname=app") as queue:                      # doctest: +SKIP
...     ids = queue.enqueue_many(["VACUUM users", "ANALYZE orders"], topic="maintenance")
...     for task in queue.wait(ids, timeout=600):
...         print(task.id, task.state, task.run_time)
"""

from pg_background_queue.aio import AsyncClient
from pg_background_queue.client import Client
from pg_background_queue.errors import (
    DatabaseError,
    InvalidArgumentError,
    InvalidSQLError,
    NotInstalledError,
    PermissionDeniedError,
    PgbqError,
    TaskNotFoundError,
    WaitTimeout,
)
from pg_background_queue.models import (
    AttemptError,
    Task,
    TaskState,
    Topic,
    TopicStats,
    Totals,
    Worker,
)

__version__ = "1.5.0"

__all__ = [
    "AsyncClient",
    "AttemptError",
    "Client",
    "DatabaseError",
    "InvalidArgumentError",
    "InvalidSQLError",
    "NotInstalledError",
    "PermissionDeniedError",
    "PgbqError",
    "Task",
    "TaskNotFoundError",
    "TaskState",
    "Topic",
    "TopicStats",
    "Totals",
    "WaitTimeout",
    "Worker",
    "__version__",
]
