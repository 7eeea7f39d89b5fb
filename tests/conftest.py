"""Shared fixtures: one local Ray cluster per test session, offline settings, the ``ray`` marker.

Layout: ``tests/unit/<package>/`` tests one library package (mostly without Ray),
``tests/jobs/`` runs commands end to end, ``tests/cluster/`` checks cluster configs and runs
jobs on a multi-node loopback cluster. Every test that starts Ray carries the ``ray`` marker, so
``pytest -m "not ray"`` is the fast loop: tests that use the :func:`ray_local` fixture and every
test under ``tests/cluster/`` get it automatically, other modules set ``pytestmark``; a test
without the marker that starts Ray in-process fails.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Tests never reach a model hub; Ray's token authentication is off for local test clusters.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s by default: finishing a tiny run and
# noticing a killed worker each waited for that poll (a tenth of it cuts the DRaFT fault test
# from 38 to 26 s); what the tests assert does not depend on the interval.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# caches (spin rotations) go to a folder of this test session, not the user's ~/.cache
os.environ.setdefault("NEUROMEM_CACHE", tempfile.mkdtemp(prefix="neuromem-test-cache-"))


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


_CLUSTER_TESTS = Path(__file__).parent / "cluster"


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts Ray with ``ray`` (see the module docstring)."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()) or _CLUSTER_TESTS in item.path.parents:
            item.add_marker(pytest.mark.ray)


@pytest.fixture(autouse=True)
def _ray_marker_is_honest(request):
    """Fail a test that starts Ray in-process without the ``ray`` marker."""
    was_running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    if was_running or request.node.get_closest_marker("ray") is not None:
        return
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        pytest.fail("this test started Ray without the `ray` marker: use the ray_local fixture "
                    "or mark the module with pytestmark = pytest.mark.ray")
