"""No task can change the next one's world (issue 14, section 1).

The generated test sets every parameter a task may set (pg_settings with context ``user`` or
``superuser``) to a value other than the worker's fresh one in one task, and checks that the next
task on the same worker sees exactly what the first task of a fresh worker of that role saw.
The other tests cover session state that is not a parameter (roles, temp tables, prepared
statements, cursors, advisory locks; PostgreSQL refuses LISTEN in a background worker), a role
whose default isolation level is not READ COMMITTED, and an error while a task's end is
recorded."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from core_helpers import enqueue, make_role, query, scalar, task, wait_tasks
from pg_background_queue.testing.cluster import destroy_node, make_node, poll_until, server_log

# Parameters a task cannot set to a value of its choice, each with the reason.  They are still
# read back in the next task and must equal the fresh worker's value.
SKIPPED = {
    "transaction_isolation": "transaction-scoped: SET fails after the transaction's first query "
    "(the task's transaction has run queries by then) and the value ends with the transaction",
    "transaction_read_only": "transaction-scoped (ends with the transaction); setting it on would "
    "also make the task's own recording INSERT fail",
    "transaction_deferrable": "transaction-scoped: SET fails after the transaction's first query",
    **dict.fromkeys(
        (
            "tcp_keepalives_count",
            "tcp_keepalives_idle",
            "tcp_keepalives_interval",
            "tcp_user_timeout",
        ),
        "a worker has no client socket: the value reads 0 whatever is set",
    ),
}

# Parameters set in a second round: their check hooks refuse the value while others set in the
# first round are on (log_statement_stats with log_parser/planner/executor_stats).
SECOND_ROUND = {"log_statement_stats"}

# Values for string parameters and for numbers where the generic choice would get in the test's
# way (a timeout of 1 ms would cancel the recording statement).
EXPLICIT = {
    "application_name": "pgbq-leak",
    "backtrace_functions": "int4in",
    "client_encoding": "LATIN1",
    "commit_delay": "1",
    "createrole_self_grant": "set, inherit",
    "DateStyle": "SQL, DMY",
    "extension_control_path": "/nonexistent/pgbq-leak:$system",
    # Debian's own parameter (its packages of 15 and others): extensions' staging directory
    "extension_destdir": "/nonexistent/pgbq-leak",
    # 15.20's (a November 2026 security release): the allowed logical decoding plugins
    "output_plugin_libraries": "pgoutput",
    "default_table_access_method": "leakheap",
    "default_tablespace": "leakspc",
    "default_text_search_config": "pg_catalog.english",
    "dynamic_library_path": "$libdir:/nonexistent/pgbq-leak",
    "idle_in_transaction_session_timeout": "3600000",
    "idle_session_timeout": "3600000",
    "lc_messages": "POSIX",
    "lc_monetary": "POSIX",
    "lc_numeric": "POSIX",
    "lc_time": "POSIX",
    "local_preload_libraries": "pgbq_leak_probe",
    "lock_timeout": "3600000",
    "restrict_nonsystem_relation_kind": "foreign-table",
    "search_path": "leakschema, public",
    "session_preload_libraries": "pgbq_leak_probe",
    "statement_timeout": "3600000",
    "temp_file_limit": "1048576",
    "temp_tablespaces": "leakspc",
    "TimeZone": "Pacific/Chatham",
    "timezone_abbreviations": "Australia",
    "transaction_timeout": "3600000",
    "wal_consistency_checking": "heap",
    "client_connection_check_interval": "60000",
}


@pytest.fixture(scope="module")
def node() -> Iterator[Any]:
    n = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 4,
            "pg_background_queue.worker_idle_timeout": "120s",
            "pg_background_queue.topic_config": '{"recfail": {"retry_count": 0}, '
            '"ser": {"retry_count": 10}}',
        }
    )
    query(n, "CREATE TABLE seen (tag text, pid int, name text, setting text)")
    query(n, "CREATE TABLE probe (tag text, pid int, v text)")
    query(n, "GRANT ALL ON seen, probe TO PUBLIC")
    query(n, "CREATE SCHEMA leakschema")
    query(n, "CREATE ACCESS METHOD leakheap TYPE TABLE HANDLER heap_tableam_handler")
    spc = os.path.join(n.base_dir, "leakspc")
    os.makedirs(spc, exist_ok=True)
    query(n, f"CREATE TABLESPACE leakspc LOCATION '{spc}'")
    yield n
    if os.environ.get("PGBQ_DUMP_LOG"):
        print(server_log(n))
    destroy_node(n)


def run_one(node: Any, sql: str, user: str) -> dict[str, Any]:
    """Enqueue one task and wait for its end (the role's idle worker takes it)."""
    return wait_tasks(node, [enqueue(node, sql, user=user)], timeout=60)[0]


def superuser_role(node: Any, name: str) -> None:
    make_role(node, name)
    query(node, f"ALTER ROLE {name} SUPERUSER")


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def other_value(row: dict[str, Any]) -> str | None:
    """A value for the parameter that differs from its current one, or None if it has one."""
    name, vartype, current = row["name"], row["vartype"], row["setting"]
    if name in EXPLICIT:
        return EXPLICIT[name]
    if vartype == "bool":
        return "off" if current == "on" else "on"
    if vartype == "enum":
        others = [v for v in row["enumvals"] if v != current]
        return others[0] if others else None
    if vartype in ("integer", "real"):
        lo, hi = float(row["min_val"]), float(row["max_val"])
        cur = float(current)
        if lo == hi:
            return None
        if cur != lo:
            value = lo
        else:
            value = (
                min(hi, lo + 1) if vartype == "integer" else (lo + hi) / 2 if hi < 1e6 else lo + 1
            )
        return str(int(value)) if vartype == "integer" else repr(value)
    raise AssertionError(f"no value chosen for string parameter {name} (add it to EXPLICIT)")


def dump(tag: str, names: list[str]) -> str:
    array = "ARRAY[" + ", ".join(quote_literal(n) for n in names) + "]"
    return (
        f"INSERT INTO public.seen SELECT {quote_literal(tag)}, pg_catalog.pg_backend_pid(), "
        f"name, setting FROM pg_catalog.pg_settings WHERE name = ANY({array})"
    )


def seen(node: Any, tag: str) -> tuple[set[int], dict[str, str]]:
    rows = query(node, "SELECT pid, name, setting FROM seen WHERE tag = %s", (tag,))
    return {r["pid"] for r in rows}, {r["name"]: r["setting"] for r in rows}


@pytest.mark.parametrize("round_no", [1, 2])
def test_no_parameter_leaks_into_the_next_task(node: Any, round_no: int) -> None:
    role = f"leaker{round_no}"
    superuser_role(node, role)
    params = query(
        node,
        "SELECT name, setting, vartype, enumvals, min_val, max_val FROM pg_settings "
        "WHERE context IN ('user', 'superuser') ORDER BY name",
    )
    names = [p["name"] for p in params]
    # the first task of a fresh worker of this role: what a fresh session sees
    base = run_one(node, dump(f"base{round_no}", names), role)
    assert base["state"] == "finished", base["errors"]
    base_pids, base_values = seen(node, f"base{round_no}")

    chosen: dict[str, str] = {}
    skipped: dict[str, str] = dict(SKIPPED)
    for p in params:
        name = p["name"]
        if name in SKIPPED:
            continue
        if (name in SECOND_ROUND) != (round_no == 2):
            continue
        p = {**p, "setting": base_values.get(name, p["setting"])}
        value = other_value(p)
        if value is None:
            skipped[name] = "a single allowed value in this build"
            continue
        chosen[name] = value
    assert chosen, "nothing to set"
    setter = "; ".join(f"SET {n} = {quote_literal(v)}" for n, v in chosen.items())
    set_row = run_one(node, setter + "; " + dump(f"set{round_no}", names), role)
    assert set_row["state"] == "finished", set_row["errors"]
    after_row = run_one(node, dump(f"after{round_no}", names), role)
    assert after_row["state"] == "finished", after_row["errors"]
    assert after_row["attempts"] == 1

    set_pids, set_values = seen(node, f"set{round_no}")
    after_pids, after_values = seen(node, f"after{round_no}")
    assert base_pids == set_pids == after_pids, "one worker ran all three"
    assert len(base_pids) == 1
    # the test can fail: every chosen value took effect in the setting task
    unchanged = sorted(n for n in chosen if set_values.get(n) == base_values.get(n))
    assert not unchanged, f"SET had no visible effect on {unchanged}"
    leaked = {
        n: (base_values.get(n), after_values.get(n))
        for n in names
        if after_values.get(n) != base_values.get(n)
    }
    assert not leaked, f"leaked into the next task (fresh, next): {leaked}"
    print(f"round {round_no}: {len(chosen)} parameters set; skipped {skipped}")


@pytest.mark.parametrize(
    "setting",
    [
        "SET default_transaction_isolation = 'serializable'",
        "SET default_transaction_read_only = on",
        "SET default_transaction_deferrable = on",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    ],
)
def test_transaction_characteristics_do_not_leak(node: Any, setting: str) -> None:
    role = "chars_" + str(abs(hash(setting)) % 100000)
    make_role(node, role)
    first = run_one(
        node,
        f"{setting}; INSERT INTO public.probe VALUES ('{role}-1', "
        "pg_backend_pid(), current_setting('default_transaction_isolation'))",
        role,
    )
    assert first["state"] == "finished", first["errors"]
    second = run_one(
        node,
        f"INSERT INTO public.probe SELECT '{role}-2', pg_backend_pid(), "
        "current_setting('transaction_isolation') || '/' || "
        "current_setting('transaction_read_only') || '/' || "
        "current_setting('transaction_deferrable')",
        role,
    )
    assert second["state"] == "finished", second["error_history"]
    assert second["attempts"] == 1
    rows = {
        r["tag"]: r for r in query(node, "SELECT * FROM probe WHERE tag LIKE %s", (role + "%",))
    }
    assert rows[f"{role}-1"]["pid"] == rows[f"{role}-2"]["pid"], "one worker ran both"
    assert rows[f"{role}-2"]["v"] == "read committed/off/off"


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_role_default_isolation_applies_and_claims_never_fail(node: Any, level: str) -> None:
    """The role's default level applies to its tasks; the claim never runs on a task's
    snapshot.  A serializable task's finished mark is part of its transaction, so SSI may
    fail it with 40001 like any serializable transaction (retried per policy); at repeatable
    read nothing may fail."""
    role = "iso_" + level.replace(" ", "_")
    serializable = level == "serializable"
    make_role(node, role)
    query(node, f"ALTER ROLE {role} SET default_transaction_isolation = '{level}'")
    ids = [
        int(r["id"])
        for r in query(
            node,
            "SELECT pg_background_enqueue_many(array_agg(format("
            "'INSERT INTO public.probe VALUES (%%L, pg_backend_pid(), "
            "current_setting(''transaction_isolation''))', %s || i)), %s) AS id "
            "FROM generate_series(1, 200) i",
            (role, "ser" if serializable else None),
            user=role,
        )
    ]
    rows = wait_tasks(node, ids, timeout=240)
    bad = [
        (r["id"], r["state"], r["attempts"], r["error_history"])
        for r in rows
        if r["state"] != "finished"
        or (r["attempts"] != 1 and not serializable)
        or any(e["sqlstate"] != "40001" for e in r["error_history"])
    ]
    assert not bad, bad[:5]
    levels = {r["v"] for r in query(node, "SELECT v FROM probe WHERE tag LIKE %s", (role + "%",))}
    assert levels == {level}


def test_bookkeeping_keeps_its_settings_under_hostile_role_defaults(node: Any) -> None:
    """Role defaults that would change what the workers' own statements do reach the role's
    tasks, not the bookkeeping: with session_replication_role = replica (no ordinary trigger
    fires) a dependent is still released when its prerequisite finishes (the task table's
    AFTER UPDATE trigger fired for the finished mark), and no planner switch or timeout of
    the role keeps a claim or finish from working."""
    role = "hostile_defaults"
    make_role(node, role)
    for setting in (
        "session_replication_role = replica",
        "lock_timeout = '1ms'",
        "enable_indexscan = off",
        "enable_bitmapscan = off",
        "transform_null_equals = on",
        "plan_cache_mode = force_custom_plan",
    ):
        query(node, f"ALTER ROLE {role} SET {setting}")
    try:
        probe = (
            "INSERT INTO public.probe VALUES (%L, pg_backend_pid(), "
            "current_setting('session_replication_role'))"
        )
        first = int(
            query(
                node,
                "SELECT pg_background_enqueue(format(%s, 'hostile-1'), "
                "run_at => clock_timestamp() + interval '2 s') AS id",
                (probe,),
                user=role,
            )[0]["id"]
        )
        second = int(
            query(
                node,
                "SELECT pg_background_enqueue(format(%s, 'hostile-2'), "
                "after => ARRAY[%s]::bigint[]) AS id",
                (probe, first),
                user=role,
            )[0]["id"]
        )
        # the prerequisite is due in 2 s: the dependent waits for its end
        assert task(node, second)["state"] == "waiting"
        rows = wait_tasks(node, [first, second], timeout=60)
        assert [r["state"] for r in rows] == ["finished", "finished"], rows
        seen = {
            r["tag"]: r["v"]
            for r in query(node, "SELECT tag, v FROM probe WHERE tag LIKE 'hostile-%'")
        }
        assert seen == {"hostile-1": "replica", "hostile-2": "replica"}, seen
    finally:
        query(node, f"ALTER ROLE {role} RESET ALL")


def test_roles_and_session_objects_do_not_leak(node: Any) -> None:
    superuser_role(node, "statey")
    make_role(node, "someone")
    first = run_one(
        node,
        "SET SESSION AUTHORIZATION someone; SET ROLE someone; "
        "CREATE TEMP TABLE tmp_left (x int); PREPARE p_left AS SELECT 1; "
        "DECLARE c_left CURSOR WITH HOLD FOR SELECT 1; "
        "SELECT pg_advisory_lock(777); "
        "INSERT INTO public.probe VALUES ('statey-1', pg_backend_pid(), current_user)",
        "statey",
    )
    assert first["state"] == "finished", first["errors"]
    # the worker is idle now: its session locks are gone before any next task
    poll_until(
        lambda: scalar(node, "SELECT pg_try_advisory_lock(777)") is True,
        timeout=10,
        message="the task's advisory lock outlived the task",
    )
    second = run_one(
        node,
        "INSERT INTO public.probe SELECT 'statey-2', pg_backend_pid(), "
        "current_user || '/' || session_user || '/' || "
        "(SELECT count(*) FROM pg_prepared_statements) || '/' || "
        "(SELECT count(*) FROM pg_cursors) || '/' || "
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) "
        "|| '/' || coalesce(to_regclass('pg_temp.tmp_left')::text, 'none')",
        "statey",
    )
    assert second["state"] == "finished", second["errors"]
    rows = {r["tag"]: r for r in query(node, "SELECT * FROM probe WHERE tag LIKE 'statey%'")}
    assert rows["statey-1"]["pid"] == rows["statey-2"]["pid"], "one worker ran both"
    assert rows["statey-1"]["v"] == "someone"
    assert rows["statey-2"]["v"] == "statey/statey/0/0/0/none"


