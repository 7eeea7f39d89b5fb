"""A multi-node Ray cluster on 127.0.0.1, one ``ray start --block`` process tree per node.

Every node is started as a user would start it on its own machine (``ray start --head`` /
``ray start --address``), with ports chosen free at start time (the machine may run other Ray
clusters) and a Ray temporary directory of its own, as if it had its own disk. Nodes sharing
one temporary directory would share ``session_*/runtime_resources``: each node's runtime-env
agent unpacks a job's working directory there, so a worker node setting up the package deletes
and re-creates the directory that the job's driver on the head runs in (the driver then fails
with ``FileNotFoundError`` from ``os.getcwd()``, or an MKL "Cannot load libtorch_cpu.so").

``ray stop`` cannot stop one of these nodes: it kills every Ray process on the machine, other
clusters included (the test session's own ``ray_local`` among them). A node is stopped here by
freezing and killing its process tree instead — the ``ray start`` process, its raylet, agents,
and the worker processes the raylet forked (they run in sessions of their own, so a process
group kill would miss them). That is what a node sees when its machine disappears.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
HEAD_PORT_OPTIONS = (
    "--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
    "--node-manager-port", "--object-manager-port",
)
WORKER_PORT_OPTIONS = HEAD_PORT_OPTIONS[3:]
STARTED = "Ray runtime started"
#: GCS settings (environment of ``ray start --head``): a node whose raylet stopped answering is
#: declared dead after 3 failed health checks 1 s apart instead of Ray's default 5 checks 3 s
#: apart. Each check keeps Ray's 10 s timeout, so a busy but live raylet is not declared dead.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports of 127.0.0.1 that are free now."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def node_env() -> dict[str, str]:
    """Environment of the ``ray start`` processes and of the job CLI.

    The venv's ``bin`` comes first on ``PATH``, so that ``python`` in a job's entrypoint is the
    interpreter running the tests (on a real cluster: the image's).
    """
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class Node:
    """One ``ray start --block`` process and its log file.

    Attributes
    ----------
    name : str
        Label used in logs and errors (``head``, ``worker1`` ...).
    process : subprocess.Popen
        The ``ray start --block`` process; the node's processes are its descendants.
    log : Path
        Its stdout and stderr.
    """

    name: str
    process: subprocess.Popen
    log: Path

    def processes(self) -> list[psutil.Process]:
        """The node's live processes: ``ray start``, raylet, agents, Ray workers."""
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def find(self, proctitle: str) -> psutil.Process | None:
        """A process of this node with ``proctitle`` in its command line, or None.

        Ray workers set their title to ``ray::<actor or task>``, e.g.
        ``ray::MapWorker(MapBatches(ImageMapActor))``.
        """
        for proc in self.processes():
            try:
                if proctitle in " ".join(proc.cmdline()):
                    return proc
            except psutil.Error:
                continue
        return None

    def kill(self) -> None:
        """Stop the node abruptly, as if its machine had gone away; leaves no process behind.

        Every process of the tree is suspended first (so that none forks a new worker
        after the tree was listed), then all are killed together.
        """
        frozen: dict[int, psutil.Process] = {}
        while True:
            new = [p for p in self.processes() if p.pid not in frozen]
            if not new:
                break
            for proc in new:
                frozen[proc.pid] = proc
                try:
                    proc.suspend()
                except psutil.NoSuchProcess:
                    pass
        for proc in frozen.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(list(frozen.values()), timeout=30)
        self.process.wait(timeout=30)
        if alive:
            raise RuntimeError(f"{self.name}: processes survived SIGKILL: {alive}")


@dataclass
class LoopbackCluster:
    """A head node and worker nodes on 127.0.0.1, each a separate ``ray start`` process.

    Parameters
    ----------
    temp_dir : Path
        Parent of each node's Ray temporary directory (keep it short: socket paths live there).
    log_dir : Path
        Where each node's ``ray start`` output goes.
    """

    temp_dir: Path
    log_dir: Path
    env: dict[str, str] = field(default_factory=node_env)
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int | None = None
    dashboard_port: int | None = None

    @property
    def address(self) -> str:
        """The GCS address workers join (``127.0.0.1:PORT``)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The job-submission address (``http://127.0.0.1:PORT``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start_head(self, num_cpus: int, timeout_s: float = 120) -> Node:
        """Start the head node (GCS, dashboard and job server, Ray client server)."""
        ports = dict(zip(HEAD_PORT_OPTIONS, free_ports(len(HEAD_PORT_OPTIONS)), strict=True))
        node = self._start(
            "head",
            ["--head", f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1",
             *[f"{option}={port}" for option, port in ports.items()]],
            {**self.env, **FAST_FAILURE_DETECTION},
            timeout_s,
        )
        self.gcs_port, self.dashboard_port = ports["--port"], ports["--dashboard-port"]
        return node

    def add_worker(self, name: str, num_cpus: int, num_gpus: int,
                   resources: dict[str, float] | None = None, timeout_s: float = 120) -> Node:
        """Start a worker node joining the head; ``resources``: custom resources it advertises."""
        if self.gcs_port is None:
            raise RuntimeError("start the head first")
        ports = free_ports(len(WORKER_PORT_OPTIONS))
        options = [f"--address={self.address}", f"--num-cpus={num_cpus}",
                   f"--num-gpus={num_gpus}",
                   *[f"{o}={p}" for o, p in zip(WORKER_PORT_OPTIONS, ports, strict=True)]]
        if resources:
            options.append(f"--resources={json.dumps(resources)}")
        return self._start(name, options, self.env, timeout_s)

    def _start(self, name: str, options: list[str], env: dict[str, str],
               timeout_s: float, attempts: int = 2) -> Node:
        """Run ``ray start --block`` until it reports the node up.

        On a busy machine a raylet can miss the 30 s Ray gives it to register with the GCS and
        ``ray start`` gives up; the start is then tried once more.
        """
        for attempt in range(attempts):
            log = self.log_dir / f"{name}.{attempt}.log"
            node_temp_dir = tempfile.mkdtemp(dir=self.temp_dir)
            with open(log, "w") as out:
                process = subprocess.Popen(
                    [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1",
                     f"--temp-dir={node_temp_dir}", "--object-store-memory=200000000",
                     "--disable-usage-stats", "--include-log-monitor=false", *options],
                    env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True, cwd=self.log_dir,
                )
            node = Node(name, process, log)
            self.nodes.append(node)
            deadline = time.monotonic() + timeout_s
            while STARTED not in log.read_text():
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            else:
                return node
            node.kill()
            self.nodes.remove(node)
        raise RuntimeError(f"`ray start` of {name} failed {attempts} times; last output:\n"
                           f"{log.read_text()[-4000:]}")

    def job(self, entrypoint: list[str], *, cwd: Path, runtime_env: Path | None = None,
            timeout_s: float = 300, background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
        """``ray job submit`` an entrypoint and wait for it (or return the running CLI).

        A submission made right after the head started can find the head's job agent not yet
        registered; it is answered "No available agent" and tried again.
        """
        command = [str(RAY), "job", "submit", "--address", self.dashboard_url]
        if runtime_env is not None:
            command += ["--runtime-env", str(runtime_env)]
        command += ["--", *entrypoint]
        if background:
            return subprocess.Popen(command, cwd=cwd, env=self.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        for _ in range(5):
            done = subprocess.run(command, cwd=cwd, env=self.env, capture_output=True,
                                  text=True, timeout=timeout_s)
            if "No available agent" not in done.stdout + done.stderr:
                break
        return done

    def shutdown(self) -> None:
        """Kill every node (workers first), check that none survives, delete the temp dir."""
        errors = []
        for node in reversed(self.nodes):
            try:
                node.kill()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        leftovers = [p for p in psutil.process_iter(["cmdline"])
                     if str(self.temp_dir) in " ".join(p.info["cmdline"] or [])]
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if errors or leftovers:
            raise RuntimeError(f"cluster processes survived: {errors} {leftovers}")


def make_cluster(log_dir: Path) -> LoopbackCluster:
    """An empty :class:`LoopbackCluster` with a fresh short temp dir under ``/tmp``."""
    temp_dir = Path(tempfile.mkdtemp(prefix="nm-mn-", dir="/tmp"))
    return LoopbackCluster(temp_dir=temp_dir, log_dir=log_dir)
