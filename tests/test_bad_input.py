"""Hostile and broken input, end to end on a real cluster: every case is a clear error with
a proper SQLSTATE, nothing is written, and the server never restarts.  A property-based
test enqueues random text and checks that every accepted task reaches a terminal state."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core_helpers import make_role, query, scalar
from pg_background_queue.testing.cluster import (
    conninfo,
    destroy_node,
    make_node,
    poll_until,
    server_log,
)

MB = 1024 * 1024
JUNK = "".join(chr(c) for c in range(1, 0x250) if chr(c) not in "'\\") * 200  # no NUL


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            "pg_background_queue.timeout_in_sec": 2,
            "pg_background_queue.topic_config": json.dumps(
                {"known": {"retry_count": 0}, "big": {"timeout_in_sec": 300}}
            ),
        }
    )
    query(n, "CREATE DATABASE fuzz")
    query(n, "CREATE EXTENSION pg_background_queue", dbname="fuzz")
    make_role(n, "fuzzer", dbname="fuzz")
    yield n
    destroy_node(n)


@pytest.fixture(scope="module")
def started(node: Any) -> Any:
    return scalar(node, "SELECT pg_postmaster_start_time()")


def sqlstate_of(node: Any, statement: str, params: tuple[Any, ...] = ()) -> str | None:
    """Run as the superuser; the SQLSTATE of the error, or None."""
    with psycopg.connect(conninfo(node), autocommit=True) as conn:
        error: psycopg.Error | None = None
        try:
            conn.execute(statement, params)
        except psycopg.Error as exc:
            error = exc
    if error is None:
        return None
    assert error.diag.message_primary, "an error without a message"
    return error.sqlstate


ENQUEUE = "SELECT pg_background_enqueue(%s, %s, %s, %s)"
ENQUEUE_CASES = [
    # (id, sql, topic, priority, run_at, sqlstate)
    ("sql-null", None, None, None, None, "22004"),
    ("sql-empty", "", None, None, None, "22023"),
    ("sql-blank", " \t\n ", None, None, None, "22023"),
    ("sql-comment-only", "/* nothing */ -- here", None, None, None, "22023"),
    ("sql-semicolons", ";;;", None, None, None, "22023"),
    ("sql-syntax", "SELEC 1", None, None, None, "42601"),
    ("sql-unterminated", "SELECT 'abc", None, None, None, "42601"),
    ("sql-begin", "BEGIN", None, None, None, "0A000"),
    ("sql-commit-in-script", "SELECT 1; COMMIT", None, None, None, "0A000"),
    ("sql-copy-stdin", "COPY pg_class FROM STDIN", None, None, None, "0A000"),
    ("sql-vacuum-in-script", "VACUUM; SELECT 1", None, None, None, "25001"),
    ("sql-1mb-syntax-error", "SELECT " + "x," * (MB // 2) + ")", None, None, None, "42601"),
    ("sql-binary-junk", JUNK, None, None, None, "42601"),
    # the grammar's own limit: "memory exhausted at or near "(""
    ("sql-nested-parens", "SELECT " + "(" * 200_000 + "1" + ")" * 200_000, None, None, None,
     "42601"),
    ("topic-empty", "SELECT 1", "", None, None, "22023"),
    ("topic-too-long", "SELECT 1", "t" * 10_000, None, None, "22023"),
    ("priority-negative", "SELECT 1", None, -1, None, "22023"),
    ("priority-int-overflow", "SELECT 1", None, 2**31, None, "22003"),
    ("run-at-infinity", "SELECT 1", None, None, "infinity", "22023"),
    ("run-at-minus-infinity", "SELECT 1", None, None, "-infinity", "22023"),
    ("run-at-garbage", "SELECT 1", None, None, "next tuesday-ish", "22007"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "topic", "priority", "run_at", "sqlstate"),
    [pytest.param(*c[1:], id=c[0]) for c in ENQUEUE_CASES],
)
def test_enqueue_refused(
    node: Any, started: Any, sql: Any, topic: Any, priority: Any, run_at: Any, sqlstate: str
) -> None:
    before = scalar(node, "SELECT count(*) FROM pg_background_tasks")
    statement = ENQUEUE
    params: tuple[Any, ...] = (sql, topic, priority, run_at)
    if isinstance(priority, int) and priority >= 2**31:
        statement = "SELECT pg_background_enqueue(%s, %s, %s::bigint::int, %s)"
    assert sqlstate_of(node, statement, params) == sqlstate
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks") == before
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


MANY = "SELECT count(*) FROM pg_background_enqueue_many(%s)"


@pytest.mark.parametrize(
    ("statement", "params", "sqlstate"),
    [
        pytest.param(MANY, (None,), "22004", id="many-null-array"),
        pytest.param(MANY, (["SELECT 1", None],), "22004", id="many-null-element"),
        pytest.param(
            "SELECT count(*) FROM pg_background_enqueue_many(ARRAY[['SELECT 1'], ['SELECT 2']])",
            (), "2202E", id="many-two-dimensional",
        ),
        pytest.param(MANY, (["SELECT 1"] * 999 + ["SELEC 1"],), "42601", id="many-one-bad-of-1000"),
        pytest.param(MANY, (["SELECT 1", ""],), "22023", id="many-empty-element"),
        pytest.param(
            "SELECT pg_background_queue_purge(%s::interval)", ("-1 day",), "22023",
            id="purge-negative",
        ),
        pytest.param(
            "SELECT pg_background_queue_purge(%s::interval)", ("soon",), "22007",
            id="purge-garbage",
        ),
    ],
)  # fmt: skip
def test_arguments_refused(
    node: Any, started: Any, statement: str, params: tuple[Any, ...], sqlstate: str
) -> None:
    before = scalar(node, "SELECT count(*) FROM pg_background_tasks")
    assert sqlstate_of(node, statement, params) == sqlstate
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks") == before
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


def test_unconfigured_topic_with_strict_topics(node: Any) -> None:
    with psycopg.connect(conninfo(node), autocommit=True) as conn:
        conn.execute("SET pg_background_queue.strict_topics = on")
        with pytest.raises(psycopg.errors.UndefinedObject, match="is not configured"):
            conn.execute("SELECT pg_background_enqueue('SELECT 1', 'unknown')")
        conn.execute("SELECT pg_background_enqueue('SELECT 1', 'known', run_at => 'tomorrow')")


NESTED = "[" * 10_000 + "]" * 10_000
CONFIG_CASES = [
    ("topic_config", "not json"),
    ("topic_config", "[1, 2]"),
    ("topic_config", '{"t": 5}'),
    ("topic_config", '{"t": {"retry_count": -1}}'),
    ("topic_config", '{"t": {"retry_count": 1e30}}'),
    ("topic_config", '{"t": {"retry_count": "three"}}'),
    ("topic_config", '{"t": {"no_such_key": 1}}'),
    ("topic_config", '{"t": {"delay_in_sec": -0.5}}'),
    ("topic_config", '{"t": {"priority": 2147483648}}'),
    ("topic_config", '{"t": ' + NESTED + "}"),
    ("topic_config", '{"t": {"retry_count": 1}, "t": {"retry_count": 2}}'),
    ("topic_config", '{"' + "t" * 10_000 + '": {}}'),
    ("retry_count", "-1"),
    ("retry_count", "abc"),
    ("retry_count", "1e100"),
    ("delay_in_sec", "-0.5"),
    ("delay_in_sec", "NaN"),
    ("max_parallel_running_tasks_count", "100000"),
    ("timeout_in_sec", "99999999999"),
    ("worker_idle_timeout", "0"),
    ("retention_in_sec", "-2"),
    ("notify", "perhaps"),
]


@pytest.mark.parametrize(
    ("name", "value"),
    [pytest.param(n, v, id=f"{n}={v[:24]}") for n, v in CONFIG_CASES],
)
def test_configuration_refused(node: Any, started: Any, name: str, value: str) -> None:
    guc = f"pg_background_queue.{name}"
    before = scalar(node, "SELECT current_setting(%s)", [guc])
    state = sqlstate_of(node, f"ALTER SYSTEM SET {guc} = {psycopg.sql.quote(value)}")
    assert state in ("22023", "22P02", "54001"), state
    assert scalar(node, "SELECT pg_reload_conf()")
    assert scalar(node, "SELECT current_setting(%s)", [guc]) == before
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


def test_reload_time_rejection_keeps_the_old_value(node: Any, started: Any) -> None:
    """A bad value that reaches postgresql.conf (hand-edited) is refused at reload."""
    before = scalar(node, "SELECT current_setting('pg_background_queue.topic_config')")
    node.append_conf('pg_background_queue.topic_config = \'{"t": {"retry_count": -5}}\'')
    try:
        query(node, "SELECT pg_reload_conf()")
        poll_until(
            lambda: (
                "pg_background_queue.topic_config" in server_log(node)
                and "retry_count" in server_log(node)
            ),
            timeout=30,
            message="the rejection in the server log",
        )
        assert scalar(node, "SELECT current_setting('pg_background_queue.topic_config')") == before
    finally:
        conf = node.base_dir + "/data/postgresql.conf"
        with open(conf) as f:
            lines = [x for x in f if 'retry_count": -5' not in x]
        with open(conf, "w") as f:
            f.writelines(lines)
        query(node, "SELECT pg_reload_conf()")
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


def test_setting_a_sighup_parameter_in_a_session(node: Any) -> None:
    assert sqlstate_of(node, "SET pg_background_queue.retry_count = 3") == "55P02"


def test_large_valid_script_is_accepted_and_runs(node: Any) -> None:
    script = "SELECT 1;\n" * (MB // 10)  # 1 MB of valid statements
    task_id = scalar(node, "SELECT pg_background_enqueue(%s, 'big')", [script])
    poll_until(
        lambda: (
            scalar(node, "SELECT state::text FROM pg_background_tasks WHERE id = %s", [task_id])
            == "finished"
        ),
        timeout=240,
        message="1 MB script finished",
    )


SQLISH = st.lists(
    st.sampled_from(
        ["SELECT", "1", "(", ")", ";", "'", "x", "FROM", "pg_sleep(0.01)", ",", "VACUUM",
         "BEGIN", "COMMIT", "--", "/*", "*/", "$$", "E'\\\\", "1/0", "DO", "NULL", " "]
    ),
    max_size=12,
).map(" ".join)  # fmt: skip
RANDOM_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=200,
)


VALID = st.one_of(
    RANDOM_TEXT.map(lambda t: "SELECT " + psycopg.sql.quote(t)),
    st.integers(-3, 3).map(lambda n: f"SELECT 1/{n}"),
    st.integers(0, 9).map(lambda n: f"SELECT pg_sleep(0.00{n}); SELECT {n}"),
    RANDOM_TEXT.map(lambda t: f"DO $x$ BEGIN RAISE NOTICE '%', {psycopg.sql.quote(t)}; END $x$"),
)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.one_of(SQLISH, RANDOM_TEXT, VALID, st.sampled_from(string.printable)))
def test_random_text_never_hurts_the_server(node: Any, started: Any, text: str) -> None:
    dsn = conninfo(node, dbname="fuzz", user="fuzzer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        refused: str | None = None
        try:
            row = conn.execute("SELECT pg_background_enqueue(%s)", (text,)).fetchone()
        except psycopg.Error as exc:
            refused = exc.sqlstate or "none"
        if refused is not None:  # refused at enqueue: a clear class of error
            event(f"refused {refused}")
            assert refused[:2] in ("22", "42", "0A", "25", "54"), refused
            return
        event("accepted")
        assert row is not None
        task_id = row[0]
        poll_until(
            lambda: conn.execute(
                "SELECT state::text IN ('finished', 'failed', 'cancelled') "
                "FROM pg_background_tasks WHERE id = %s",
                (task_id,),
            ).fetchone()[0],  # type: ignore[index]
            timeout=60,
            message=f"task {task_id} ({text[:40]!r}) terminal",
        )
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started
