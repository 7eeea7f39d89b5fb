"""``neuromem finetune``: a Stable Diffusion LoRA trained with DRaFT on the brain reward (Ray Train).

1. **Checks** (before Ray starts): settings, the encoder spec, the reward (a score table giving
   ROI means and stds must come from the reward's encoder and ROI set), the prompts, and the run
   folder (an existing run needs ``--resume``; resuming needs one).
2. **Training**: each of ``--workers`` Ray Train workers holds the pipeline, the LoRA and the
   reward; the global batch is split evenly across them and the LoRA gradients are averaged with
   one all-reduce per step (gloo on CPU, NCCL on GPU), as DistributedDataParallel does. Every
   sample's prompt and noise come from the run seed and the sample's global index, so the same
   global batch gives the same update on any number of workers. Rank 0 reports each step to the
   driver's progress bar (step, reward, s/step, ETA).
3. **Checkpoints** every ``--checkpoint-every`` steps in ``OUT/ray/NAME/checkpoint_*``
   (format: :mod:`neuromem.generation.checkpoints`). After a worker dies Ray Train restarts the
   workers from the latest checkpoint (``--max-failures``); ``--resume`` continues a stopped run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuromem.errors import InputError
from neuromem.generation.draft import METHODS
from neuromem.generation.reward import CORRELATIONS
from neuromem.jobs.train import TrainJobConfig, WorkerProgress, fit, storage_path

logger = logging.getLogger(__name__)

#: Ray Train's record of a run's checkpoints: a run folder holding it exists.
RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class FinetuneConfig(TrainJobConfig):
    """Everything ``neuromem finetune`` needs; fields mirror the command-line options.

    Attributes
    ----------
    model : str
        Stable Diffusion folder, cached hub id, or ``tiny``.
    encoder : str
        Brain encoder spec of the reward.
    steps : int
        Optimisation steps.
    out : str
        Output folder (local path or URI); checkpoints go to ``OUT/ray/NAME``.
    reward : str or None
        Decomposition ``results.json`` or weights YAML (None: the built-in weights).
    correlation : {"pearson", "partial"}
        Which r of a ``results.json`` gives the weights.
    score_table : str or None
        Score table of the same encoder and ROI set giving each ROI's mean and std.
    rois : str
        ROI set.
    trunc_layer, surrogate_layer : int or None
        Encoder depth where the gradient path stops, or of the straight-through surrogate
        (CLIP probes); :class:`~neuromem.generation.reward.CompositeReward`.
    prompts : str or None
        Prompt file (None: :data:`~neuromem.generation.prompts.TRAINING_PROMPTS`).
    batch_size : int or None
        Global batch (None: one sample per worker).
    method, k, lv_samples
        DRaFT variant (:class:`~neuromem.generation.draft.DraftSettings`).
    inference_steps : int or None
        DDIM steps; None: 4 for ``tiny``, else 50.
    cfg_scale : float
        Classifier-free guidance scale.
    size : int or None
        Image side in pixels; None: the model's native size.
    lr, weight_decay, max_grad_norm, penalty
        AdamW, clipping and the DRaFT+ penalty.
    lora_rank, lora_alpha, lora_targets
        LoRA adapter (targets comma-separated).
    no_gradient_checkpointing : bool
        Keep activations instead of recomputing them.
    dtype : str
        Weights of the frozen modules.
    checkpoint_every : int
        Steps between checkpoints.
    seed : int
        Seed of the LoRA's initial values, prompts and noise.
    name : str
        Run name under ``OUT/ray``.
    resume : bool
        Continue the run from its latest checkpoint.
    max_failures : int
        Worker-group restarts from the latest checkpoint.
    pid_dir : str or None
        Each worker writes its pid to ``DIR/rank<r>.<attempt>.pid`` (supervision, tests).
    """

    model: str
    encoder: str
    steps: int
    out: str
    reward: str | None = None
    correlation: str = "pearson"
    score_table: str | None = None
    rois: str = "default"
    trunc_layer: int | None = None
    surrogate_layer: int | None = None
    prompts: str | None = None
    batch_size: int | None = None
    method: str = "draft1"
    k: int = 1
    lv_samples: int = 2
    inference_steps: int | None = None
    cfg_scale: float = 7.5
    size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.1
    max_grad_norm: float = 5.0
    penalty: float = 0.0
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: str = "to_k,to_q,to_v,to_out.0"
    no_gradient_checkpointing: bool = False
    dtype: str = "float32"
    checkpoint_every: int = 50
    seed: int = 0
    name: str = "draft"
    resume: bool = False
    max_failures: int = 3
    pid_dir: str | None = None

    @property
    def global_batch(self) -> int:
        """Samples per step over all workers."""
        return self.batch_size or self.workers

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with (before any model)."""
        from neuromem.runtime.device import resolve_dtype

        super().check()
        self.require_at_least(1, "steps", "checkpoint_every", "batch_size", "inference_steps",
                              "k", "lv_samples", "lora_rank")
        self.require_at_least(8, "size")
        self.require_at_least(0, "max_failures", "penalty")
        self.require_choice("method", METHODS)
        self.require_choice("correlation", CORRELATIONS)
        resolve_dtype(self.dtype)
        if self.global_batch % self.workers:
            raise InputError(f"--batch-size {self.global_batch} must be a multiple of "
                             f"--workers {self.workers}")
        self.draft_settings()  # checks k against the denoising steps
        if self.trunc_layer is not None and self.surrogate_layer is not None:
            raise InputError("give --trunc-layer (stop the gradient path) or --surrogate-layer "
                             "(straight-through surrogate), not both")

    def draft_settings(self):
        """The :class:`~neuromem.generation.draft.DraftSettings` (size None: the model's)."""
        from neuromem.generation.draft import DraftSettings, LoraSettings
        from neuromem.generation.pipeline import inference_steps_for

        return DraftSettings(
            method=self.method, k=self.k, lv_samples=self.lv_samples,
            num_inference_steps=inference_steps_for(self.model, self.inference_steps),
            guidance_scale=self.cfg_scale, height=self.size, width=self.size,
            learning_rate=self.lr, weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm, penalty=self.penalty,
            gradient_checkpointing=not self.no_gradient_checkpointing,
            lora=LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha,
                              target_modules=tuple(self.lora_targets.split(","))),
        )


