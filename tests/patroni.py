"""A real highly available PostgreSQL for the failover tests: etcd and three Patroni nodes of PostgreSQL 15 on
127.0.0.1, from Debian's packages (`patroni`, `etcd-server`), with `synchronous_mode: true`, so that a commit
the app waited for is on the synchronous standby too and Patroni promotes only that standby.

Everything runs below a folder of its own and is stopped by PID: the Patroni daemons, the postmasters they
started (read from each data folder's postmaster.pid) and etcd. Patroni and PostgreSQL run as the user
`postgres` when root runs the suite (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support import free_port
from uniquerand.bench.cluster import bin_folder

SCOPE = "uniquerand-test"
NODES = 3
# Patroni's smallest lease: the leader key expires this many seconds after its holder stopped renewing it.
TTL = 20


class PatroniError(RuntimeError):
    pass


def tools_present() -> bool:
    return shutil.which("patroni") is not None and shutil.which("etcd") is not None


class PatroniCluster:
    def __init__(self, base: Path) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="patroni-", dir=base))
        self.base.chmod(0o755)
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.nodes = [f"node{i}" for i in range(NODES)]
        self.pg_ports = {name: free_port() for name in self.nodes}
        self.api_ports = {name: free_port() for name in self.nodes}
        self._etcd: subprocess.Popen | None = None
        self._patroni: dict[str, subprocess.Popen] = {}

    # --- life cycle -------------------------------------------------------------------------------------------

    def start(self, timeout: float = 120) -> None:
        self._start_etcd()
        for name in self.nodes:
            self.start_node(name)
        self.wait_healthy(timeout)

    def start_node(self, name: str) -> None:
        folder = self.base / name
        folder.mkdir(exist_ok=True)
        config = folder / "patroni.yml"
        config.write_text(json.dumps(self._config(name), indent=1))  # YAML is a superset of JSON
        if os.geteuid() == 0:
            for path in (folder, config):
                shutil.chown(path, "postgres", "postgres")
        command = ["patroni", str(config)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        log = open(folder / "patroni.log", "ab")  # noqa: SIM115 (kept open by the child)
        self._patroni[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def stop(self) -> None:
        """Stops every process this cluster started, by PID, and removes its folder."""
        for name, process in self._patroni.items():
            _kill_group(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            postmaster = self.postmaster_pid(name)
            if postmaster is not None:
                _kill(postmaster)
        if self._etcd is not None:
            _kill(self._etcd.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._etcd.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    # --- what the tests do to it ------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        hosts = ",".join(f"127.0.0.1:{self.pg_ports[name]}" for name in self.nodes)
        return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write&connect_timeout=2"

    def members(self) -> list[dict]:
        for name in self.nodes:
            with contextlib.suppress(OSError, ValueError):
                return self._api(name, "/cluster")["members"]
        return []

    def leader(self) -> str | None:
        return next((m["name"] for m in self.members() if m["role"] == "leader" and m["state"] == "running"), None)

    def sync_standby(self) -> str | None:
        return next((m["name"] for m in self.members() if m["role"] == "sync_standby"), None)

    def wait_healthy(self, timeout: float = 120) -> str:
        """Waits for a running leader, a streaming synchronous standby and a streaming replica; the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = [name for name, process in self._patroni.items() if process.poll() is not None]
            if ended:
                raise PatroniError(f"Patroni of {ended} exited:\n{self.log_tail()}")
            members = self.members()
            roles = sorted(m["role"] for m in members if m["state"] in ("running", "streaming"))
            if roles == ["leader", "replica", "sync_standby"]:
                return self.leader() or ""
            time.sleep(0.5)
        raise PatroniError(f"the Patroni cluster is not healthy after {timeout} s: {self.members()}\n{self.log_tail()}")

    def wait_new_leader(self, old: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader != old:
                return leader
            time.sleep(0.2)
        raise PatroniError(f"no new leader after {timeout} s: {self.members()}\n{self.log_tail()}")

    def lose_host(self, name: str) -> None:
        """The host of node `name` gone at once: kill -9 of its Patroni and of its postmaster."""
        postmaster = self.postmaster_pid(name)
        _kill_group(self._patroni[name].pid)
        self._patroni[name].wait(10)
        if postmaster is not None:
            _kill(postmaster)

    def kill_postmaster(self, name: str) -> int:
        """kill -9 of node `name`'s postmaster (its Patroni stays): the killed PID."""
        postmaster = self.postmaster_pid(name)
        if postmaster is None:
            raise PatroniError(f"{name} has no postmaster")
        os.kill(postmaster, signal.SIGKILL)
        return postmaster

    def wait_restarted_leader(self, old: str, killed: int, timeout: float = 90) -> str:
        """After the leader's postmaster `killed` died: a running leader that is another node, or `old` with a
        new postmaster."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and (leader != old or self.postmaster_pid(old) not in (None, killed)):
                return leader
            time.sleep(0.2)
        raise PatroniError(f"no leader running again after {timeout} s: {self.members()}\n{self.log_tail()}")

    def revive(self) -> None:
        """Starts again the Patroni of every node whose host was lost (`lose_host`)."""
        for name, process in self._patroni.items():
            if process.poll() is not None:
                self.start_node(name)

    def switchover(self, leader: str, candidate: str) -> None:
        self._api(leader, "/switchover", {"leader": leader, "candidate": candidate})

    def set_synchronous_mode(self, on: bool) -> None:
        """Patroni's `synchronous_mode` in the cluster's shared configuration (PATCH /config)."""
        leader = self.leader() or self.nodes[0]
        self._api(leader, "/config", {"synchronous_mode": on}, method="PATCH")

    def postmaster_pid(self, name: str) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.base / name / "data" / "postmaster.pid").read_text().split()[0])
        return None

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for name in self.nodes:
            with contextlib.suppress(OSError):
                text = (self.base / name / "patroni.log").read_text(errors="replace").splitlines()
                tails.append(f"--- {name}\n" + "\n".join(text[-lines:]))
        return "\n".join(tails)

    # --- internals --------------------------------------------------------------------------------------------

    def _start_etcd(self) -> None:
        folder = self.base / "etcd"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        command = [
            "etcd",
            "--name=etcd0",
            f"--data-dir={folder}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=etcd0={peer}",
            # Patroni 3.0 talks to etcd 3.4 through its v2 API or the v3 gateway; the v3 one is used here.
            "--enable-v2=false",
        ]
        log = open(self.base / "etcd.log", "ab")  # noqa: SIM115
        self._etcd = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{client}/health", timeout=2) as response:
                if json.load(response).get("health") == "true":
                    return
            time.sleep(0.2)
        raise PatroniError("etcd did not start:\n" + (self.base / "etcd.log").read_text(errors="replace")[-2000:])

    def _config(self, name: str) -> dict:
        folder = self.base / name
        return {
            "scope": SCOPE,
            "name": name,
            "restapi": {
                "listen": f"127.0.0.1:{self.api_ports[name]}",
                "connect_address": f"127.0.0.1:{self.api_ports[name]}",
            },
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_port}"},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": 2,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 0,
                    # A commit the app waited for is on the synchronous standby; only that standby is promoted.
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"wal_log_hints": "on", "max_connections": 200, "shared_buffers": "64MB"},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"auth": "trust"}],
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication all 127.0.0.1/32 trust",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_ports[name]}",
                "connect_address": f"127.0.0.1:{self.pg_ports[name]}",
                "data_dir": str(folder / "data"),
                "bin_dir": str(bin_folder()),
                "pgpass": str(folder / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(folder)},
            },
        }

    def _api(self, name: str, path: str, body: dict | None = None, method: str | None = None):
        data = None if body is None else json.dumps(body).encode()
        url = f"http://127.0.0.1:{self.api_ports[name]}{path}"
        request = urllib.request.Request(url, data=data, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
        try:
            return json.loads(text)
        except ValueError:
            return text


def _kill_group(pid: int) -> None:
    """kill -9 of the session a daemon was started in (`runuser` and the Patroni it runs)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
