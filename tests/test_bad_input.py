"""Hostile and broken input, end to end on a real cluster: every case is a clear error with
its exact SQLSTATE, nothing is written, and the server never restarts.  Parameters refused
at ALTER SYSTEM (22023) or, hand-edited into postgresql.conf, at reload (logged; the old
value stays in effect).  Odd but valid input (multibyte, control characters, extreme
priorities and times, arrays not starting at 1) is stored exactly and runs.  A
property-based test enqueues random text and checks that every accepted task reaches a
terminal state."""

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
    ("sql-start-transaction", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", None, None, None,
     "0A000"),
    ("sql-abort", "SELECT 1; ABORT", None, None, None, "0A000"),
    ("sql-commit-prepared", "COMMIT PREPARED 'gid'", None, None, None, "0A000"),
    ("sql-copy-query-to-stdout", "COPY (SELECT 1) TO STDOUT", None, None, None, "0A000"),
    ("sql-psql-meta-command", "SELECT 1;\n\\gexec", None, None, None, "42601"),
    ("sql-select-then-vacuum", "SELECT 1; VACUUM", None, None, None, "25001"),
    ("sql-create-database-in-script", "CREATE DATABASE x; SELECT 1", None, None, None, "25001"),
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
    ("topic-64-bytes-of-32-chars", "SELECT 1", "\u00e9" * 32, None, None, "22023"),
    ("topic-binary-junk-too-long", "SELECT 1", JUNK[:200], None, None, "22023"),
    ("priority-negative", "SELECT 1", None, -1, None, "22023"),
    ("priority-min-int", "SELECT 1", None, -(2**31), None, "22023"),
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


def wait_terminal(node: Any, ids: list[int], timeout: float = 30) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        rows = query(node, "SELECT * FROM pg_background_tasks WHERE id = ANY(%s) ORDER BY id",
                     [ids])  # fmt: skip
        terminal = ("finished", "failed", "cancelled")
        return rows if len(rows) == len(ids) and all(r["state"] in terminal for r in rows) else None

    return poll_until(done, timeout=timeout, message=f"tasks {ids} terminal")


ACCEPTED_CASES = [
    # (id, sql, topic, priority, run_at): odd but valid, stored exactly and run
    ("topic-63-bytes-of-32-chars", "SELECT 1", "\u00e9" * 31 + "x", None, None),
    ("topic-unicode", "SELECT 1", "\u0442\u0435\u043c\u0430-\U0001f600", None, None),
    ("topic-control-characters", "SELECT 1", "\x01\x02\x7f\t\n", None, None),
    ("topic-blank", "SELECT 1", "  ", None, None),
    ("priority-zero", "SELECT 1", None, 0, None),
    ("priority-max-int", "SELECT 1", None, 2**31 - 1, None),
    ("run-at-1900", "SELECT 1", None, None, "1900-01-01 00:00:00+00"),
    ("run-at-null", "SELECT 1", None, None, None),
    ("sql-unicode", "SELECT '\u0442\u0435\u043c\u0430 \U0001f600' AS \"\u00fc\"", None, None, None),
    ("sql-dollar-quoted-junk", "SELECT $q$" + JUNK[:3000] + "$q$", None, None, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sql", "topic", "priority", "run_at"),
    [pytest.param(*c[1:], id=c[0]) for c in ACCEPTED_CASES],
)
def test_odd_but_valid_input_is_accepted_exactly(
    node: Any, started: Any, sql: str, topic: Any, priority: Any, run_at: Any
) -> None:
    task_id = scalar(node, ENQUEUE, (sql, topic, priority, run_at))
    (row,) = wait_terminal(node, [task_id])
    expected_priority = 100 if priority is None else priority  # 100: an unconfigured topic's
    assert (row["sql_statement"], row["topic"], row["priority"]) == (sql, topic, expected_priority)
    assert row["state"] == "finished", row["error_history"]
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


def test_enqueue_many_of_an_empty_array_writes_nothing(node: Any) -> None:
    before = scalar(node, "SELECT count(*) FROM pg_background_tasks")
    assert query(node, "SELECT * FROM pg_background_enqueue_many('{}')") == []
    assert query(node, "SELECT * FROM pg_background_enqueue_many(ARRAY[]::text[])") == []
    assert scalar(node, "SELECT count(*) FROM pg_background_tasks") == before


def test_enqueue_many_of_an_array_not_starting_at_1(node: Any) -> None:
    array = '[5:7]={"SELECT 5","SELECT 6","SELECT 7"}'
    rows = query(node, "SELECT id FROM pg_background_enqueue_many(%s::text[]) AS id", [array])
    ids = [r["id"] for r in rows]
    assert len(ids) == 3
    assert ids == sorted(ids)
    tasks = wait_terminal(node, ids)
    assert [(t["sql_statement"], t["state"]) for t in tasks] == [
        ("SELECT 5", "finished"), ("SELECT 6", "finished"), ("SELECT 7", "finished")
    ]


def test_enqueue_many_200k_elements_with_the_last_one_bad(node: Any, started: Any) -> None:
    before = scalar(node, "SELECT count(*) FROM pg_background_tasks")
    statement = (
        "SELECT count(*) FROM pg_background_enqueue_many("
        "array_fill('SELECT 1'::text, ARRAY[200000]) || 'SELEC 1'::text)"
    )
    with (
        psycopg.connect(conninfo(node), autocommit=True) as conn,
        pytest.raises(psycopg.errors.SyntaxError) as info,
    ):
        conn.execute(statement)
    assert "element 200001" in str(info.value)
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
    ("topic_config", '{"t": {' + '"a": {' * 10_000 + "}" * 10_000 + "}}"),
    ("topic_config", '{"t": {"retry_count": 1.5}}'),
    ("topic_config", '{"t": {"retry_count": null}}'),
    ("topic_config", '{"t": {"retry_count": true}}'),
    ("topic_config", '{"t": {"retry_count": 2147483648}}'),
    ("topic_config", '{"t": {"retry_count": 1, "retry_count": 2}}'),
    ("topic_config", '{"t": {"timeout_in_sec": 1e400}}'),
    ("topic_config", '{"t": {"delay_in_sec": "NaN"}}'),
    ("topic_config", '{"t": {"delay_in_sec": 1e308}}'),
    ("topic_config", '{"": {}}'),
    ("topic_config", '"just a string"'),
    ("topic_config", "null"),
    ("topic_config", '{"t": {}} trailing'),
    ("retry_count", "-1"),
    ("retry_count", "abc"),
    ("retry_count", "1e100"),
    ("retry_count", "1001"),
    ("delay_in_sec", "-0.5"),
    ("delay_in_sec", "NaN"),
    ("delay_in_sec", "Infinity"),
    ("max_parallel_running_tasks_count", "100000"),
    ("max_parallel_running_tasks_count", "-1"),
    ("timeout_in_sec", "99999999999"),
    ("timeout_in_sec", "3000000"),
    ("timeout_in_sec", "1 fortnight"),
    ("worker_idle_timeout", "0"),
    ("retention_in_sec", "-2"),
    ("maintenance_interval", "0"),
    ("notify", "perhaps"),
    ("strict_topics", "perhaps"),
]