def test_error_while_recording_the_end_keeps_the_worker(node: Any) -> None:
    """The first attempt to record the failure fails (a trigger raises once); the worker logs
    it, records the task's own error on the next try, and stays."""
    make_role(node, "recorder")
    query(node, "CREATE SEQUENCE public.rec_fail_seq")
    query(
        node,
        "CREATE FUNCTION public.fail_record_once() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN "
        "  IF OLD.state = 'running' AND NEW.state IN ('failed', 'retrying') "
        "     AND NEW.topic = 'recfail' AND pg_catalog.nextval('public.rec_fail_seq') = 1 THEN "
        "    RAISE EXCEPTION 'bookkeeping hiccup'; "
        "  END IF; "
        "  RETURN NEW; "
        "END $$",
    )
    query(
        node,
        "CREATE TRIGGER fail_record_once BEFORE UPDATE ON pg_background_tasks "
        "FOR EACH ROW EXECUTE FUNCTION public.fail_record_once()",
    )
    try:
        pid_probe = "INSERT INTO public.probe VALUES ('recorder', pg_backend_pid(), '{}')"
        warm = run_one(node, pid_probe.format("warm"), "recorder")
        assert warm["state"] == "finished", warm["errors"]
        row = wait_tasks(
            node, [enqueue(node, "SELECT 1/0", "recfail", user="recorder")], timeout=60
        )[0]
        assert row["state"] == "failed"
        assert [e["sqlstate"] for e in row["error_history"]] == ["22012"], row["error_history"]
        assert scalar(node, "SELECT last_value FROM rec_fail_seq") >= 2, "the trigger fired"
        after = run_one(node, pid_probe.format("after"), "recorder")
        assert after["state"] == "finished", after["errors"]
        pids = {r["v"]: r["pid"] for r in query(node, "SELECT * FROM probe WHERE tag = 'recorder'")}
        assert pids["warm"] == pids["after"], "the worker survived"
    finally:
        query(node, "DROP TRIGGER fail_record_once ON pg_background_tasks")