def loop_config(config: FinetuneConfig) -> dict[str, Any]:
    """The training loop's config (JSON types): reward, prompts and settings resolved and checked.

    Raises
    ------
    InputError
        Unknown encoder, unreadable reward or prompts, a score table of another encoder or ROI
        set.
    """
    from neuromem.encoders.registry import check_spec
    from neuromem.generation.prompts import TRAINING_PROMPTS, read_prompts
    from neuromem.generation.reward import load_reward_spec

    config.check()
    check_spec(config.encoder)
    spec = load_reward_spec(config.reward, correlation=config.correlation,
                            score_table=config.score_table, encoder=config.encoder,
                            roi_set=config.rois)
    return {
        "model": config.model, "encoder": config.encoder, "reward": spec.to_dict(),
        "settings": config.draft_settings().to_dict(),
        "prompts": read_prompts(config.prompts, TRAINING_PROMPTS), "steps": config.steps,
        "global_batch": config.global_batch, "seed": config.seed,
        "checkpoint_every": config.checkpoint_every, "rois": config.rois,
        "trunc_layer": config.trunc_layer, "surrogate_layer": config.surrogate_layer,
        "dtype": config.dtype, "pid_dir": config.pid_dir,
    }


def check_run(out: str, name: str, *, resume: bool) -> None:
    """Without ``resume`` an existing run ``OUT/ray/NAME`` is an error; with it, a missing one."""
    from neuromem.runtime.storage import exists, join_uri

    found = exists(join_uri(storage_path(out), name, RUN_SNAPSHOT))
    if found and not resume:
        raise InputError(f"run {name!r} already exists under {out}; pass --resume to continue "
                         "it or choose another --name")
    if resume and not found:
        raise InputError(f"nothing to resume: no run {name!r} under {out}")


