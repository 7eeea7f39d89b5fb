"""The one Ray session helper: connect to a cluster or start an embedded local Ray, quietly.

Rules (every job follows them through :func:`ray_session`):

- A Ray already initialised in this process (a test's cluster, a notebook) is used as it is and
  left running.
- ``address`` (``--address``) or the ``RAY_ADDRESS`` variable connects to that cluster. A driver
  outside ``ray job submit`` then uploads this checkout as the job's working directory (without
  :data:`RUNTIME_EXCLUDES`), so the cluster's workers run the same code.
- Otherwise a new embedded Ray starts on this machine (``address="local"``: never a cluster
  someone else started here), without the dashboard unless ``dashboard=True``, and is shut
  down when the block ends — also after Ctrl-C.
- Ray's own progress bars and informational lines are silenced: neuromem draws its own progress.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Files and folders never uploaded with the working directory when connecting to a cluster.
RUNTIME_EXCLUDES = [".venv", ".upstream", ".git", ".devwhl", "demo_out", "**/__pycache__",
                    "*.egg-info", "benchmarks/results"]

#: Loggers whose informational lines mean nothing to a neuromem user.
_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "ray._private")
#: Loggers whose warnings only describe settings neuromem chose ("Progress bars disabled").
_SILENT_LOGGERS = ("ray.data._internal.progress",)


def repo_root() -> str:
    """The checkout holding this neuromem package (uploaded as the working directory)."""
    import neuromem

    return str(Path(neuromem.__file__).resolve().parents[1])


def quiet_ray() -> None:
    """Turn off Ray Data's progress bars and start-of-execution lines, and Ray's INFO logging."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = False
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in _SILENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # harmless: a fixed pool larger than the block count of a short input
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors",
                            category=UserWarning)


def _init_kwargs(address: str | None, dashboard: bool, num_cpus: int | None) -> dict:
    kwargs: dict = {"log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        kwargs["address"] = address
        if not os.environ.get("RAY_JOB_ID"):  # a driver outside `ray job submit`
            kwargs["runtime_env"] = {"working_dir": repo_root(), "excludes": RUNTIME_EXCLUDES}
    else:
        kwargs.update(address="local", include_dashboard=dashboard)
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
    return kwargs


@contextmanager
def ray_session(address: str | None = None, *, dashboard: bool = False,
                num_cpus: int | None = None) -> Iterator[bool]:
    """Use, join or start Ray for the enclosed block (see the module docstring).

    Parameters
    ----------
    address : str or None
        Cluster address (``auto``, ``HOST:6379``, ``ray://HOST:10001``); None: ``RAY_ADDRESS``
        when set, else an embedded local Ray.
    dashboard : bool
        Start the dashboard with an embedded Ray.
    num_cpus : int or None
        CPUs of an embedded Ray (default: all of this machine's).

    Yields
    ------
    bool
        True when this call started or joined Ray (and will shut it down).
    """
    import ray

    quiet_ray()
    if ray.is_initialized():
        yield False
        return
    ray.init(**_init_kwargs(address, dashboard, num_cpus))
    quiet_ray()
    try:
        yield True
    finally:
        ray.shutdown()


def cluster_has_gpus() -> bool:
    """Whether the connected Ray cluster advertises at least one GPU."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
