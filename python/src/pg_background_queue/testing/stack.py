"""The production stack on loopback: etcd, a Patroni cluster, PgBouncer (Debian's packages).

Everything runs as the current (unprivileged) OS user, under one temporary directory, on
ports reserved through testgres's port manager, and is torn down by :meth:`Stack.close`
(also on a failed start): Patroni is stopped with SIGTERM (it stops its PostgreSQL), then
anything left (Patroni, postmasters, etcd, PgBouncer) gets SIGKILL.

* :class:`Etcd`: one etcd 3.4 member (``/usr/bin/etcd``); :meth:`Etcd.pause` (SIGSTOP)
  cuts every Patroni node off from the DCS at once.
* :class:`PatroniCluster`: ``n`` Patroni 3.0 nodes (``/usr/bin/patroni``) on that etcd,
  the extension preloaded through Patroni's ``bootstrap.dcs`` parameters, ``use_pg_rewind``
  on, synchronous mode on (an acknowledged commit survives the loss of the leader), and
  ``primary_start_timeout: 0`` (a crashed leader fails over at once instead of restarting).
* :class:`TcpProxy`: each Patroni node reaches etcd through its own relay;
  ``node.dcs.cut()`` cuts that one node off from the DCS.
* :class:`PgBouncer`: PgBouncer 1.18 (``/usr/sbin/pgbouncer``) in front of any server, in
  ``transaction`` or ``session`` pooling mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pg_background_queue.testing.build import EXTENSION, bindir
from pg_background_queue.testing.cluster import (
    BASE_CONF,
    ConfValue,
    configure_testgres,
    poll_until,
)

ETCD = os.environ.get("PGBQ_ETCD", "/usr/bin/etcd")
PATRONI = os.environ.get("PGBQ_PATRONI", "/usr/bin/patroni")
PATRONICTL = os.environ.get("PGBQ_PATRONICTL", "/usr/bin/patronictl")
PGBOUNCER = os.environ.get("PGBQ_PGBOUNCER", "/usr/sbin/pgbouncer")

#: Patroni timing: the leader key lives ``ttl`` s; a leader that cannot renew it within
#: ``retry_timeout`` s demotes itself, well before the key expires and a replica may take it.
PATRONI_DCS: dict[str, Any] = {
    "ttl": 20,
    "loop_wait": 1,
    "retry_timeout": 5,
    "maximum_lag_on_failover": 1048576,
    "master_start_timeout": 0,
    "primary_start_timeout": 0,
    "synchronous_mode": True,
    # both replicas synchronous: a switchover may go to either, and an acknowledged commit
    # is on every replica that is up
    "synchronous_node_count": 2,
}
STOP_TIMEOUT = 30.0


def missing_tools() -> list[str]:
    """The stack's executables that are not installed (empty when all are)."""
    return [p for p in (ETCD, PATRONI, PATRONICTL, PGBOUNCER) if not os.access(p, os.X_OK)]


def _reserve_port() -> int:
    configure_testgres()
    from testgres.utils import reserve_port

    return int(reserve_port())


def _release_port(port: int) -> None:
    from testgres.utils import release_port

    with contextlib.suppress(Exception):
        release_port(port)


