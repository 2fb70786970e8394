"""A throwaway three-node RabbitMQ cluster on spare ports, for the failover faults.

Each node has its own name (`mbf<random>-<n>@localhost`), AMQP and distribution ports,
data folder, config and env file under a temporary folder, and the nodes share an
Erlang cookie through a HOME of their own. Nodes 2 and 3 `join_cluster` node 1. The
shared broker on 5672 is never touched; `stop()` stops every node and removes its files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    home: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, cookie_home: Path) -> dict[str, str]:
        conf, env_file = self.home / "rabbitmq.conf", self.home / "rabbitmq-env.conf"
        return {
            **os.environ,
            "HOME": str(cookie_home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_CONFIG_FILE": str(conf.with_suffix("")),
            "RABBITMQ_CONF_ENV_FILE": str(env_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.home / "node.pid"),
        }


class Cluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.cookie_home = root / "home"
        tag = f"mbf{secrets.token_hex(3)}"
        self.nodes = [
            Node(f"{tag}-{i}@localhost", free_port(), free_port(), root / f"node{i}") for i in range(1, size + 1)
        ]

    def url(self, first: Node | None = None) -> str:
        """One URL naming every node, `first` (by default the first node) first: a client
        connects to it, and fails over to the others in turn."""
        at = self.nodes.index(first) if first is not None else 0
        order = self.nodes[at:] + self.nodes[:at]
        return f"amqp://guest:guest@{','.join(n.address for n in order)}/"

    def start(self) -> None:
        self.cookie_home.mkdir(parents=True)
        cookie = self.cookie_home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o600)
        for node in self.nodes:
            node.home.mkdir(parents=True)
            (node.home / "rabbitmq.conf").write_text(
                f"listeners.tcp.local = 127.0.0.1:{node.port}\nloopback_users = none\n"
            )
            (node.home / "rabbitmq-env.conf").write_text("")
            (node.home / "enabled_plugins").write_text("[].\n")
        for node in self.nodes:
            self.start_node(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")

    def start_node(self, node: Node) -> None:
        subprocess.run([SERVER, "-detached"], env=node.env(self.cookie_home), check=True, timeout=60)
        deadline = time.monotonic() + 180
        while True:  # the node takes a moment to register before await_startup can reach it
            try:
                self.ctl(node, "await_startup", timeout=180)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop_node(self, node: Node) -> None:
        """Stop the whole node (its Erlang VM), as a shutdown would."""
        self.ctl(node, "stop", timeout=120)

    def kill_node(self, node: Node) -> None:
        """`kill -9` the node's Erlang VM, as a crash would: no goodbye to clients or peers."""
        pid = _pid(node)
        assert pid is not None, f"no pid file for {node.name}"
        os.kill(pid, 9)
        assert _wait_gone(pid, 30), f"{node.name} (pid {pid}) still runs after kill -9"

    def running(self, node: Node) -> bool:
        try:
            self.ctl(node, "status", timeout=30)
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return True

    def restart_stopped(self) -> None:
        """Start again every node that is not running (a test stopped or killed it)."""
        for node in self.nodes:
            if not self.running(node):
                self.start_node(node)

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [CTL, "-n", node.name, "-q", *args],
            env=node.env(self.cookie_home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def leader(self, queue: str) -> Node:
        """The node leading the quorum queue `queue`."""
        for node in self.nodes:
            try:
                listed = self.ctl(node, "list_queues", "name", "leader", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            for line in listed.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return next(n for n in self.nodes if n.name == parts[1])
        raise RuntimeError(f"no node knows the leader of {queue}")

    def queue_status(self, queue: str) -> list[str]:
        """[name, leader, members, online members] of a quorum queue, as a running node sees it."""
        for node in self.nodes:
            try:
                listed = self.ctl(node, "list_queues", "name", "leader", "members", "online", timeout=30)
            except (RuntimeError, subprocess.TimeoutExpired):
                continue
            for line in listed.splitlines():
                fields = line.split("\t")
                if fields[0] == queue:
                    return fields
        return [queue, "not listed"]

    def all_online(self, queue: str) -> bool:
        """Every member of the quorum queue is online (caught up), so one may stop."""
        status = self.queue_status(queue)
        return len(status) == 4 and status[2].count("@") == status[3].count("@") == len(self.nodes)

    def stop(self) -> None:
        """Stop every node that still runs, then remove the cluster's files."""
        for node in self.nodes:
            try:
                self.ctl(node, "stop", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self._kill_leftover(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftover(self, node: Node) -> None:
        pid = _pid(node)
        if pid is not None and not _wait_gone(pid, 10):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def _pid(node: Node) -> int | None:
    """The OS process id of the node's Erlang VM, from its pid file."""
    try:
        return int((node.home / "node.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_gone(pid: int, timeout: float) -> bool:
    """True once process `pid` has exited (within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
