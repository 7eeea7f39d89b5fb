"""Ray Train wiring shared by the training jobs: workers, storage, progress, the fitted result.

A training job builds its per-worker loop (a module-level function taking one ``config`` dict),
then calls :func:`fit` inside :func:`neuromem.jobs.session.ray_session`. :func:`fit` runs a
``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU) on :class:`TrainWorkers` and draws one progress
bar on the driver: the loop reports its steps with :class:`WorkerProgress` (rank 0 only), which
a small actor relays to the driver (Ray Train's own reports arrive only with checkpoints).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from neuromem.errors import InputError
from neuromem.jobs.progress import start_relay
from neuromem.runtime.config import JobConfig
from neuromem.runtime.progress import progress_bar
from neuromem.runtime.storage import join_uri

#: Key of the loop config holding the progress actor (None without a bar).
PROGRESS_KEY = "_progress"


@dataclass(frozen=True)
class TrainWorkers:
    """Resources of a Ray Train run (``--workers``, ``--gpus-per-worker``, ``--cpus-per-worker``).

    Attributes
    ----------
    workers : int
        Training workers (DDP ranks).
    gpus_per_worker : float or None
        GPUs per worker; None: 1 when the cluster has GPUs, else 0.
    cpus_per_worker : float
        CPUs per worker.
    """

    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0

    def check(self) -> None:
        """Raise :class:`InputError` for resources a run cannot have."""
        if self.workers < 1:
            raise InputError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise InputError(f"--cpus-per-worker must be > 0, got {self.cpus_per_worker}")

    def gpus(self) -> float:
        """GPUs per worker, resolved against the connected cluster."""
        from neuromem.jobs.session import cluster_has_gpus

        if self.gpus_per_worker is not None:
            return float(self.gpus_per_worker)
        return 1.0 if cluster_has_gpus() else 0.0


@dataclass(frozen=True, kw_only=True)
class TrainJobConfig(JobConfig):
    """Base of the configs of Ray Train jobs: the ``options.add_train_workers`` and
    ``options.add_cluster(pool=False)`` fields (keyword-only, so a job's own required fields may
    come first)."""

    workers: int = 1
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    address: str | None = None
    no_progress: bool = False

    @property
    def train_workers(self) -> TrainWorkers:
        """The training workers' resources."""
        return TrainWorkers(self.workers, self.gpus_per_worker, self.cpus_per_worker)

    def check(self) -> None:
        """Raise :class:`InputError` for worker values the job cannot run with."""
        self.train_workers.check()


class WorkerProgress:
    """Inside a training loop: report steps to the driver's bar (rank 0 only; cheap, async).

    Parameters
    ----------
    config : dict
        The loop config :func:`fit` passed (it holds the relay actor).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        import ray.train

        self.actor = config.get(PROGRESS_KEY)
        if ray.train.get_context().get_world_rank() != 0:
            self.actor = None

    def step(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more steps done; ``postfix`` (e.g. ``loss=0.3``) is shown beside the bar."""
        if self.actor is not None:
            self.actor.advance.remote(n, postfix)

    def reach(self, done: int, **postfix: Any) -> None:
        """``done`` steps done in all (a loop restarted from a checkpoint repeats no step)."""
        if self.actor is not None:
            self.actor.reach.remote(done, postfix)

    def start(self, done: int = 0) -> None:
        """The loop is set up with ``done`` steps behind it (0, or a checkpoint's step): the
        bar's clock starts now, so start-up time stays out of the rate and the ETA."""
        if self.actor is not None:
            self.actor.start.remote(done)



def storage_path(out: str) -> str:
    """Where Ray Train keeps a run's checkpoints: ``OUT/ray`` (a URI stays a URI)."""
    return join_uri(out, "ray")


def fit(loop: Callable[[dict], None], config: dict[str, Any], *, workers: TrainWorkers,
        name: str, out: str, datasets: dict | None = None, total_steps: int | None = None,
        progress: bool = True, desc: str = "training", unit: str = "step",
        max_failures: int = 0, keep_checkpoints: int | None = None):
    """Run ``loop(config)`` on every worker with Ray Train and return its result.

    Call inside :func:`neuromem.jobs.session.ray_session`.

    Parameters
    ----------
    loop : callable
        Per-worker training function (module-level, importable by the workers).
    config : dict
        Its config (picklable); the progress relay is added under :data:`PROGRESS_KEY`.
    workers : TrainWorkers
        Resources.
    name : str
        Run name (folder under ``OUT/ray``).
    out : str
        Output folder of the job (local path or URI); checkpoints go to ``OUT/ray``.
    datasets : dict or None
        Ray Datasets sharded to the workers (``ray.train.get_dataset_shard(name)``).
    total_steps : int or None
        Steps the loop will report (the bar's total; None: no ETA).
    progress : bool
        Draw the bar.
    desc, unit : str
        Bar label and unit.
    max_failures : int
        Restarts of the worker group from the latest checkpoint after a worker dies.
    keep_checkpoints : int or None
        Checkpoints kept (the latest ones); None keeps all.

    Returns
    -------
    ray.train.Result
        Its ``metrics`` are the last report's, ``checkpoint`` the last checkpoint.

    Raises
    ------
    InputError
        When training ended without a checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers.check()
    gpus = workers.gpus()
    relay = start_relay() if progress else None
    trainer = TorchTrainer(
        loop,
        train_loop_config={**config, PROGRESS_KEY: relay},
        scaling_config=ScalingConfig(
            num_workers=workers.workers, use_gpu=gpus > 0,
            resources_per_worker={"CPU": workers.cpus_per_worker,
                                  **({"GPU": gpus} if gpus > 0 else {})}),
        run_config=RunConfig(name=name, storage_path=storage_path(out),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints)),
        datasets=datasets or {},
    )
    if relay is None:
        result = trainer.fit()
    else:
        result = _fit_with_bar(trainer, relay, total_steps, desc, unit)
    if result.checkpoint is None:
        raise InputError(f"{name}: training ended without a checkpoint ({result.error})")
    return result


def _fit_with_bar(trainer, relay, total: int | None, desc: str, unit: str):
    """``trainer.fit()`` in this thread while another thread moves the bar."""
    import ray

    finished = threading.Event()

    def follow() -> None:
        with progress_bar(total, desc=desc, unit=unit) as bar:
            shown, seen_starts = 0, 0
            while True:
                stop = finished.wait(0.5)
                done, postfix, starts = ray.get(relay.read.remote())
                if starts > seen_starts:  # a loop (re)started: time the rate from here
                    bar.reset(total)
                    bar.initial = bar.n = shown = done
                    seen_starts = starts
                if done > shown:
                    bar.set_postfix(postfix, refresh=False)
                    bar.update(done - shown)
                    shown = done
                if stop:
                    return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        return trainer.fit()
    finally:
        finished.set()
        thread.join()
