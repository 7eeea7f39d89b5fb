"""Fine-tune a Stable Diffusion LoRA with DRaFT on the composite brain reward (Ray Train DDP).

Each of ``--workers`` Ray Train workers holds the pipeline, the LoRA and the reward; the global
batch (``--batch-size``) is split evenly across them and the LoRA gradients are averaged with one
all-reduce per step (gloo on CPU, NCCL on GPU), as DistributedDataParallel does. Every sample's
prompt and noise come from the run seed and the sample's global index, so the same global batch
gives the same update on any number of workers.

Every ``--checkpoint-every`` steps rank 0 reports a checkpoint holding

- ``pytorch_lora_weights.safetensors``: the LoRA in diffusers format
  (``StableDiffusionPipeline.load_lora_weights(dir)`` loads it);
- ``trainer_state.pt``: optimizer state and step, for resuming;
- ``run.json``: settings, reward weights, prompts, seed, versions, per-step history.

Checkpoints go to ``--out`` (a local path or a URI such as ``s3://bucket/runs``) under
``--name``. After a worker dies, Ray Train restarts the workers from the latest checkpoint
(``--max-failures``); ``--resume`` continues a stopped run with the same ``--out`` and ``--name``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuromem.commands import options
from neuromem.errors import InputError
from neuromem.generation.draft import RUN_RECORD

logger = logging.getLogger(__name__)

# Held-out evaluation prompts live in pipelines.evaluate_lora; these are for training: objects,
# faces and scenes, so the reward can trade scene content for object and face content.
BUILTIN_PROMPTS: tuple[str, ...] = (
    "a photograph of a red bicycle leaning against a wall",
    "a close-up portrait of an elderly man smiling",
    "a mountain lake at sunrise",
    "a cup of coffee on a wooden table",
    "a child holding a balloon in a park",
    "an empty hallway in an office building",
    "a golden retriever catching a frisbee",
    "a city street at night with neon signs",
    "a woman reading a book by the window",
    "a forest path covered in autumn leaves",
    "a vintage typewriter on a desk",
    "a crowded beach on a summer day",
    "a firefighter in uniform",
    "a quiet library with tall bookshelves",
    "a bowl of fruit on a kitchen counter",
    "a desert highway under a clear sky",
)

TRAINER_STATE = "trainer_state.pt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem finetune``."""
    options.add_sd_model(parser)
    options.add_encoder(parser, help_text="brain encoder of the reward")
    parser.add_argument("--reward", default=None,
                        help="decomposition results.json or weights YAML (default: built-in "
                             "weights LOC 0.05, FFA 0.23, RSC -0.49, PPA -0.37)")
    parser.add_argument("--correlation", choices=["pearson", "partial"], default="pearson",
                        help="which r of results.json gives the weights")
    parser.add_argument("--score-table", default=None,
                        help="score table of the same --encoder and --rois giving each ROI's "
                             "mean and std (default 0 and 1)")
    options.add_rois(parser)
    parser.add_argument("--trunc-layer", type=int, default=None,
                        help="encoder gradient truncation depth (default: none)")
    parser.add_argument("--prompts", default=None,
                        help="text file, one prompt a line (default: a built-in list of 16)")
    options.add_train_workers(parser)
    parser.add_argument("--steps", type=int, required=True, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (samples per step over all workers; default = workers)")
    parser.add_argument("--method", choices=["draft1", "draftk", "draftlv"], default="draft1",
                        help="DRaFT variant: gradient through the last step, the last --k "
                             "steps, or re-noised copies of the last step")
    parser.add_argument("--k", type=int, default=1, help="steps with a graph for draftk")
    parser.add_argument("--lv-samples", type=int, default=2, help="re-noised copies for draftlv")
    options.add_sampling(parser, inference_steps=None, negative_prompt=False, scheduler=False)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--max-grad-norm", type=float, default=5.0,
                        help="gradient clipping norm")
    parser.add_argument("--penalty", type=float, default=0.0,
                        help="DRaFT+ weight keeping the LoRA's noise prediction near the base")
    parser.add_argument("--lora-rank", type=int, default=4, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=float, default=4.0, help="LoRA alpha")
    parser.add_argument("--lora-targets", default="to_k,to_q,to_v,to_out.0",
                        help="comma-separated UNet module names")
    parser.add_argument("--no-gradient-checkpointing", action="store_true",
                        help="keep activations instead of recomputing them (more memory)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="weights of the frozen modules (bf16 autocast runs on GPU anyway)")
    parser.add_argument("--checkpoint-every", type=int, default=50,
                        help="optimisation steps between checkpoints")
    options.add_seed(parser, what="the LoRA's initial values, prompts and noise")
    options.add_out(parser, what="output folder; checkpoints go to OUT/ray/NAME",
                    overwrite=False)
    parser.add_argument("--name", default="draft", help="run name under --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run --out/--name from its latest checkpoint")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="worker-group restarts from the latest checkpoint")
    options.add_cluster(parser, pool=False)
    options.add_progress(parser)
    parser.add_argument("--pid-dir", default=None, help=argparse.SUPPRESS)  # tests: kill a rank


