"""The cluster configs pass Ray's own validation and describe the nodes they claim to."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]


def _accelerators(resources: dict) -> dict[str, float]:
    return {k.split(":", 1)[1]: v for k, v in resources.items() if k.startswith("accelerator_type:")}


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_ray_validation(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    prepared = prepare_config(config)  # merges the provider's defaults.yaml, as `ray up` does
    validate_config(prepared)  # Ray's JSON schema and cross-field checks
    types = prepared["available_node_types"]
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_types) >= 2
    assert any(t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0
               for n, t in types.items() if n != prepared["head_node_type"])  # CPU decode nodes
    kinds = set()
    for node_type in gpu_types.values():
        acc = _accelerators(node_type["resources"])
        assert len(acc) == 1, "each GPU node type advertises exactly one accelerator type"
        (kind, count), = acc.items()
        assert count == node_type["resources"]["GPU"]
        assert node_type["min_workers"] <= node_type["max_workers"]
        kinds.add(kind)
    assert len(kinds) == len(gpu_types)
    assert any("neuromem" in cmd for cmd in prepared["setup_commands"])
    assert prepared["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")


def test_gcp_gpu_resources_match_attached_accelerators():
    types = yaml.safe_load((CLUSTER / "gcp.yaml").read_text())["available_node_types"]
    counts_per_machine = {"a3-highgpu-8g": 8}  # A3 machines come with their GPUs attached
    for node_type in types.values():
        gpus = node_type["resources"].get("GPU", 0)
        attached = node_type["node_config"].get("guestAccelerators", [])
        n_attached = sum(a["acceleratorCount"] for a in attached) or counts_per_machine.get(
            node_type["node_config"]["machineType"], 0)
        assert gpus == n_attached


def _ray_start_resources(params: dict) -> dict:
    raw = params.get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        limits = container["resources"]["limits"]
        gpus = int(group["rayStartParams"].get("num-gpus", 0))
        assert int(limits.get("nvidia.com/gpu", 0)) == gpus
        accelerators = _accelerators(_ray_start_resources(group["rayStartParams"]))
        if gpus:
            assert list(accelerators.values()) == [gpus]


def test_kuberay_raycluster_structure():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    _check_ray_cluster_spec(doc["spec"])
    gpu_groups = [g for g in doc["spec"]["workerGroupSpecs"] if g["rayStartParams"].get("num-gpus")]
    assert len(gpu_groups) >= 2


def test_kuberay_rayjob_runs_a_real_pipeline():
    doc = yaml.safe_load((CLUSTER / "kuberay" / "rayjob-score.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    _check_ray_cluster_spec(doc["spec"]["rayClusterSpec"])
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipelines.score"]
    assert importlib.util.find_spec(argv[2]) is not None
    score = importlib.import_module(argv[2])  # by name, as `neuromem` and Ray do; its
    # arguments as the manifest passes them must parse

    parser = argparse.ArgumentParser()
    score.add_arguments(parser)
    parser.parse_args(argv[3:])
    ray.runtime_env.RuntimeEnv(**yaml.safe_load(doc["spec"]["runtimeEnvYAML"]))


def test_runtime_env_is_valid_and_excludes_local_state():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    ray.runtime_env.RuntimeEnv(**env)
    assert env["working_dir"] == "."
    assert {".venv/", ".git/"} <= set(env["excludes"])
