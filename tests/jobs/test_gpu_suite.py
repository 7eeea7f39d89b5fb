"""The prepared GPU benchmark suite, dry-run at toy size on the CPU so that it cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.ray  # its scoring and DRaFT parts start Ray


def test_gpu_suite_tiny_writes_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--tiny", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["tiny"] is True
    assert set(suite["parts"]) == {"encoders", "score", "guidance", "draft", "vertex",
                                   "tribe_protocols"}
    for name, part in suite["parts"].items():
        assert part["exit"] == 0 and part["seconds"] <= part["cap_s"], name
    score = json.loads((tmp_path / "score_throughput.json").read_text())
    assert {"bare", "ray_1"} <= set(score["runs"])
    assert score["runs"]["ray_1"]["steady"]["n_batches"] >= 0  # figures from actor batch times
    protocols = json.loads((tmp_path / "tribe_protocols.json").read_text())
    assert {row["protocol"] for row in protocols["results"]} == {"paper", "static", "fast"}
    for name in ("encoders", "guidance", "draft", "vertex_corr"):
        assert json.loads((tmp_path / f"{name}.json").read_text()), name


def test_gpu_suite_refuses_unknown_options():
    done = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--fast"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --fast" in done.stderr
