"""The synchronous Python client on a real cluster: every method, its errors, and wait()'s
wake-up by NOTIFY with the poll fallback."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from core_helpers import make_role, query
from pg_background_queue import (
    Client,
    DatabaseError,
    InvalidArgumentError,
    InvalidSQLError,
    NotInstalledError,
    PermissionDeniedError,
    Task,
    TaskNotFoundError,
    TaskState,
    WaitTimeout,
)
from pg_background_queue.testing.cluster import conninfo, poll_until

pytestmark = pytest.mark.pgbq_node(
    extra_conf={
        "pg_background_queue.max_parallel_running_tasks_count": 4,
        "pg_background_queue.topic_config": '{"flaky": {"retry_count": 1, "delay_in_sec": 0.1}}',
    }
)

# wait() must return on NOTIFY: a poll this slow would exceed every timeout used below
NO_POLL = 3600.0


@pytest.fixture(scope="module")
def roles(node: Any) -> Any:
    query(node, "CREATE TABLE hits (tag text, who text DEFAULT current_user)")
    query(node, "GRANT ALL ON hits TO PUBLIC")
    for name in ("alice", "bob"):
        make_role(node, name)
    query(node, "CREATE ROLE carol LOGIN")  # not granted
    query(node, "CREATE DATABASE noext")
    return node


@pytest.fixture
def client(roles: Any) -> Iterator[Client]:
    with Client(conninfo(roles), poll_interval=NO_POLL) as c:
        yield c


@pytest.fixture
def alice(roles: Any) -> Iterator[Client]:
    with Client(conninfo(roles, user="alice"), poll_interval=NO_POLL) as c:
        yield c


def test_enqueue_wait_get(client: Client) -> None:
    task_id = client.enqueue("INSERT INTO hits (tag) VALUES ('one')", topic="t1", priority=7)
    [task] = client.wait([task_id], timeout=30)
    assert isinstance(task, Task)
    assert task.id == task_id
    assert task.state is TaskState.FINISHED
    assert task.done
    assert (task.topic, task.priority, task.owner, task.attempts) == ("t1", 7, "postgres", 1)
    assert task.run_time is not None
    assert task.run_time >= timedelta(0)
    assert task.error_history == ()
    assert task.errors is None
    assert client.get(task_id) == task


def test_enqueue_many_one_round_trip_in_order(client: Client) -> None:
    sqls = [f"INSERT INTO hits (tag) VALUES ('many-{i}')" for i in range(50)]
    ids = client.enqueue_many(sqls, topic="bulk")
    assert len(ids) == 50
    assert ids == sorted(ids)
    tasks = client.wait(ids, timeout=60)
    assert [t.id for t in tasks] == ids
    assert [t.sql_statement for t in tasks] == sqls
    assert {t.state for t in tasks} == {TaskState.FINISHED}
    assert client.enqueue_many([]) == []


def test_wait_dedupes_and_accepts_done_tasks(client: Client) -> None:
    a = client.enqueue("SELECT 1")
    client.wait([a], timeout=30)
    assert [t.id for t in client.wait([a, a], timeout=0)] == [a]
    assert client.wait([]) == []


def test_failed_task_parsed_and_retry(client: Client) -> None:
    task_id = client.enqueue("SELECT 1/0", topic="flaky")
    [task] = client.wait([task_id], timeout=30)
    assert task.state is TaskState.FAILED
    assert task.attempts == 2
    assert task.retry_count == 1
    assert [(e.attempt, e.sqlstate) for e in task.error_history] == [(1, "22012"), (2, "22012")]
    assert task.errors == "division by zero"
    assert client.retry(task_id) is True
    [again] = client.wait([task_id], timeout=30)
    assert again.state is TaskState.FAILED  # ran again, with a fresh retry budget
    assert again.closed_at is not None
    assert task.closed_at is not None
    assert again.closed_at > task.closed_at
    assert again.attempts == 2
    assert client.retry(client.enqueue("SELECT 1", run_at=timedelta(hours=1))) is False


def test_run_at_datetime_and_delay(client: Client) -> None:
    at = datetime(2999, 1, 1, tzinfo=UTC)
    later = client.get(client.enqueue("SELECT 1", run_at=at))
    assert later.run_at == at
    assert later.next_run_at == at
    assert later.state is TaskState.PENDING
    soon = client.get(client.enqueue("SELECT 1", run_at=timedelta(minutes=10)))
    assert soon.run_at is not None
    assert timedelta(minutes=9) < soon.run_at - soon.joined_at < timedelta(minutes=11)
    with pytest.raises(InvalidArgumentError, match="run_at"):
        client.enqueue("SELECT 1", run_at="tomorrow")  # type: ignore[arg-type]


def test_wait_timeout_names_unfinished_then_cancel(client: Client) -> None:
    quick = client.enqueue("SELECT 1")
    slow = client.enqueue("SELECT pg_sleep(60)")
    with pytest.raises(WaitTimeout) as err:
        client.wait([quick, slow], timeout=1.0)
    assert isinstance(err.value, TimeoutError)
    assert err.value.unfinished == [slow]
    assert str(slow) in str(err.value)
    assert client.cancel(slow) is True
    [cancelled] = client.wait([slow], timeout=30)
    assert cancelled.state is TaskState.CANCELLED
    assert client.cancel(slow) is False


def test_wait_progress_callback(client: Client) -> None:
    ids = client.enqueue_many(["SELECT pg_sleep(0.05)"] * 6)
    seen: list[tuple[int, int]] = []
    client.wait(ids, timeout=60, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (6, 6)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_tasks_filters(client: Client) -> None:
    ids = client.enqueue_many(["SELECT 1", "SELECT 1/0"], topic="filtered")
    client.wait(ids, timeout=30)
    failed = client.tasks(state="failed", topic="filtered")
    assert [t.id for t in failed] == [ids[1]]
    both = client.tasks(state=[TaskState.FINISHED, "failed"], topic="filtered")
    assert [t.id for t in both] == [ids[1], ids[0]]  # newest first
    assert len(client.tasks(limit=1)) == 1
    with pytest.raises(InvalidArgumentError, match="valid states"):
        client.tasks(state="done")
    with pytest.raises(InvalidArgumentError, match="limit"):
        client.tasks(limit=0)


def test_stats_workers_topics(client: Client) -> None:
    ids = client.enqueue_many(["SELECT pg_sleep(0.01)"] * 4, topic="statted")
    client.wait(ids, timeout=30)
    stats = {(s.topic, s.state): s for s in client.stats()}
    s = stats[("statted", TaskState.FINISHED)]
    assert s.tasks == 4
    assert s.attempts == 4
    assert s.p50_run_seconds is not None
    assert s.p95_run_seconds is not None
    assert 0.01 <= s.p50_run_seconds <= s.p95_run_seconds <= (s.max_run_seconds or 0)
    pending = client.enqueue("SELECT 1", topic="statted", run_at=timedelta(hours=1))
    stats = {(s.topic, s.state): s for s in client.stats()}
    assert stats[("statted", TaskState.PENDING)].tasks == 1
    assert stats[("statted", TaskState.PENDING)].p50_run_seconds is None
    client.cancel(pending)
    workers = client.workers()
    assert workers
    assert all(w.database == "postgres" for w in workers)
    topics = {t.topic: t for t in client.topics()}
    assert topics["flaky"].configured
    assert topics["flaky"].retry_count == 1
    assert topics[None].max_parallel_running_tasks_count == 4
    totals = {(t.topic, t.state): t for t in client.totals()}
    assert totals[("statted", TaskState.FINISHED)].tasks == 4


def test_invalid_sql_carries_message_and_position(client: Client) -> None:
    with pytest.raises(InvalidSQLError) as err:
        client.enqueue("SELECT 1 FROM WHERE x")
    assert err.value.sqlstate == "42601"
    assert 'syntax error at or near "WHERE"' in str(err.value)
    assert err.value.position == 15
    assert err.value.sql == "SELECT 1 FROM WHERE x"
    assert isinstance(err.value, ValueError)
    with pytest.raises(InvalidSQLError, match="must not be empty"):
        client.enqueue("  -- nothing ")
    with pytest.raises(InvalidSQLError, match="transaction control"):
        client.enqueue("COMMIT")
    with pytest.raises(InvalidArgumentError, match="topic must not be an empty string"):
        client.enqueue("SELECT 1", topic="")
    with pytest.raises(InvalidArgumentError, match="sequence"):
        client.enqueue_many("SELECT 1")


def test_get_missing_and_wait_missing(client: Client) -> None:
    with pytest.raises(TaskNotFoundError, match="999999"):
        client.get(999999)
    with pytest.raises(TaskNotFoundError, match="999999"):
        client.wait([999999], timeout=5)


def test_roles_see_and_touch_only_their_tasks(client: Client, alice: Client, roles: Any) -> None:
    theirs = client.enqueue("SELECT 1", run_at=timedelta(hours=1))
    mine = alice.enqueue("INSERT INTO hits (tag) VALUES ('alice')")
    assert alice.wait([mine], timeout=30)[0].owner == "alice"
    with pytest.raises(TaskNotFoundError):
        alice.get(theirs)
    assert {t.owner for t in alice.tasks()} == {"alice"}
    assert alice.cancel(theirs) is False  # invisible to alice: nothing to cancel
    assert alice.retry(theirs) is False
    assert client.get(theirs).state is TaskState.PENDING
    client.cancel(theirs)
    with Client(conninfo(roles, user="carol")) as carol, pytest.raises(PermissionDeniedError):
        carol.enqueue("SELECT 1")


def test_purge_counts_own_terminal_tasks(roles: Any) -> None:
    make_role(roles, "purger")
    with Client(conninfo(roles, user="purger"), poll_interval=NO_POLL) as c:
        ids = c.enqueue_many(["SELECT 1"] * 3)
        c.wait(ids, timeout=30)
        future = c.enqueue("SELECT 1", run_at=timedelta(hours=1))
        assert c.purge(timedelta(days=1)) == 0
        assert c.purge("0") == 3
        assert [t.id for t in c.tasks()] == [future]
        with pytest.raises(InvalidArgumentError):
            c.purge("-1 day")
        with pytest.raises(InvalidArgumentError):
            c.purge("soon")


def test_not_installed(roles: Any) -> None:
    with Client(conninfo(roles, dbname="noext")) as c, pytest.raises(NotInstalledError) as err:
        c.enqueue("SELECT 1")
    assert "shared_preload_libraries" in str(err.value)
    assert "CREATE EXTENSION" in str(err.value)


def test_connection_error_is_clear() -> None:
    with pytest.raises(DatabaseError, match=r"127\.0\.0\.1"):
        Client("host=127.0.0.1 port=1 connect_timeout=2")


def test_enqueue_joins_callers_transaction(roles: Any) -> None:
    with psycopg.connect(conninfo(roles)) as conn:  # autocommit off
        client = Client(conn, poll_interval=NO_POLL)
        task_id = client.enqueue("INSERT INTO hits (tag) VALUES ('txn')")
        conn.rollback()
        with pytest.raises(TaskNotFoundError):
            client.get(task_id)
        conn.rollback()
        task_id = client.enqueue("INSERT INTO hits (tag) VALUES ('txn')")
        conn.commit()
        # wait() listens on a connection of its own: this one is not in autocommit mode
        assert client.wait([task_id], timeout=30)[0].state is TaskState.FINISHED
        conn.commit()
        client.close()
        assert not conn.closed  # a given connection is left to its owner


def test_schema_qualification(roles: Any) -> None:
    with Client(conninfo(roles), schema="public", poll_interval=NO_POLL) as c:
        c.conn.execute("SET search_path = pg_catalog")
        task_id = c.enqueue("SELECT 1")
        assert c.wait([task_id], timeout=30)[0].state is TaskState.FINISHED
    with Client(conninfo(roles), schema="nope") as c, pytest.raises(NotInstalledError):
        c.tasks()


def test_wait_falls_back_to_polling_without_notify(make_cluster: Any) -> None:
    quiet = make_cluster(extra_conf={"pg_background_queue.notify": "off"})
    with Client(conninfo(quiet), poll_interval=0.2) as c:
        ids = c.enqueue_many(["SELECT pg_sleep(0.2)"] * 3)
        assert {t.state for t in c.wait(ids, timeout=60)} == {TaskState.FINISHED}
    with Client(conninfo(quiet), poll_interval=NO_POLL) as c:
        task_id = c.enqueue("SELECT pg_sleep(0.2)")
        poll_until(lambda: c.get(task_id).done, timeout=30, message="task done")
        # done before wait() starts: its first poll sees it without any notification
        assert c.wait([task_id], timeout=5)[0].done
