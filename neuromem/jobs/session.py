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
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Files and folders never uploaded with the working directory when connecting to a cluster.
RUNTIME_EXCLUDES = [".venv", ".upstream", ".git", ".devwhl", "demo_out", "**/__pycache__",
                    "*.egg-info", "benchmarks/results"]

#: Lines Ray's C++ core prints on stderr at error level that are no failure of a neuromem job.
#: Ray Data keeps an actor pool's constructor arguments in the object store and lets actors
#: restart: it says so for every actor, but an actor that cannot restart fails the job loudly.
NOISE_LINES = ("has constructor arguments in the object store and max_restarts > 0",)

#: Loggers whose informational lines mean nothing to a neuromem user.
_NOISY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "ray._private")


def repo_root() -> str:
    """The checkout holding this neuromem package (uploaded as the working directory)."""
    import neuromem

    return str(Path(neuromem.__file__).resolve().parents[1])


def quiet_ray() -> None:
    """Turn off Ray Data's progress bars, start-of-execution lines and error logging.

    An error in a job reaches the driver as the exception raised in the worker (Ray Data's
    ``raise_original_map_exception``), which the CLI prints as one line; Ray's own log lines
    about it would only repeat it as a traceback.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.raise_original_map_exception = True  # the user's error, not a wrapper, reaches the CLI
    if hasattr(context, "enable_operator_progress_bars"):
        context.enable_operator_progress_bars = False
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # harmless: a fixed pool larger than the block count of a short input
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors",
                            category=UserWarning)


def inside_ray_job() -> bool:
    """Whether this process is the driver of a ``ray job submit`` job (its runtime env is set)."""
    # The job supervisor hands its driver the job's config (runtime env included) in this
    # variable; RAY_JOB_ID is set for drivers started by older Ray versions and by tests.
    return bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or os.environ.get("RAY_JOB_ID"))


def _init_kwargs(address: str | None, dashboard: bool, num_cpus: int | None) -> dict:
    kwargs: dict = {"log_to_driver": False}
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        kwargs["address"] = address
        if not inside_ray_job():  # a driver outside `ray job submit` ships this checkout
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
    with _stderr_without(NOISE_LINES):
        ray.init(**_init_kwargs(address, dashboard, num_cpus))
        quiet_ray()
        try:
            yield True
        finally:
            with _sigint_deferred():  # a Ctrl-C now must not leave Ray's processes behind
                ray.shutdown()


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold off Ctrl-C during the block; raise it afterwards if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def _stderr_without(noise: tuple[str, ...]) -> Iterator[None]:
    """Drop lines containing ``noise`` from what native code writes to file descriptor 2.

    Python's ``sys.stderr`` (progress bars, messages) keeps writing to the real stderr; only
    writers of the raw descriptor (Ray's C++ core and the processes it starts) pass through a
    pipe whose reader forwards every other line unchanged.
    """
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (embedded interpreters)
        yield
        return
    read_end, write_end = os.pipe()
    previous_stderr = sys.stderr
    sys.stderr = os.fdopen(os.dup(real), "w", buffering=1, encoding="utf-8", errors="replace")

    def forward() -> None:  # until every writer of the pipe has closed it
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not any(text.encode() in line for text in noise):
                    os.write(real, line)
        os.close(real)

    reader = threading.Thread(target=forward, name="neuromem-stderr-filter", daemon=True)
    reader.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # our end of the pipe closes; children still holding it close later
        sys.stderr.close()
        sys.stderr = previous_stderr
        reader.join(timeout=2.0)  # the lines written so far are out before we go on


def cluster_has_gpus() -> bool:
    """Whether the connected Ray cluster advertises at least one GPU."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
