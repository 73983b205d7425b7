"""Security matrix on a real cluster: who may do what to whose tasks.

Roles: ``su`` (the bootstrap superuser), ``a`` and ``b`` (granted with
``pg_background_queue_grant_usage``), ``c`` (LOGIN, never granted).

* ``SESSION_MATRIX``: what each role can do from its own session to the queue, to another
  role's tasks (its "victim": a's tasks for su, b and c; b's tasks for a), to the tables, the
  admin functions and the extension's parameters.  Each cell runs in a transaction that is
  rolled back, so a permitted cell changes nothing.
* ``TASK_MATRIX``: what SQL run as a task of ``a`` can do (escape its role, touch b's
  tasks, escalate, run commit-time code, use another role's SECURITY DEFINER function).
* Throughout, ``a`` has planted shadows of functions and operators the extension's
  bookkeeping uses (``now``, ``pg_has_role``, ``format``, ``make_interval``,
  ``jsonb_build_array``, ``=``, ``<>``, ``||``) in its schema ``evil``, first on its
  search_path (``ALTER ROLE a SET search_path``): they log every call with the caller's
  identity, so the suite checks that none ever runs as anyone but ``a``, and that the
  bookkeeping of a's tasks, b's tasks and the superuser's tasks stays right.

Expected values: an SQLSTATE (five characters) for an error, ``OK`` for "no error", or the
value of the first column of the last statement's first row.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from core_helpers import connect, query, scalar, wait_tasks
from pg_background_queue import Client, WaitTimeout
from pg_background_queue.testing.cluster import PollTimeout, destroy_node, make_node, poll_until

OK = "OK"


@dataclass(frozen=True)
class Err:
    """An error with this SQLSTATE."""

    sqlstate: str

    def __repr__(self) -> str:
        return f"ERROR {self.sqlstate}"


ROLES = ("su", "a", "b", "c")
USER = {"su": None, "a": "a", "b": "b", "c": "c"}
FAR = "2999-01-01 00:00:00+00"

TOPICS = {
    "short": {"timeout_in_sec": 1},
    "a-retry": {"retry_count": 1},
    "b-long": {"timeout_in_sec": 0},
}

SETUP_SU = """
CREATE ROLE a LOGIN;
CREATE ROLE b LOGIN;
CREATE ROLE c LOGIN;
SELECT pg_background_queue_grant_usage('a');
SELECT pg_background_queue_grant_usage('b');
GRANT CREATE ON SCHEMA public TO b;
CREATE SCHEMA evil AUTHORIZATION a;
CREATE TABLE public.results (tag text, val text);
GRANT SELECT, INSERT ON public.results TO PUBLIC;
CREATE TABLE public.b_private (note text);
ALTER TABLE public.b_private OWNER TO b;
-- lets a cell ask, inside its own (later rolled back) transaction, whether a task still exists
CREATE FUNCTION public.su_task_exists(bigint) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ SELECT EXISTS (SELECT 1 FROM public.pg_background_tasks WHERE id = $1) $$;
-- a leaky, very cheap WHERE clause: row level security must filter before it runs
CREATE FUNCTION public.leak(t text, secret text) RETURNS boolean
    LANGUAGE plpgsql COST 0.0000001
    AS $$ BEGIN
        IF t LIKE '%' || secret || '%' THEN
            RAISE EXCEPTION 'leaked: %', t USING ERRCODE = 'P0001';
        END IF;
        RETURN true;
    END $$;