def _http_json(url: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    try:
        return json.loads(text)
    except ValueError:
        return text


def _terminate(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT)


def _kill_postmaster(data_dir: Path) -> None:
    """SIGKILL the postmaster of ``data_dir`` if one runs (cleanup after Patroni died)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@dataclass
class Etcd:
    """One etcd member on loopback (v3 API for Patroni)."""

    base: Path
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 60.0) -> None:
        self.client_port, self.peer_port = _reserve_port(), _reserve_port()
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            ETCD, "--name", "etcd0", "--data-dir", str(self.base / "etcd"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"etcd0={peer}", "--initial-cluster-state", "new",
            "--log-level", "warn",
        ]  # fmt: skip
        log = (self.base / "etcd.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        poll_until(self.healthy, timeout=timeout, interval=0.1, message="etcd healthy")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"etcd exited; see {self.base / 'etcd.log'}")
        try:
            return bool(_http_json(f"{self.url}/health", timeout=2).get("health") == "true")
        except (OSError, ValueError, AttributeError):
            return False

    def pause(self) -> None:
        """SIGSTOP: the DCS stops answering (connections hang, as on a network cut)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        _terminate(self.proc)
        for port in (self.client_port, self.peer_port):
            if port:
                _release_port(port)
        self.client_port = self.peer_port = 0


class TcpProxy:
    """A loopback TCP relay to ``target_port`` that can be cut (a network partition).

    :meth:`cut` closes the listening socket and every relayed connection, so the client sees
    resets and refused connections at once; :meth:`restore` listens again on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self.port = _reserve_port()
        self.restore()

    def restore(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut or closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self._server.close()
            self._server = None
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stop(self) -> None:
        self.cut()
        if self.port:
            _release_port(self.port)
            self.port = 0


@dataclass
class PatroniNode:
    """One Patroni-managed PostgreSQL server."""

    name: str
    base: Path
    pg_port: int
    api_port: int
    dcs: TcpProxy
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def config_file(self) -> Path:
        return self.base / "patroni.yml"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def conninfo(self, dbname: str = "postgres", **extra: Any) -> str:
        """psycopg 3 connection string of this node alone."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.pg_port, dbname=dbname, user="postgres", **extra
        )

    def start(self) -> None:
        log = (self.base / "patroni.log").open("ab")
        env = {**os.environ, "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen(
            [PATRONI, str(self.config_file)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        """Patroni's REST ``/patroni`` document (``{}`` when it does not answer)."""
        try:
            result = _http_json(f"{self.api}/patroni", timeout=2)
        except urllib.error.HTTPError as exc:  # 503 on a replica or a stopped server
            try:
                result = json.loads(exc.read().decode())
            except ValueError:
                return {}
        except (OSError, ValueError):
            return {}
        return result if isinstance(result, dict) else {}

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log(self) -> str:
        """Patroni's log followed by the server's log (for failure messages)."""
        parts = [(self.base / "patroni.log").read_text(errors="replace")]
        logs = sorted((self.data_dir / "log").glob("*.log")) if self.data_dir.exists() else []
        parts += [p.read_text(errors="replace") for p in logs]
        return "\n".join(parts)

    def stop(self) -> None:
        _terminate(self.proc)
        _kill_postmaster(self.data_dir)
        self.dcs.stop()


@dataclass
class PatroniCluster:
    """``size`` Patroni nodes sharing ``etcd``; the extension created once on the leader."""

    base: Path
    etcd: Etcd
    size: int = 3
    extra_conf: Mapping[str, ConfValue] = field(default_factory=dict)
    pg_config: str | None = None
    scope: str = "pgbq"
    nodes: list[PatroniNode] = field(default_factory=list)

    def start(self, timeout: float = 180.0) -> None:
        for i in range(self.size):
            dcs = TcpProxy(self.etcd.client_port)
            dcs.start()
            node = PatroniNode(
                f"node{i}", self.base / f"node{i}", _reserve_port(), _reserve_port(), dcs
            )
            node.base.mkdir(parents=True)
            node.base.chmod(0o700)
            node.config_file.write_text(json.dumps(self._config(node), indent=2))
            self.nodes.append(node)
        self.nodes[0].start()  # bootstraps: the others clone it
        leader = self.wait_leader(timeout=timeout)
        for node in self.nodes[1:]:
            node.start()
        self.wait_healthy(timeout=timeout)
        with psycopg.connect(leader.conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}")

    def _config(self, node: PatroniNode) -> dict[str, Any]:
        parameters: dict[str, Any] = {
            key: value for key, value in BASE_CONF.items() if key not in ("fsync",)
        }
        parameters.update(
            {
                "shared_preload_libraries": EXTENSION,
                "wal_log_hints": "on",
                "max_wal_senders": 10,
                "max_replication_slots": 10,
                "hot_standby": "on",
                "wal_keep_size": "128MB",
                "logging_collector": "on",
                "log_directory": "log",
                "log_filename": "postgresql.log",
                **self.extra_conf,
            }
        )
        local_parameters = {"unix_socket_directories": str(node.base)}
        return {
            "scope": self.scope,
            "namespace": "/pgbq/",
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            # each node reaches etcd through its own relay, which a test may cut;
            # use_proxies: no discovery of etcd's own addresses around the relay
            "etcd3": {
                "hosts": [f"127.0.0.1:{node.dcs.port}"],
                "protocol": "http",
                "use_proxies": True,
            },
            "bootstrap": {
                "dcs": {
                    **PATRONI_DCS,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": parameters,
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
                "pg_hba": [
                    "local all all trust",
                    "host replication all 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(bindir(self.pg_config)),
                "pgpass": str(node.base / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": local_parameters,
                "pg_hba": [
                    "local all all trust",
                    "host replication all 127.0.0.1/32 trust",
                    "host all all 127.0.0.1/32 trust",
                ],
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }

    # -- observation --------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's ``/cluster`` members as seen by any node that answers."""
        for node in self.nodes:
            if not node.running():
                continue
            try:
                result = _http_json(f"{node.api}/cluster", timeout=2)
            except (OSError, ValueError):
                continue
            if isinstance(result, dict):
                return list(result.get("members", []))
        return []

    def node(self, name: str) -> PatroniNode:
        return next(n for n in self.nodes if n.name == name)

    def leader(self) -> PatroniNode | None:
        """The node whose PostgreSQL is a running primary holding the leader key, if any."""
        for member in self.members():
            if member.get("role") == "leader" and member.get("state") == "running":
                node = self.node(member["name"])
                if node.status().get("role") in ("master", "primary"):
                    return node
        return None

    def wait_leader(self, timeout: float = 120.0, exclude: str | None = None) -> PatroniNode:
        """Poll until a leader (other than ``exclude``) runs as a primary; return it."""

        def found() -> PatroniNode | None:
            leader = self.leader()
            return leader if leader is not None and leader.name != exclude else None

        leader = poll_until(found, timeout=timeout, interval=0.2, message="a Patroni leader")
        assert leader is not None
        return leader

    def wait_healthy(self, timeout: float = 180.0) -> None:
        """Poll until every node runs: one leader, the others streaming replicas."""

        def healthy() -> bool:
            members = self.members()
            if len(members) != len(self.nodes):
                return False
            roles = sorted(m.get("role", "") for m in members)
            states = {m.get("state") for m in members}
            replicas_ok = all(
                m.get("lag") not in (None, "unknown") for m in members if m.get("role") != "leader"
            )
            return (
                roles.count("leader") == 1
                and states <= {"running", "streaming"}
                and replicas_ok
                and any(r in ("sync_standby", "synchronous_standby") for r in roles)
            )

        poll_until(healthy, timeout=timeout, interval=0.3, message="a healthy Patroni cluster")

    def wait_sync(self, names: list[str], timeout: float = 120.0) -> None:
        """Poll until every node of ``names`` is a synchronous standby."""

        def synced() -> bool:
            roles = {m.get("name"): m.get("role") for m in self.members()}
            return all(roles.get(n) in ("sync_standby", "synchronous_standby") for n in names)

        poll_until(synced, timeout=timeout, interval=0.3, message=f"{names} synchronous")

    def replicas(self) -> list[PatroniNode]:
        names = [m["name"] for m in self.members() if m.get("role") != "leader"]
        return [self.node(n) for n in names]

    def multihost_conninfo(self, dbname: str = "postgres", **extra: Any) -> str:
        """libpq multi-host string that always reaches the primary."""
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.pg_port) for n in self.nodes)
        return make_conninfo(
            "",
            host=hosts,
            port=ports,
            dbname=dbname,
            user="postgres",
            target_session_attrs="read-write",
            connect_timeout=3,
            **extra,
        )

    # -- actions --------------------------------------------------------------------------

    def patronictl(self, *args: str, timeout: float = 120.0) -> str:
        """Run ``patronictl -c <node0 config> <args>``; return its output (raise on failure)."""
        argv = [PATRONICTL, "-c", str(self.nodes[0].config_file), *args]
        env = {**os.environ, "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def switchover(self, leader: str, candidate: str) -> None:
        """``patronictl switchover --leader L --candidate C --force``."""
        self.patronictl(
            "switchover", self.scope, "--leader", leader, "--candidate", candidate, "--force"
        )

    def logs(self) -> str:
        return "\n".join(f"===== {n.name} =====\n{n.log()}" for n in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            node.stop()
            for port in (node.pg_port, node.api_port):
                _release_port(port)


@dataclass
class PgBouncer:
    """PgBouncer on loopback in front of ``host:port`` (every database, user postgres)."""

    base: Path
    host: str
    port: int
    pool_mode: str = "transaction"
    pool_size: int = 2
    listen_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.listen_port = _reserve_port()
        users = self.base / "users.txt"
        users.write_text('"postgres" ""\n')
        ini = self.base / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host={self.host} port={self.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.listen_port}\n"
            f"unix_socket_dir = {self.base}\n"
            "auth_type = trust\n"
            f"auth_file = {users}\n"
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 200\n"
            "admin_users = postgres\n"
            "server_reset_query = DISCARD ALL\n"
            f"logfile = {self.base / 'pgbouncer.log'}\n"
            f"pidfile = {self.base / 'pgbouncer.pid'}\n"
        )
        self.proc = subprocess.Popen(
            [PGBOUNCER, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        poll_until(
            self._answers, timeout=timeout, interval=0.1, message=f"pgbouncer ({self.pool_mode})"
        )

    def _answers(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited; see {self.base / 'pgbouncer.log'}")
        try:
            with psycopg.connect(self.conninfo(), autocommit=True, connect_timeout=2) as conn:
                conn.execute("SELECT 1", prepare=False)
        except psycopg.OperationalError:
            return False
        return True

    def conninfo(self, dbname: str = "postgres") -> str:
        """psycopg 3 connection string of ``dbname`` through PgBouncer."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.listen_port, dbname=dbname, user="postgres"
        )

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run a PgBouncer console command (``SHOW POOLS``, ...) through the admin database."""
        with psycopg.connect(self.conninfo("pgbouncer"), autocommit=True) as conn:
            cur = conn.execute(command, prepare=False)
            return cur.fetchall() if cur.description else []

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        _terminate(self.proc, timeout=10.0)
        if self.listen_port:
            _release_port(self.listen_port)
            self.listen_port = 0


class Stack:
    """A temporary directory and everything started in it; :meth:`close` removes it all."""

    def __init__(self, prefix: str = "pgbq-stack-") -> None:
        configure_testgres()
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.etcd: Etcd | None = None
        self.patroni: PatroniCluster | None = None
        self.bouncers: list[PgBouncer] = []

    def start_patroni(
        self,
        size: int = 3,
        extra_conf: Mapping[str, ConfValue] | None = None,
        pg_config: str | None = None,
    ) -> PatroniCluster:
        """Start etcd and a ``size``-node Patroni cluster; return it once healthy."""
        self.etcd = Etcd(self.base)
        self.etcd.start()
        self.patroni = PatroniCluster(self.base, self.etcd, size, dict(extra_conf or {}), pg_config)
        self.patroni.start()
        return self.patroni

    def start_pgbouncer(
        self, host: str, port: int, pool_mode: str, pool_size: int = 2
    ) -> PgBouncer:
        """Start a PgBouncer in ``pool_mode`` in front of ``host:port`` (``pool_size`` servers)."""
        base = self.base / f"pgbouncer-{len(self.bouncers)}"
        bouncer = PgBouncer(base, host, port, pool_mode, pool_size)
        self.bouncers.append(bouncer)
        bouncer.start()
        return bouncer

    def logs(self) -> str:
        parts = [self.patroni.logs()] if self.patroni is not None else []
        parts += [f"===== pgbouncer {b.pool_mode} =====\n{b.log()}" for b in self.bouncers]
        return "\n".join(parts)

    def close(self) -> None:
        errors: list[BaseException] = []
        for step in (
            *(b.stop for b in self.bouncers),
            *([self.patroni.stop] if self.patroni else []),
            *([self.etcd.stop] if self.etcd else []),
        ):
            try:
                step()
            except Exception as exc:  # stop the rest anyway
                errors.append(exc)
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
