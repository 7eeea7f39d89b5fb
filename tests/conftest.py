"""Shared fixtures: one local Ray cluster per test session, offline settings."""

from __future__ import annotations

import os

import pytest

# Tests never reach a model hub; Ray's token authentication is off for local test clusters.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster (2 CPUs, 1 logical GPU) shared by every test that needs Ray.

    The logical GPU lets GPU-annotated actors schedule on a CPU machine; they run on the CPU.
    """
    import ray

    if not ray.is_initialized():
        # address="local": always a new cluster, never one that `ray start` left running here
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
                 log_to_driver=False)
    yield ray
    ray.shutdown()
