"""A two-node Ray cluster on one machine, started with `ray start` the way an operator would.

Each node is its own `ray start --block` process group with its own temp dir and ports, so the
cluster never collides with another Ray instance on the machine, and a node can be killed whole
(raylet, its workers and agents: SIGKILL to the node's process group), as when a machine is lost.
Used by tests/test_ray_cluster.py and benchmarks/bench_ray_cluster.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(head: bool) -> list[str]:
    """Every port a node opens, chosen free, so nothing defaults to Ray's well-known ports."""
    low = free_port()
    while low > 60000:
        low = free_port()
    names = ["--node-manager-port", "--object-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port"]
    if head:
        names.append("--ray-client-server-port")
    args = []
    for name in names:
        args += [name, str(free_port())]
    # worker ports: a block of 40 above a free port (the range is checked when a worker binds)
    return args + ["--min-worker-port", str(low), "--max-worker-port", str(low + 40)]


def node_env(extra: dict | None = None) -> dict:
    """The environment a node's workers inherit: offline Ray, the repository importable."""
    return dict(os.environ, **(extra or {}), RAY_AUTH_MODE="disabled", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")


class Node:
    def __init__(self, name: str, proc: subprocess.Popen, temp_dir: Path):
        self.name, self.proc, self.temp_dir = name, proc, temp_dir

    def kill(self) -> None:
        """SIGKILL the whole node at once: `ray start`, its process group (raylet, agents) and every
        descendant (the raylet's worker processes, which leave the group)."""
        import psutil

        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class LocalCluster:
    """`with LocalCluster(head_cpus=1, worker_cpus=1) as cluster:` a head and a worker node on this
    machine; `cluster.address` for `--ray-address`; `cluster.worker.kill()` loses the worker node."""

    def __init__(self, head_cpus: int = 1, worker_cpus: int = 1, object_store_bytes: int = 80 << 20,
                 env: dict | None = None):
        self.head_cpus, self.worker_cpus, self.object_store_bytes = head_cpus, worker_cpus, object_store_bytes
        self.env = dict(env or {})  # extra variables for both nodes (their workers inherit them)
        self.root = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))  # short: Ray's Unix sockets live under it
        self.nodes: list[Node] = []
        self.address = ""

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = self.root / name
        temp_dir.mkdir()
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen([RAY, "start", "--block", "--temp-dir", str(temp_dir), "--include-log-monitor", "false",
                                 "--object-store-memory", str(self.object_store_bytes), "--disable-usage-stats", *args],
                                env=node_env(self.env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
        node = Node(name, proc, temp_dir)
        self.nodes.append(node)
        return node

    def __enter__(self) -> "LocalCluster":
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        try:
            self.head = self._start("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                             "--include-dashboard", "false", "--num-cpus", str(self.head_cpus),
                                             "--resources", json.dumps({"node_head": 1}), *_ports(True)])
            self._wait_nodes(1)
            self.worker = self._start("worker", ["--address", self.address, "--node-ip-address", "127.0.0.1",
                                                 "--num-cpus", str(self.worker_cpus),
                                                 "--resources", json.dumps({"node_b": 1}), *_ports(False)])
            self._wait_nodes(2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_nodes(self, n: int, timeout: float = 120) -> None:
        """Until `ray status` at this address counts n alive nodes (each node started and registered)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray node {node.name} exited: {(self.root / f'{node.name}.log').read_text()[-2000:]}")
            out = subprocess.run([RAY, "status", "--address", self.address], env=node_env(), capture_output=True, text=True)
            if out.returncode == 0 and len(re.findall(r"^\s*1 node_[0-9a-f]{16,}$", out.stdout, re.M)) >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {n} nodes in {timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        for node in reversed(self.nodes):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