"""

SETUP_B = """
CREATE FUNCTION public.b_sd_write(note text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ BEGIN
        INSERT INTO public.b_private VALUES (note);
        RETURN current_user || '/' || session_user;
    END $$;
CREATE FUNCTION public.b_sd_escalate() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ BEGIN EXECUTE 'ALTER ROLE a SUPERUSER'; END $$;
CREATE FUNCTION public.b_sd_set_role() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$;
REVOKE ALL ON FUNCTION public.b_sd_write(text), public.b_sd_escalate(), public.b_sd_set_role()
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.b_sd_write(text), public.b_sd_escalate(),
    public.b_sd_set_role() TO a;
"""

# Run as a: shadows of what the extension's bookkeeping calls.  Each logs its caller; the
# dishonest ones would visibly break the bookkeeping if it ever called them.
SETUP_A = """
CREATE TABLE evil.calls (fn text, cur text, sess text);
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT INSERT, SELECT ON evil.calls TO PUBLIC;
CREATE FUNCTION evil.log(fn text) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO evil.calls VALUES (fn, current_user, session_user) $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('now');
                RETURN pg_catalog.now() OPERATOR(pg_catalog.-) interval '100 years'; END $$;
CREATE FUNCTION evil.pg_has_role(oid, regrole, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('pg_has_role/3'); RETURN true; END $$;
CREATE FUNCTION evil.pg_has_role(regrole, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('pg_has_role/2'); RETURN true; END $$;
CREATE FUNCTION evil.format(text, regrole) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('format'); RETURN 'ALTER ROLE a SUPERUSER'; END $$;
CREATE FUNCTION evil.make_interval(secs integer) RETURNS interval LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('make_interval'); RETURN interval '100 years'; END $$;
CREATE FUNCTION evil.jsonb_build_array(jsonb) RETURNS jsonb LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('jsonb_build_array'); RETURN '[]'; END $$;
CREATE FUNCTION evil.regrole_eq_oid(regrole, oid) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('=(regrole,oid)'); RETURN true; END $$;
CREATE OPERATOR evil.= (LEFTARG = regrole, RIGHTARG = oid, FUNCTION = evil.regrole_eq_oid);
CREATE FUNCTION evil.text_ne(text, text) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('<>(text,text)'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.text_ne);
CREATE FUNCTION evil.jsonb_cat(jsonb, jsonb) RETURNS jsonb LANGUAGE plpgsql
    AS $$ BEGIN PERFORM evil.log('||(jsonb,jsonb)'); RETURN $1; END $$;
CREATE OPERATOR evil.|| (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = evil.jsonb_cat);
-- commit-time code of a's own: a deferred constraint trigger and a holdable cursor
CREATE FUNCTION evil.who() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN
        INSERT INTO public.results VALUES (TG_ARGV[0], current_user || '/' || session_user);
        RETURN NULL;
    END $$;
CREATE FUNCTION evil.who_fn(tag text) RETURNS integer LANGUAGE sql
    AS $$ INSERT INTO public.results VALUES (tag, current_user || '/' || session_user)
          RETURNING 1 $$;
CREATE TABLE evil.deferred (x integer);
CREATE CONSTRAINT TRIGGER deferred_who AFTER INSERT ON evil.deferred
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION evil.who('deferred');
ALTER ROLE a SET search_path = evil, pg_catalog, public;
"""


@dataclass
class Env:
    node: Any
    ids: dict[str, int] = field(default_factory=dict)
    b_worker: int = 0
    started: Any = None

    def victim(self, role: str) -> str:
        return "b" if role == "a" else "a"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    node = make_node(
        extra_conf={
            "pg_background_queue.max_parallel_running_tasks_count": 6,
            "pg_background_queue.timeout_in_sec": 10,
            "pg_background_queue.topic_config": TOPICS,
        }
    )
    try:
        for script, user in ((SETUP_SU, None), (SETUP_B, "b"), (SETUP_A, "a")):
            with connect(node, user=user) as conn:
                conn.execute(script)
        e = Env(node, started=scalar(node, "SELECT pg_postmaster_start_time()"))

        def enq(user: str | None, sql: str, topic: str | None = None, run_at: Any = None) -> int:
            return int(
                scalar(
                    node,
                    "SELECT pg_background_enqueue(%s, %s, NULL, %s)",
                    (sql, topic, run_at),
                    user=user,
                )
            )

        # victims: pending far in the future, and cancelled (retry-able)
        e.ids["a"] = enq("a", "SELECT 'A-SECRET'", "a-secret", FAR)
        e.ids["b"] = enq("b", "SELECT 'B-SECRET'", "b-secret", FAR)
        for role in ("a", "b"):
            victim = enq(role, f"SELECT '{role}-cancelled'", f"{role}-secret", FAR)
            scalar(node, "SELECT pg_background_cancel(%s)", (victim,), user=role)
            e.ids[f"{role}_cancelled"] = victim
        # a long task of b, to see (or not) its worker and its SQL text
        e.ids["b_long"] = enq("b", "SELECT pg_sleep(120) -- B-LONG", "b-long")
        e.b_worker = poll_until(
            lambda: scalar(
                node,
                "SELECT worker_pid FROM pg_background_tasks WHERE id = %s AND state = 'running'",
                (e.ids["b_long"],),
            ),
            timeout=30,
            message="b's long task running",
        )
        for role in ("a", "b"):
            state = scalar(node, "SELECT state::text FROM pg_background_tasks WHERE id = %s",
                           (e.ids[f"{role}_cancelled"],))  # fmt: skip
            assert state == "cancelled"
        yield e
        scalar(node, "SELECT pg_background_cancel(%s)", (e.ids["b_long"],), user="b")
    finally:
        destroy_node(node)


# --------------------------------------------------------------------------------------
# Session matrix: action -> (statements, {role: expected})
#   {victim} = id of a pending task of the victim role, {victim_cancelled} = a cancelled
#   one, {victim_role}, {victim_secret}, {b_worker} = pid of b's busy worker.
#   Statements run in one transaction, rolled back afterwards, unless marked autocommit.
# --------------------------------------------------------------------------------------

DENIED = Err("42501")
CANT_CHANGE_NOW = Err("55P02")
ADMIN_ONLY = {"su": OK, "a": DENIED, "b": DENIED, "c": DENIED}

SESSION_MATRIX: dict[str, tuple[list[str], dict[str, Any]]] = {
    # the user API
    "enqueue": (
        [f"SELECT pg_background_enqueue('SELECT 1', run_at => '{FAR}') > 0"],
        {"su": True, "a": True, "b": True, "c": DENIED},
    ),
    "enqueue_many": (
        ["SELECT count(*) FROM pg_background_enqueue_many("
         f"ARRAY['SELECT 1', 'SELECT 2'], run_at => '{FAR}')"],
        {"su": 2, "a": 2, "b": 2, "c": DENIED},
    ),
    "read other's task": (
        ["SELECT count(*) FROM pg_background_tasks WHERE id = {victim}"],
        {"su": 1, "a": 0, "b": 0, "c": DENIED},
    ),
    "read other's SQL through a leaky WHERE": (
        ["SELECT count(*) >= 0 FROM pg_background_tasks "
         "WHERE public.leak(sql_statement, '{victim_secret}')"],
        {"su": Err("P0001"), "a": True, "b": True, "c": DENIED},
    ),
    "read other's task with row_security off": (
        ["SET LOCAL row_security = off", "SELECT count(*) FROM pg_background_tasks"],
        {"su": OK, "a": DENIED, "b": DENIED, "c": DENIED},
    ),
    "cancel other's task": (
        ["SELECT pg_background_cancel({victim})"],
        {"su": True, "a": False, "b": False, "c": DENIED},
    ),
    "retry other's task": (
        ["SELECT pg_background_retry({victim_cancelled})"],
        {"su": True, "a": False, "b": False, "c": DENIED},
    ),
    "purge keeps other's tasks": (
        ["SELECT pg_background_queue_purge('0')",
         "SELECT public.su_task_exists({victim_cancelled})"],
        {"su": False, "a": True, "b": True, "c": DENIED},
    ),
    "other's topic in pg_background_queue_topics": (
        ["SELECT count(*) FROM pg_background_queue_topics WHERE topic = 'b-secret'"],
        {"su": 1, "a": 0, "b": 1, "c": DENIED},
    ),
    "other's topic in pg_background_queue_task_stats": (
        ["SELECT count(*) FROM pg_background_queue_task_stats WHERE topic = 'b-secret'"],
        {"su": 2, "a": 0, "b": 2, "c": DENIED},
    ),
    "b's worker in pg_background_queue_workers": (
        ["SELECT count(*) FROM pg_background_queue_workers WHERE pid = {b_worker}"],
        {"su": 1, "a": 0, "b": 1, "c": DENIED},
    ),
    "b's worker through _pg_background_queue_workers()": (
        ["SELECT count(*) FROM _pg_background_queue_workers() WHERE pid = {b_worker}"],
        {"su": 1, "a": 0, "b": 1, "c": DENIED},
    ),
    "functions behind the views (topic config, configured and paused topics)": (
        [
            "SELECT count(*) FROM pg_background_queue_topic_config('b-secret'), "
            "_pg_background_queue_configured_topics(), _pg_background_queue_paused_topics()"
        ],
        {"su": 0, "a": 0, "b": 0, "c": DENIED},
    ),
    "pause / resume a topic": (
        [
            "SELECT pg_background_queue_pause('matrix-never')",
            "SELECT pg_background_queue_resume('matrix-never')",
        ],
        {"su": True, "a": DENIED, "b": DENIED, "c": DENIED},
    ),
    "b's running SQL in pg_stat_activity": (
        ["SELECT query FROM pg_stat_activity WHERE pid = {b_worker}"],
        {"su": "SELECT pg_sleep(120) -- B-LONG", "a": "<insufficient privilege>",
         "b": "SELECT pg_sleep(120) -- B-LONG", "c": "<insufficient privilege>"},
    ),
    "cancel b's worker (pg_cancel_backend)": (
        ["SELECT pg_cancel_backend({b_worker})"],
        {"a": DENIED, "c": DENIED},  # su and b may (it would interrupt the task)
    ),
    "terminate b's worker (pg_terminate_backend)": (
        ["SELECT pg_terminate_backend({b_worker})"],
        {"a": DENIED, "c": DENIED},
    ),
    "forge NOTIFY pg_background_queue": (  # PostgreSQL has no NOTIFY privilege
        ["NOTIFY pg_background_queue, '{victim} finished'"],
        {"su": OK, "a": OK, "b": OK, "c": OK},
    ),
    # direct writes
    "INSERT pg_background_tasks": (
        ["INSERT INTO pg_background_tasks (sql_statement, owner, priority) "
         "VALUES ('ALTER ROLE c SUPERUSER', 'postgres', 0)"],
        ADMIN_ONLY,
    ),
    "UPDATE pg_background_tasks": (
        ["UPDATE pg_background_tasks SET sql_statement = 'SELECT 666' WHERE id = {victim}"],
        ADMIN_ONLY,
    ),
    "DELETE pg_background_tasks": (
        ["DELETE FROM pg_background_tasks WHERE id = {victim}"], ADMIN_ONLY,
    ),
    "TRUNCATE pg_background_tasks": (["TRUNCATE pg_background_tasks"], ADMIN_ONLY),
    "SELECT FOR UPDATE pg_background_tasks": (
        ["SELECT count(*) FROM (SELECT id FROM pg_background_tasks FOR KEY SHARE) s"],
        ADMIN_ONLY,
    ),
    "LOCK pg_background_tasks EXCLUSIVE": (
        ["LOCK TABLE pg_background_tasks IN EXCLUSIVE MODE"], ADMIN_ONLY,
    ),
    "nextval of the id sequence": (["SELECT nextval('pg_background_tasks_id_seq')"], ADMIN_ONLY),
    "INSERT pg_background_queue_stats": (
        ["INSERT INTO pg_background_queue_stats (day, owner, state) "
         "VALUES (now(), 'a', 'finished')"],
        ADMIN_ONLY,
    ),
    "UPDATE pg_background_queue_stats": (
        ["UPDATE pg_background_queue_stats SET tasks = 0"], ADMIN_ONLY,
    ),
    "DELETE pg_background_queue_stats": (["DELETE FROM pg_background_queue_stats"], ADMIN_ONLY),
    "TRUNCATE pg_background_queue_stats": (["TRUNCATE pg_background_queue_stats"], ADMIN_ONLY),
    "disable row level security": (
        ["ALTER TABLE pg_background_tasks DISABLE ROW LEVEL SECURITY"], ADMIN_ONLY,
    ),
    "DROP EXTENSION": (
        ["DROP EXTENSION pg_background_queue"],
        {"a": DENIED, "b": DENIED, "c": DENIED},  # su may (not exercised here)
    ),
    # administration
    "pg_background_queue_calibrate_workers_count()": (
        ["SELECT pg_background_queue_calibrate_workers_count() >= 0"],
        {"su": True, "a": DENIED, "b": DENIED, "c": DENIED},
    ),
    "pg_background_queue_ensure_workers()": (
        ["SELECT pg_background_queue_ensure_workers()"], ADMIN_ONLY,
    ),
    "pg_background_queue_active_workers_count()": (
        ["SELECT pg_background_queue_active_workers_count() >= 1"],
        {"su": True, "a": DENIED, "b": DENIED, "c": DENIED},
    ),
    "pg_background_queue_grant_usage('c')": (
        ["SELECT pg_background_queue_grant_usage('c')"], ADMIN_ONLY,
    ),
    "_pg_background_queue_prune()": (
        ["SELECT _pg_background_queue_prune('-infinity', NULL, 10)"],
        {"su": 0, "a": DENIED, "b": DENIED, "c": DENIED},
    ),
    # the extension's parameters: all PGC_SIGHUP except strict_topics (PGC_SUSET)
    "SET a reload-only parameter": (
        ["SET pg_background_queue.timeout_in_sec = 0"],
        dict.fromkeys(ROLES, CANT_CHANGE_NOW),
    ),
    "SET strict_topics": (["SET LOCAL pg_background_queue.strict_topics = off"], ADMIN_ONLY),
    "set_config(strict_topics)": (
        ["SELECT set_config('pg_background_queue.strict_topics', 'off', true)"],
        {"su": "off", "a": DENIED, "b": DENIED, "c": DENIED},
    ),
    "SET an unknown pg_background_queue.* name": (
        ["SET pg_background_queue.no_such_setting = 1"], dict.fromkeys(ROLES, Err("42602")),
    ),
    "ALTER SYSTEM SET (autocommit)": (
        ["ALTER SYSTEM SET pg_background_queue.retry_count = 3"], ADMIN_ONLY,
    ),
    "ALTER ROLE self SET a reload-only parameter": (
        ["ALTER ROLE CURRENT_USER SET pg_background_queue.retry_count = 3"],
        dict.fromkeys(ROLES, CANT_CHANGE_NOW),
    ),
    "ALTER ROLE self SET strict_topics": (
        ["ALTER ROLE CURRENT_USER SET pg_background_queue.strict_topics = off"], ADMIN_ONLY,
    ),
    "ALTER ROLE other SET strict_topics": (
        ["ALTER ROLE {victim_role} SET pg_background_queue.strict_topics = off"], ADMIN_ONLY,
    ),
    "ALTER DATABASE SET strict_topics": (
        ["ALTER DATABASE postgres SET pg_background_queue.strict_topics = off"], ADMIN_ONLY,
    ),
}  # fmt: skip


def run_cell(env: Env, role: str, statements: list[str], autocommit: bool) -> Any:
    """Run the statements as role; Err(SQLSTATE) of the error, or the last result."""
    victim = env.victim(role)
    values = {
        "victim": env.ids[victim],
        "victim_cancelled": env.ids[f"{victim}_cancelled"],
        "victim_role": victim,
        "victim_secret": f"{victim.upper()}-SECRET",
        "b_worker": env.b_worker,
    }
    result: Any = OK
    with connect(env.node, user=USER[role], autocommit=autocommit) as conn:
        try:
            for statement in statements:
                cur = conn.execute(statement.format(**values))
                if cur.description:
                    row = cur.fetchone()
                    result = next(iter(row.values())) if row else None
        except psycopg.Error as exc:
            return Err(exc.sqlstate or "no SQLSTATE")
        finally:
            if not autocommit:
                conn.rollback()
        if autocommit and role == "su":  # the only autocommit cell is ALTER SYSTEM
            conn.execute("ALTER SYSTEM RESET pg_background_queue.retry_count")
    return result


@pytest.mark.parametrize(
    ("action", "role", "expected"),
    [
        pytest.param(action, role, expected, id=f"{role}: {action}")
        for action, (_, cells) in SESSION_MATRIX.items()
        for role, expected in cells.items()
    ],
)
def test_session_matrix(env: Env, action: str, role: str, expected: Any) -> None:
    statements = SESSION_MATRIX[action][0]
    got = run_cell(env, role, statements, autocommit="(autocommit)" in action)
    if expected is OK:
        assert not isinstance(got, Err), f"{role}: {action} -> {got!r}"
    else:
        assert got == expected, f"{role}: {action} -> {got!r}, expected {expected!r}"


# --------------------------------------------------------------------------------------
# Task matrix: SQL run as a task of a -> ("failed", SQLSTATE) or ("finished", tag, value):
# a finished task must have left (tag, value) in public.results.
# --------------------------------------------------------------------------------------

def results_row(tag: str, expr: str) -> str:
    return f"INSERT INTO public.results SELECT '{tag}', ({expr})::text"


F_DENIED = ("failed", "42501")
TASK_MATRIX: dict[str, tuple[str, tuple[str, ...]]] = {
    # climbing out of its role
    "SET ROLE b (not a member)": ("SET ROLE b", F_DENIED),
    "SET ROLE postgres": ("SET ROLE postgres", F_DENIED),
    "SET SESSION AUTHORIZATION postgres": (
        "SET SESSION AUTHORIZATION postgres", F_DENIED,
    ),
    "set_config('role', 'postgres')": (
        "SELECT set_config('role', 'postgres', false)", F_DENIED,
    ),
    "RESET ROLE / SESSION AUTHORIZATION stay a": (
        "RESET ROLE; RESET SESSION AUTHORIZATION; "
        + results_row("reset", "current_user || '/' || session_user"),
        ("finished", "reset", "a/a"),
    ),
    # b's rows
    "read b's tasks": (
        results_row("read_b", "SELECT count(*) FROM pg_background_tasks "
                              "WHERE owner::text = 'b'"),
        ("finished", "read_b", "0"),
    ),
    "read b's SQL through a leaky WHERE": (
        results_row("leak_b", "SELECT count(*) >= 0 FROM pg_background_tasks "
                              "WHERE public.leak(sql_statement, 'B-' || 'SECRET')"),
        ("finished", "leak_b", "true"),
    ),
    "UPDATE b's task": (
        "UPDATE pg_background_tasks SET sql_statement = 'SELECT 666' "
        "WHERE owner::text = 'b'", F_DENIED,
    ),
    "DELETE b's task": (
        "DELETE FROM pg_background_tasks WHERE owner::text = 'b'", F_DENIED,
    ),
    "INSERT a task owned by postgres": (
        "INSERT INTO pg_background_tasks (sql_statement, owner, priority) "
        "VALUES ('ALTER ROLE a SUPERUSER', 'postgres', 0)", F_DENIED,
    ),
    "TRUNCATE pg_background_tasks": ("TRUNCATE pg_background_tasks", F_DENIED),
    "SELECT FOR UPDATE pg_background_tasks": (
        "SELECT id FROM pg_background_tasks FOR UPDATE", F_DENIED,
    ),
    "row_security off": (
        "SET row_security = off; SELECT count(*) FROM pg_background_tasks",
        F_DENIED,
    ),
    "CREATE POLICY on pg_background_tasks": (
        "CREATE POLICY p ON pg_background_tasks USING (true)", F_DENIED,
    ),
    "CREATE TRIGGER on pg_background_tasks": (
        "CREATE TRIGGER t AFTER UPDATE ON pg_background_tasks "
        "FOR EACH ROW EXECUTE FUNCTION evil.who('trg')", F_DENIED,
    ),
    "cancel b's task": (
        results_row("cancel_b", "SELECT pg_background_cancel({b})"),
        ("finished", "cancel_b", "false"),
    ),
    "retry b's cancelled task": (
        results_row("retry_b", "SELECT pg_background_retry({b_cancelled})"),
        ("finished", "retry_b", "false"),
    ),
    "terminate b's worker": ("SELECT pg_terminate_backend({b_worker})", F_DENIED),
    "b's running SQL in pg_stat_activity": (
        results_row("stat_b", "SELECT query FROM pg_stat_activity WHERE pid = {b_worker}"),
        ("finished", "stat_b", "<insufficient privilege>"),
    ),
    # escalation
    "ALTER ROLE a SUPERUSER": ("ALTER ROLE a SUPERUSER", F_DENIED),
    "CREATE ROLE ... SUPERUSER": ("CREATE ROLE mallory SUPERUSER", F_DENIED),
    "GRANT b TO a": ("GRANT b TO a", F_DENIED),
    "COPY TO PROGRAM": (
        "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pgbq_pwned'", F_DENIED,
    ),
    "COPY FROM a server file": ("COPY public.results FROM '/etc/passwd'", F_DENIED),
    "pg_read_file": ("SELECT pg_read_file('postgresql.conf')", F_DENIED),
    "lo_import (server side)": ("SELECT lo_import('/etc/passwd')", F_DENIED),
    "ALTER SYSTEM": (
        "ALTER SYSTEM SET pg_background_queue.retry_count = 5", F_DENIED,
    ),
    "SET a reload-only parameter": (
        "SET pg_background_queue.timeout_in_sec = 0", ("failed", "55P02"),
    ),
    "SET strict_topics": ("SET pg_background_queue.strict_topics = off", F_DENIED),
    "pg_background_queue_ensure_workers()": (
        "SELECT pg_background_queue_ensure_workers()", F_DENIED,
    ),
    "pg_background_queue_calibrate_workers_count()": (
        "SELECT pg_background_queue_calibrate_workers_count()", F_DENIED,
    ),
    "pg_background_queue_active_workers_count()": (
        "SELECT pg_background_queue_active_workers_count()", F_DENIED,
    ),
    "pg_background_queue_grant_usage('c')": (
        "SELECT pg_background_queue_grant_usage('c')", F_DENIED,
    ),
    "_pg_background_queue_prune()": (
        "SELECT _pg_background_queue_prune('infinity', NULL, 1000)", F_DENIED,
    ),
    # another role's SECURITY DEFINER functions: that owner's rights, nothing more
    "b's SECURITY DEFINER function writes b's table": (
        results_row("sd_b", "SELECT public.b_sd_write('via a')"),
        ("finished", "sd_b", "b/a"),
    ),
    "b's table directly": ("INSERT INTO public.b_private VALUES ('x')", F_DENIED),
    "b's SECURITY DEFINER function escalates": (
        "SELECT public.b_sd_escalate()", F_DENIED,
    ),
    "SET ROLE inside b's SECURITY DEFINER function": (
        "SELECT public.b_sd_set_role()", F_DENIED,
    ),
    # code of a that runs at commit, after the finish mark was written as the table owner
    "deferred constraint trigger": (
        "INSERT INTO evil.deferred VALUES (1)", ("finished", "deferred", "a/a"),
    ),
    "holdable cursor materialized at commit": (
        "DECLARE hc CURSOR WITH HOLD FOR SELECT evil.who_fn('holdcur')",
        ("finished", "holdcur", "a/a"),
    ),
    # shadowing and session tricks
    "a's search_path reaches its tasks": (
        results_row("shadow_now", "now() < pg_catalog.now() - interval '50 years'"),
        ("finished", "shadow_now", "true"),
    ),
    "temp tables named like the queue's": (
        "CREATE TEMP TABLE pg_background_tasks (id bigint, state text); "
        "CREATE TEMP TABLE pg_background_queue_stats (x int)",
        ("finished",),
    ),
    "SET search_path to a's schema only": ("SET search_path = evil", ("finished",)),
    "read-only transaction": ("SET transaction_read_only = on", ("finished",)),
}  # fmt: skip


@pytest.fixture(scope="module")
def task_outcomes(env: Env) -> dict[str, dict[str, Any]]:
    """Enqueue every TASK_MATRIX cell as a (plus b and superuser controls), wait for all."""
    b_worker = scalar(env.node, "SELECT worker_pid FROM pg_background_tasks WHERE id = %s",
                      (env.ids["b_long"],))  # fmt: skip
    values = {"b": env.ids["b"], "b_cancelled": env.ids["b_cancelled"], "b_worker": b_worker}
    names = list(TASK_MATRIX)
    sqls = [TASK_MATRIX[n][0].format(**values) for n in names]
    with connect(env.node, user="a") as conn:
        ids = [r["pg_background_enqueue_many"] for r in conn.execute(
            "SELECT pg_background_enqueue_many(%s)", (sqls,)).fetchall()]  # fmt: skip
        retry = conn.execute("SELECT pg_background_enqueue('SELECT 1/0', 'a-retry')").fetchone()
    controls = {
        "b": [int(scalar(env.node, "SELECT pg_background_enqueue(%s)",
                         (results_row(f"b_as_{i}", "current_user"),), user="b"))
              for i in range(4)],
        "su": [int(scalar(env.node, "SELECT pg_background_enqueue(%s)",
                          (results_row("su_as", "current_user"),)))],
    }  # fmt: skip
    assert retry is not None
    retry_id = int(retry["pg_background_enqueue"])
    every = [*ids, retry_id, *controls["b"], *controls["su"]]
    rows = {r["id"]: r for r in wait_tasks(env.node, every, timeout=60)}
    out = {name: rows[i] for name, i in zip(names, ids, strict=True)}
    out["_retry"] = rows[retry_id]
    out["_controls"] = {role: [rows[i] for i in c] for role, c in controls.items()}
    return out


@pytest.mark.parametrize("cell", list(TASK_MATRIX), ids=[f"a task: {n}" for n in TASK_MATRIX])
def test_task_matrix(env: Env, task_outcomes: dict[str, Any], cell: str) -> None:
    row = task_outcomes[cell]
    expected = TASK_MATRIX[cell][1]
    history = row["error_history"]
    assert row["state"] == expected[0], (row["state"], history)
    assert str(row["owner"]) == "a"
    assert row["closed_at"] is not None
    if expected[0] == "failed":
        assert [h["sqlstate"] for h in history] == [expected[1]], history
        assert row["errors"] == history[-1]["message"]
    else:
        assert history == []
    if len(expected) == 3:
        got = query(env.node, "SELECT val FROM public.results WHERE tag = %s", (expected[1],))
        assert [r["val"] for r in got] == [expected[2]]


def test_no_escalation_happened(env: Env, task_outcomes: dict[str, Any]) -> None:
    assert scalar(env.node, "SELECT rolsuper FROM pg_roles WHERE rolname = 'a'") is False
    assert scalar(env.node, "SELECT count(*) FROM pg_roles WHERE rolname = 'mallory'") == 0
    assert scalar(env.node, "SELECT count(*) FROM pg_auth_members "
                            "WHERE member = 'a'::regrole") == 0  # fmt: skip
    assert query(env.node, "SELECT note FROM public.b_private") == [{"note": "via a"}]
    assert scalar(env.node, "SELECT pg_postmaster_start_time()") == env.started


def test_victims_untouched(env: Env, task_outcomes: dict[str, Any]) -> None:
    rows = query(env.node, "SELECT id, state::text, sql_statement FROM pg_background_tasks "
                           "WHERE id = ANY(%s) ORDER BY id",
                 ([env.ids[k] for k in ("a", "b", "a_cancelled", "b_cancelled")],))  # fmt: skip
    assert [(r["state"], r["sql_statement"]) for r in rows] == [
        ("pending", "SELECT 'A-SECRET'"),
        ("pending", "SELECT 'B-SECRET'"),
        ("cancelled", "SELECT 'a-cancelled'"),
        ("cancelled", "SELECT 'b-cancelled'"),
    ]
    assert scalar(env.node, "SELECT state::text FROM pg_background_tasks WHERE id = %s",
                  (env.ids["b_long"],)) == "running"  # fmt: skip


def test_planted_shadows_never_run_for_anyone_but_a(
    env: Env, task_outcomes: dict[str, Any]
) -> None:
    """a's shadows ran (in a's own sessions and tasks), always as a; bookkeeping is right."""
    calls = query(env.node, "SELECT fn, cur, sess, count(*) AS n FROM evil.calls "
                            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")  # fmt: skip
    assert {(c["cur"], c["sess"]) for c in calls} == {("a", "a")}, calls
    assert "now" in {c["fn"] for c in calls}  # the positive control did see them
    # b's and the superuser's tasks ran as themselves, each once
    got = query(env.node, "SELECT tag, val FROM public.results WHERE tag LIKE 'b\\_as\\_%' "
                          "OR tag = 'su_as' ORDER BY tag")  # fmt: skip
    assert [(r["tag"], r["val"]) for r in got] == [
        ("b_as_0", "b"), ("b_as_1", "b"), ("b_as_2", "b"), ("b_as_3", "b"), ("su_as", "postgres")
    ]
    for row in task_outcomes["_controls"]["b"] + task_outcomes["_controls"]["su"]:
        assert row["state"] == "finished"
    # a's failing task with one retry: 2^1 s backoff, both errors kept
    retry = task_outcomes["_retry"]
    assert retry["state"] == "failed"
    assert [h["sqlstate"] for h in retry["error_history"]] == ["22012", "22012"]
    assert retry["retry_count"] == 1
    backoff = scalar(env.node, "SELECT extract(epoch FROM (error_history->1->>'at')::timestamptz"
                               " - (error_history->0->>'at')::timestamptz) FROM pg_background_tasks"
                               " WHERE id = %s", (retry["id"],))  # fmt: skip
    assert 2 <= backoff < 10, backoff


def test_superuser_with_a_planted_search_path(env: Env, task_outcomes: dict[str, Any]) -> None:
    """A superuser whose search_path puts a's schema first still runs nothing of a's through
    the extension's functions (grant_usage would run a's format() as ALTER ROLE a SUPERUSER)."""
    before = scalar(env.node, "SELECT count(*) FROM evil.calls")
    with connect(env.node, autocommit=False) as conn:
        conn.execute("SET search_path = evil, pg_catalog, public")
        task_id = conn.execute(
            "SELECT pg_background_enqueue('SELECT 1', 'su-shadow', run_at => %s) AS id", (FAR,)
        ).fetchone()["id"]  # type: ignore[index]
        conn.execute("SELECT pg_background_cancel(%s)", (task_id,))
        conn.execute("SELECT pg_background_retry(%s)", (task_id,))
        conn.execute("SELECT pg_background_cancel(%s)", (task_id,))
        conn.execute("SELECT pg_background_queue_purge('0')")
        conn.execute("SELECT pg_background_queue_grant_usage('c')")
        conn.execute("SELECT pg_background_queue_ensure_workers()")
        conn.execute("SELECT pg_background_queue_calibrate_workers_count()")
        conn.execute("SELECT _pg_background_queue_prune('infinity', NULL, 0)")
        conn.execute("SELECT count(*) FROM pg_background_queue_topics")
        conn.execute("SELECT count(*) FROM pg_background_queue_task_stats")
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'a'").fetchone() == {
            "rolsuper": False
        }
        calls = conn.execute("SELECT count(*) AS n FROM evil.calls").fetchone()
        conn.rollback()
    assert calls == {"n": before}


# --------------------------------------------------------------------------------------
# A task must not escape the queue's control by catching the interrupt it is sent.
# --------------------------------------------------------------------------------------

def swallower(seconds: float, tag: str) -> str:
    """A task that catches every query cancel and keeps running for `seconds`."""
    return (
        "DO $$ DECLARE t0 timestamptz := clock_timestamp(); n int := 0; BEGIN "
        f"WHILE clock_timestamp() < t0 + interval '{seconds} s' LOOP "
        "BEGIN PERFORM pg_sleep(0.05); EXCEPTION WHEN query_canceled THEN n := n + 1; END; "
        f"END LOOP; INSERT INTO public.results VALUES ('{tag}', n::text); END $$"
    )


@pytest.fixture(scope="module")
def swallowers(env: Env, task_outcomes: dict[str, Any]) -> dict[str, Any]:
    """Three swallowing tasks of a: one hits its 1 s topic timeout, one is cancelled and one
    has its worker terminated while running."""
    node = env.node
    ids = {
        "timeout": int(scalar(node, "SELECT pg_background_enqueue(%s, 'short')",
                              (swallower(4, "swallow_timeout"),), user="a")),
        "cancel": int(scalar(node, "SELECT pg_background_enqueue(%s)",
                             (swallower(4, "swallow_cancel"),), user="a")),
        "terminate": int(scalar(node, "SELECT pg_background_enqueue(%s)",
                                (swallower(4, "swallow_terminate"),), user="a")),
    }  # fmt: skip
    def running() -> dict[int, int] | None:
        rows = query(
            node,
            "SELECT id, worker_pid FROM pg_background_tasks "
            "WHERE id = ANY(%s) AND state = 'running' AND worker_pid IS NOT NULL",
            (list(ids.values()),),
        )
        return {r["id"]: r["worker_pid"] for r in rows} if len(rows) == 3 else None

    pid = poll_until(running, timeout=30, message="three swallowing tasks running")
    assert scalar(node, "SELECT pg_background_cancel(%s)", (ids["cancel"],), user="a") is True
    t0 = time.monotonic()
    assert scalar(node, "SELECT pg_terminate_backend(%s)", (pid[ids["terminate"]],)) is True
    victim = pid[ids["terminate"]]
    gone = poll_until(
        lambda: scalar(node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s", (victim,)),
        timeout=30,
    )
    exit_seconds = time.monotonic() - t0
    rows = {r["id"]: r for r in wait_tasks(node, [ids["timeout"], ids["cancel"]], timeout=30)}
    return {"timeout": rows[ids["timeout"]], "cancel": rows[ids["cancel"]],
            "terminate_exit_seconds": exit_seconds if gone else None}  # fmt: skip


def test_task_cannot_swallow_its_timeout(swallowers: dict[str, Any]) -> None:
    row = swallowers["timeout"]
    assert (row["state"], [h["sqlstate"] for h in row["error_history"]]) == ("failed", ["57014"])


def test_task_cannot_swallow_its_cancel(swallowers: dict[str, Any]) -> None:
    assert swallowers["cancel"]["state"] == "cancelled"


def test_task_cannot_swallow_pg_terminate_backend(swallowers: dict[str, Any]) -> None:
    assert swallowers["terminate_exit_seconds"] < 2


def test_task_cannot_delay_a_fast_shutdown(make_cluster: Any) -> None:
    node = make_cluster()
    query(node, "CREATE ROLE a LOGIN")
    query(node, "CREATE TABLE public.results (tag text, val text)")
    query(node, "GRANT INSERT ON public.results TO a")
    query(node, "SELECT pg_background_queue_grant_usage('a')")
    task_id = scalar(node, "SELECT pg_background_enqueue(%s)",
                     (swallower(6, "swallow_shutdown"),), user="a")  # fmt: skip
    state = "SELECT state::text FROM pg_background_tasks WHERE id = %s"
    poll_until(lambda: scalar(node, state, (task_id,)) == "running", timeout=30)
    t0 = time.monotonic()
    subprocess.run(
        [f"{node.bin_dir}/pg_ctl", "-D", node.data_dir, "stop", "-m", "fast", "-t", "60"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert time.monotonic() - t0 < 4


def test_forged_notification_does_not_end_a_wait(env: Env) -> None:
    task_id = int(scalar(env.node, "SELECT pg_background_enqueue('SELECT 1', run_at => %s)",
                         (FAR,), user="a"))  # fmt: skip

    def forge() -> None:
        time.sleep(0.5)
        query(env.node, f"NOTIFY pg_background_queue, '{task_id} finished'", user="c")

    forger = threading.Thread(target=forge)
    with Client(f"host={env.node.host} port={env.node.port} dbname=postgres user=a",
                poll_interval=30) as client:  # fmt: skip
        forger.start()
        try:
            with pytest.raises(WaitTimeout):
                client.wait([task_id], timeout=3)
        finally:
            forger.join()


RUNNING_VICTIM = (
    "SELECT worker_pid, started_at, attempts FROM pg_background_tasks "
    "WHERE id = %s AND state = 'running'"
)


def running_victim(node: Any) -> tuple[int, list[dict[str, Any]]]:
    """A long task of b, once running: its id and its running row (pid, start, attempts)."""
    victim = int(scalar(node, "SELECT pg_background_enqueue('SELECT pg_sleep(20) -- victim', "
                              "'b-long')", user="b"))  # fmt: skip
    before = poll_until(lambda: query(node, RUNNING_VICTIM, (victim,)), timeout=30)
    return victim, before


def test_drop_extension_by_a_non_owner_disturbs_no_one(env: Env) -> None:
    node = env.node
    victim, before = running_victim(node)
    with connect(node, user="a", autocommit=False) as holder:
        holder.execute("SELECT count(*) FROM pg_background_tasks")  # ACCESS SHARE, held
        with connect(node, user="c") as c:
            c.execute("SET lock_timeout = '2s'")
            try:
                c.execute("DROP EXTENSION pg_background_queue")
                got = "no error"
            except psycopg.Error as exc:
                got = exc.sqlstate or "no SQLSTATE"
        holder.rollback()
    after = query(node, RUNNING_VICTIM, (victim,))
    scalar(node, "SELECT pg_background_cancel(%s)", (victim,), user="b")
    assert (got, after) == ("42501", before)


def test_drop_database_by_a_non_owner_disturbs_no_one(env: Env) -> None:
    node = env.node
    victim, before = running_victim(node)
    with connect(node, user="c", dbname="template1") as c:
        try:
            c.execute("DROP DATABASE postgres")
            got = "no error"
        except psycopg.Error as exc:
            got = exc.sqlstate or "no SQLSTATE"

    def changed() -> tuple[Any] | None:
        now = query(node, RUNNING_VICTIM, (victim,))
        return (now,) if now != before else None

    try:  # watch for 2 s: a SIGTERMed worker gives its task back within milliseconds
        (after,) = poll_until(changed, timeout=2)
    except PollTimeout:
        after = before
    scalar(node, "SELECT pg_background_cancel(%s)", (victim,), user="b")
    assert (got, after) == ("42501", before)