def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Check, train and return ``{"checkpoint": folder, "metrics": last step's metrics}``."""
    from neuromem.jobs.session import ray_session

    loop = loop_config(config)
    check_run(config.out, config.name, resume=config.resume)
    with ray_session(config.address):
        result = fit(train_loop, loop, workers=config.train_workers, name=config.name,
                     out=config.out, total_steps=config.steps, progress=not config.no_progress,
                     desc="finetune", max_failures=config.max_failures, keep_checkpoints=2)
    return {"checkpoint": result.checkpoint.path, "metrics": result.metrics}


def peak_memory_bytes(device) -> int:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on a CPU."""
    import resource

    import torch

    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class WorkerState:
    """What one worker trains with: pipeline, LoRA parameters, reward, optimizer, settings."""

    pipe: Any
    params: list
    reward: Any
    optimizer: Any
    settings: Any
    spec: Any


def setup_worker(config: dict[str, Any], device) -> WorkerState:
    """Build a worker's pipeline, LoRA (same initial values on every rank), reward, AdamW."""
    import torch

    from neuromem.generation.draft import (
        DraftSettings,
        broadcast_parameters,
        make_optimizer,
        prepare_pipeline,
    )
    from neuromem.generation.pipeline import load_pipeline
    from neuromem.generation.reward import RewardSpec, build_composite_reward

    torch.manual_seed(config["seed"])  # the LoRA's random init
    pipe = load_pipeline(config["model"], device=device, dtype=getattr(torch, config["dtype"]),
                         seed=config["seed"], scheduler="ddim")
    settings = DraftSettings.from_dict(config["settings"]).sized_for(pipe)
    params = prepare_pipeline(pipe, settings)
    broadcast_parameters(params)
    spec = RewardSpec.from_dict(config["reward"])
    reward = build_composite_reward(config["encoder"], spec, device=device,
                                    roi_set=config["rois"], trunc_layer=config["trunc_layer"],
                                    surrogate_layer=config.get("surrogate_layer"))
    return WorkerState(pipe, params, reward, make_optimizer(params, settings), settings, spec)


def worker_batch(state: WorkerState, config: dict[str, Any], step: int, rank: int, world: int):
    """Worker ``rank``'s share of step ``step``'s global batch (a ``DraftBatch``)."""
    from neuromem.generation.draft import make_batch, plan_step

    prompts, global_batch = config["prompts"], config["global_batch"]
    local = global_batch // world
    prompt_index_b, sample_id_b = plan_step(step, config["seed"], len(prompts), global_batch)
    mine = slice(rank * local, (rank + 1) * local)
    return make_batch(state.pipe, [prompts[i] for i in prompt_index_b[mine]],
                      sample_id_b[mine], config["seed"], state.settings)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker function: DRaFT updates with gradient all-reduce and checkpoints."""
    import ray.train
    import ray.train.torch

    from neuromem.generation.checkpoints import read_checkpoint, run_record, write_checkpoint
    from neuromem.generation.draft import draft_update

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if config.get("pid_dir"):
        attempt = len(list(Path(config["pid_dir"]).glob(f"rank{rank}.*.pid")))
        Path(config["pid_dir"], f"rank{rank}.{attempt}.pid").write_text(str(os.getpid()))
    device = ray.train.torch.get_device()
    state = setup_worker(config, device)

    start, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start, history = read_checkpoint(folder, state.pipe.unet, state.optimizer, device)
        logger.info("rank %d resumed at step %d", rank, start)
    progress = WorkerProgress(config)
    progress.start(start)

    for step in range(start, config["steps"]):
        tic = time.perf_counter()
        batch = worker_batch(state, config, step, rank, world)
        metrics = draft_update(state.pipe, state.reward, state.optimizer, state.params, batch,
                               state.settings)
        metrics.update(step=step + 1, seconds=time.perf_counter() - tic, resumed_from=start,
                       peak_memory_bytes=peak_memory_bytes(device))
        history.append(metrics)
        progress.reach(step + 1, reward=f"{metrics['reward']:.4g}")
        if (step + 1) % config["checkpoint_every"] and step + 1 != config["steps"]:
            continue
        with tempfile.TemporaryDirectory() as folder:
            to_report = None
            if rank == 0:
                record = run_record(config, step=step + 1, world_size=world,
                                    reward=state.spec.to_dict(),
                                    settings=state.settings.to_dict(), history=history)
                write_checkpoint(folder, state.pipe.unet, state.optimizer, record)
                to_report = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=to_report)
