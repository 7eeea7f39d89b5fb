"""`ray job submit --working-dir . -- python -m pipelines.score ...` against a real `ray start --head`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import psutil

from neuromem.data import synthetic
from neuromem.scoring.table import open_table, read_metadata

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT_OPTIONS = (
    "--port", "--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
    "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
    "--object-manager-port", "--ray-client-server-port",
)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free now (the machine is shared: never Ray's defaults)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def stop_head(head: subprocess.Popen) -> None:
    """Stop this test's head: the `ray start --block` process group, and nothing else."""
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == head.pid]
    os.killpg(head.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(group, timeout=30)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=30)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_ray_job_submit_against_a_head(tmp_path):
    root, out = tmp_path / "lamem", tmp_path / "scores"
    synthetic.write_lamem(root, n_images=12, seed=4, image_size=48)
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="nm-ray-", dir="/tmp")  # short: Ray's socket paths
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
         f"--temp-dir={temp_dir}", *[f"{option}={port}" for option, port in ports.items()]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, cwd=tmp_path,
    )
    try:
        for line in head.stdout:
            if "Ray runtime started" in line:
                break
        address = f"http://127.0.0.1:{ports['--dashboard-port']}"
        command = [
            str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--",
            "python", "-m", "pipelines.score", "--dataset", "lamem", "--root", str(root),
            "--out", str(out), "--encoder", "clip-probe:tiny", "--batch-size", "4",
            "--no-progress",
        ]
        for _ in range(10):  # the job agent registers a few seconds after the head starts
            job = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=300)
            if "No available agent" not in job.stdout + job.stderr:
                break
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        assert "scored 12 rows, 0 errors" in job.stdout
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    frame = open_table(out).to_table(columns=["image_id", "roi_FFA"]).to_pandas()
    assert len(frame) == 12 and frame["image_id"].is_unique
    assert read_metadata(out)["command"].endswith("--no-progress")