@pytest.mark.parametrize(
    ("name", "value"),
    [pytest.param(n, v, id=f"{n}={v[:24]}{'...' if len(v) > 24 else ''}-{i}")
     for i, (n, v) in enumerate(CONFIG_CASES)],
)  # fmt: skip
def test_configuration_refused(node: Any, started: Any, name: str, value: str) -> None:
    guc = f"pg_background_queue.{name}"
    before = scalar(node, "SELECT current_setting(%s)", [guc])
    assert sqlstate_of(node, f"ALTER SYSTEM SET {guc} = {psycopg.sql.quote(value)}") == "22023"
    assert scalar(node, "SELECT pg_reload_conf()")
    assert scalar(node, "SELECT current_setting(%s)", [guc]) == before
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


RELOAD_CASES = [
    # (parameter, value as written in postgresql.conf, what the server log must say)
    ("topic_config", """'{"t": {"retry_count": -5}}'""",
     'invalid value for parameter "pg_background_queue.topic_config"'),
    ("topic_config", "'" + '{"t": ' + NESTED + "}'",
     'invalid value for parameter "pg_background_queue.topic_config"'),
    ("retry_count", "-1",
     '-1 is outside the valid range for parameter "pg_background_queue.retry_count"'),
    ("timeout_in_sec", "'abc'",
     'invalid value for parameter "pg_background_queue.timeout_in_sec": "abc"'),
    ("notify", "perhaps", 'parameter "pg_background_queue.notify" requires a Boolean value'),
]  # fmt: skip
MARK = "# test_bad_input reload case"


@pytest.mark.parametrize(
    ("name", "literal", "logged"),
    [pytest.param(*c, id=f"{c[0]}-{i}") for i, c in enumerate(RELOAD_CASES)],
)
def test_reload_time_rejection_keeps_the_old_value(
    node: Any, started: Any, name: str, literal: str, logged: str
) -> None:
    """A bad value that reaches postgresql.conf (hand-edited) is refused at reload: the log
    says so and the old value, and the topic configuration built from it, stay in effect."""
    guc = f"pg_background_queue.{name}"
    before = scalar(node, "SELECT current_setting(%s)", [guc])
    config = query(node, "SELECT * FROM pg_background_queue_topic_config('known')")
    offset = len(server_log(node))
    node.append_conf(f"{guc} = {literal} {MARK}")
    try:
        query(node, "SELECT pg_reload_conf()")
        poll_until(
            lambda: logged in server_log(node)[offset:],
            timeout=30,
            message=f"the rejection of {guc} in the server log",
        )
        assert scalar(node, "SELECT current_setting(%s)", [guc]) == before
        assert query(node, "SELECT * FROM pg_background_queue_topic_config('known')") == config
    finally:
        conf = node.base_dir + "/data/postgresql.conf"
        with open(conf) as f:
            lines = [x for x in f if MARK not in x]
        with open(conf, "w") as f:
            f.writelines(lines)
        query(node, "SELECT pg_reload_conf()")
    assert scalar(node, "SELECT pg_postmaster_start_time()") == started


@pytest.mark.parametrize("value", ["perhaps", "", "2"])
def test_set_strict_topics_to_a_non_boolean(node: Any, value: str) -> None:
    """strict_topics is the one parameter a (superuser) session may SET."""
    with psycopg.connect(conninfo(node), autocommit=True) as conn:
        before = conn.execute("SHOW pg_background_queue.strict_topics").fetchone()
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="requires a Boolean"):
            conn.execute(f"SET pg_background_queue.strict_topics = {psycopg.sql.quote(value)}")
        assert conn.execute("SHOW pg_background_queue.strict_topics").fetchone() == before


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