def run(args: argparse.Namespace) -> int:
    """Run ``neuromem finetune``; prints a JSON summary with the final checkpoint."""
    from neuromem.jobs.session import ray_session
    from neuromem.jobs.train import TrainWorkers

    config = config_from_args(args)
    workers = TrainWorkers(args.workers, args.gpus_per_worker, args.cpus_per_worker)
    check_run(config, workers=workers, out=args.out, name=args.name, resume=args.resume)
    with ray_session(args.address):
        result = fit(config, workers=workers, out=args.out, name=args.name,
                     max_failures=args.max_failures, progress=not args.no_progress)
    print(json.dumps({
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics": result.metrics,
    }, indent=2))
    return 0


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-serialisable ``train_loop_config`` of a command line.

    Denoising steps and image size not given follow the model (:func:`inference_steps_for`;
    the size is the pipeline's native one, set on each worker).
    """
    from neuromem.generation.draft import DraftSettings, LoraSettings, read_prompts
    from neuromem.generation.pipeline import inference_steps_for
    from neuromem.generation.reward import load_reward_spec

    settings = DraftSettings(
        method=args.method, k=args.k, lv_samples=args.lv_samples,
        num_inference_steps=inference_steps_for(args.model, args.inference_steps),
        guidance_scale=args.cfg_scale, height=args.size, width=args.size, learning_rate=args.lr,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, penalty=args.penalty,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        lora=LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha,
                          target_modules=tuple(args.lora_targets.split(","))),
    )
    spec = load_reward_spec(args.reward, correlation=args.correlation,
                            score_table=args.score_table, encoder=args.encoder, roi_set=args.rois)
    prompts = read_prompts(args.prompts) if args.prompts else list(BUILTIN_PROMPTS)
    return make_config(
        model=args.model, encoder=args.encoder, reward=spec.to_dict(), settings=settings,
        prompts=prompts, steps=args.steps,
        global_batch=args.batch_size or args.workers, seed=args.seed,
        checkpoint_every=args.checkpoint_every, rois=args.rois,
        trunc_layer=args.trunc_layer, dtype=args.dtype, pid_dir=args.pid_dir,
    )


def make_config(
    *, model: str, encoder: str, reward: dict[str, Any], settings, prompts: list[str],
    steps: int, global_batch: int, seed: int = 0, checkpoint_every: int = 50,
    rois: str = "default", trunc_layer: int | None = None, dtype: str = "float32",
    pid_dir: str | None = None,
) -> dict[str, Any]:
    """Build and check a ``train_loop_config``.

    ``pid_dir``, when given, makes every worker write ``rank<r>.<attempt>.pid`` there at start
    (for supervision, and to kill a worker in the fault-tolerance test).
    """
    if steps < 1 or global_batch < 1 or checkpoint_every < 1:
        raise InputError("steps, batch size and checkpoint interval must be >= 1")
    if not prompts:
        raise InputError("at least one prompt is needed")
    return {
        "model": model, "encoder": encoder, "reward": reward, "settings": settings.to_dict(),
        "prompts": list(prompts), "steps": steps, "global_batch": global_batch, "seed": seed,
        "checkpoint_every": checkpoint_every, "rois": rois, "trunc_layer": trunc_layer,
        "dtype": dtype, "pid_dir": pid_dir,
    }


def check_run(config: dict[str, Any], *, workers, out: str, name: str, resume: bool) -> None:
    """Refuse, before Ray starts, a batch the workers cannot share and a run clash.

    Without ``resume`` an existing run ``OUT/ray/NAME`` is an error; with it, a missing one is.
    """
    from neuromem.jobs.train import storage_path
    from neuromem.runtime.storage import exists, join_uri

    workers.check()
    if config["global_batch"] % workers.workers:
        raise InputError(
            f"global batch {config['global_batch']} must be a positive multiple of "
            f"--workers {workers.workers}"
        )
    found = exists(join_uri(storage_path(out), name, "checkpoint_manager_snapshot.json"))
    if found and not resume:
        raise InputError(
            f"run {name!r} already exists under {out}; pass --resume to continue it "
            "or choose another --name"
        )
    if resume and not found:
        raise InputError(f"nothing to resume: no run {name!r} under {out}")


def fit(config: dict[str, Any], *, workers, out: str, name: str = "draft",
        max_failures: int = 3, progress: bool = True):
    """Train with Ray Train (:func:`neuromem.jobs.train.fit`) and return its ``Result``.

    Parameters
    ----------
    config : dict
        From :func:`make_config`.
    workers : neuromem.jobs.train.TrainWorkers
        Data-parallel workers; their number must divide ``config["global_batch"]``.
    out : str
        Local directory or URI; checkpoints go to ``OUT/ray/NAME``.
    name : str
        Run name. A run of that name already there is continued from its latest checkpoint.
    max_failures : int
        Restarts from the latest checkpoint after a worker dies.
    progress : bool
        Draw the bar (step, reward, s/step, ETA).
    """
    from neuromem.jobs import train

    return train.fit(train_loop, config, workers=workers, name=name, out=out,
                     total_steps=config["steps"], progress=progress, desc="finetune",
                     max_failures=max_failures, keep_checkpoints=2)


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
                                    roi_set=config["rois"], trunc_layer=config["trunc_layer"])
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


def run_record(state: WorkerState, config: dict[str, Any], step: int, world: int,
               history: list[dict[str, float]]) -> dict[str, Any]:
    """The ``run.json`` written into every checkpoint."""
    from neuromem.runtime.provenance import versions

    keys = ("model", "encoder", "seed", "global_batch", "prompts", "rois", "trunc_layer",
            "dtype")
    return {
        "step": step, "world_size": world, **{k: config[k] for k in keys},
        "reward": state.spec.to_dict(), "settings": state.settings.to_dict(),
        "versions": versions(("diffusers", "peft", "ray")), "history": history,
    }


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker function: DRaFT updates with gradient all-reduce and checkpoints."""
    import ray.train
    import ray.train.torch
    import torch

    from neuromem.generation.draft import draft_update, load_lora_into, save_lora
    from neuromem.jobs.train import WorkerProgress

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
        with checkpoint.as_directory() as directory:
            load_lora_into(state.pipe.unet, directory)
            saved = torch.load(Path(directory, TRAINER_STATE), map_location=device)
            state.optimizer.load_state_dict(saved["optimizer"])
            start = saved["step"]
            history = json.loads(Path(directory, RUN_RECORD).read_text())["history"]
        logger.info("rank %d resumed at step %d", rank, start)
    progress = WorkerProgress(config)
    progress.reach(start)

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
        with tempfile.TemporaryDirectory() as directory:
            to_report = None
            if rank == 0:
                save_lora(state.pipe.unet, directory)
                torch.save({"optimizer": state.optimizer.state_dict(), "step": step + 1},
                           Path(directory, TRAINER_STATE))
                record = run_record(state, config, step + 1, world, history)
                Path(directory, RUN_RECORD).write_text(json.dumps(record, indent=1))
                to_report = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=to_report)


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
