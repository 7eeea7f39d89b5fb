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

from neuromem.errors import InputError

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
RUN_RECORD = "run.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem finetune``."""
    parser.add_argument("--model", required=True,
                        help="Stable Diffusion folder, cached hub id, or 'tiny'")
    parser.add_argument("--encoder", required=True, help="brain encoder spec, e.g. clip-probe:tiny")
    parser.add_argument("--reward", default=None,
                        help="decomposition results.json or weights YAML (default: seed 000's r)")
    parser.add_argument("--correlation", choices=["pearson", "partial"], default="pearson",
                        help="which r of results.json gives the weights (default pearson)")
    parser.add_argument("--score-table", default=None,
                        help="Parquet score table for each ROI's mean and std (default 0 and 1)")
    parser.add_argument("--roi-set", default="default", help="ROI set name or YAML path")
    parser.add_argument("--trunc-layer", type=int, default=None,
                        help="encoder gradient truncation depth (default: none)")
    parser.add_argument("--prompts", default=None,
                        help="text file, one prompt a line (default: a built-in list of 16)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    parser.add_argument("--gpus-per-worker", type=float, default=0,
                        help="GPUs per worker; 0 trains on CPU with gloo")
    parser.add_argument("--steps", type=int, required=True, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (samples per step over all workers; default = workers)")
    parser.add_argument("--method", choices=["draft1", "draftk", "draftlv"], default="draft1")
    parser.add_argument("--k", type=int, default=1, help="steps with a graph for draftk")
    parser.add_argument("--lv-samples", type=int, default=2, help="re-noised copies for draftlv")
    parser.add_argument("--inference-steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--max-grad-norm", type=float, default=5.0)
    parser.add_argument("--penalty", type=float, default=0.0,
                        help="DRaFT+ weight keeping the LoRA's noise prediction near the base")
    parser.add_argument("--lora-rank", type=int, default=4)
    parser.add_argument("--lora-alpha", type=float, default=4.0)
    parser.add_argument("--lora-targets", default="to_k,to_q,to_v,to_out.0",
                        help="comma-separated UNet module names")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="weights of the frozen modules (bf16 autocast runs on GPU anyway)")
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="storage path: local directory or URI")
    parser.add_argument("--name", default="draft", help="run name under --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run --out/--name from its latest checkpoint")
    parser.add_argument("--max-failures", type=int, default=3,
                        help="worker-group restarts from the latest checkpoint")
    parser.add_argument("--pid-dir", default=None,
                        help="write each worker's pid to DIR/rank<r>.<attempt>.pid (supervision)")


def run(args: argparse.Namespace) -> int:
    """Run ``neuromem finetune``; prints a JSON summary with the final checkpoint."""
    config = config_from_args(args)
    result = fit(config, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                 storage_path=args.out, name=args.name, resume=args.resume,
                 max_failures=args.max_failures)
    print(json.dumps({
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics": result.metrics,
    }, indent=2))
    return 0


def read_prompts(path: str | None) -> list[str]:
    """Prompts from a text file (one a line, blank lines skipped) or :data:`BUILTIN_PROMPTS`."""
    if path is None:
        return list(BUILTIN_PROMPTS)
    try:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise InputError(f"cannot read prompts from {path}: {exc}") from exc
    prompts = [p for p in prompts if p]
    if not prompts:
        raise InputError(f"{path} holds no prompts; expected one prompt a line")
    return prompts


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-serialisable ``train_loop_config`` of a command line."""
    from neuromem.generation.draft import DraftSettings, LoraSettings
    from neuromem.generation.reward import load_reward_spec

    settings = DraftSettings(
        method=args.method, k=args.k, lv_samples=args.lv_samples,
        num_inference_steps=args.inference_steps, guidance_scale=args.guidance_scale,
        height=args.size, width=args.size, learning_rate=args.lr,
        weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm, penalty=args.penalty,
        gradient_checkpointing=not args.no_gradient_checkpointing,
        lora=LoraSettings(rank=args.lora_rank, alpha=args.lora_alpha,
                          target_modules=tuple(args.lora_targets.split(","))),
    )
    spec = load_reward_spec(args.reward, correlation=args.correlation,
                            score_table=args.score_table)
    return make_config(
        model=args.model, encoder=args.encoder, reward=spec.to_dict(), settings=settings,
        prompts=read_prompts(args.prompts), steps=args.steps,
        global_batch=args.batch_size or args.workers, seed=args.seed,
        checkpoint_every=args.checkpoint_every, roi_set=args.roi_set,
        trunc_layer=args.trunc_layer, dtype=args.dtype, pid_dir=args.pid_dir,
    )


def make_config(
    *, model: str, encoder: str, reward: dict[str, Any], settings, prompts: list[str],
    steps: int, global_batch: int, seed: int = 0, checkpoint_every: int = 50,
    roi_set: str = "default", trunc_layer: int | None = None, dtype: str = "float32",
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
        "checkpoint_every": checkpoint_every, "roi_set": roi_set, "trunc_layer": trunc_layer,
        "dtype": dtype, "pid_dir": pid_dir,
    }


def _run_exists(storage_path: str, name: str) -> bool:
    import pyarrow.fs

    if "://" in storage_path:
        fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), os.path.abspath(storage_path)
    info = fs.get_file_info(f"{root.rstrip('/')}/{name}/checkpoint_manager_snapshot.json")
    return info.type != pyarrow.fs.FileType.NotFound


def fit(
    config: dict[str, Any],
    *,
    workers: int,
    storage_path: str,
    name: str = "draft",
    gpus_per_worker: float = 0,
    resume: bool = False,
    max_failures: int = 3,
):
    """Train with a Ray Train ``TorchTrainer`` and return its ``ray.train.Result``.

    Parameters
    ----------
    config : dict
        From :func:`make_config`.
    workers : int
        Data-parallel workers; must divide ``config["global_batch"]``.
    storage_path : str
        Local directory or URI for checkpoints.
    name : str
        Run name (sub-directory of ``storage_path``).
    gpus_per_worker : float
        0 for CPU workers (gloo); otherwise GPUs per worker (NCCL).
    resume : bool
        Continue the run ``storage_path/name``. Without it an existing run is an error.
    max_failures : int
        Restarts from the latest checkpoint after a worker dies.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if workers < 1 or config["global_batch"] % workers:
        raise InputError(
            f"global batch {config['global_batch']} must be a positive multiple of "
            f"--workers {workers}"
        )
    if not resume and _run_exists(storage_path, name):
        raise InputError(
            f"run {name!r} already exists under {storage_path}; pass --resume to continue it "
            "or choose another --name"
        )
    if resume and not _run_exists(storage_path, name):
        raise InputError(f"nothing to resume: no run {name!r} under {storage_path}")
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": 1, "GPU": gpus_per_worker} if use_gpu else {"CPU": 1}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    return trainer.fit()


def peak_memory_bytes(device) -> int:
    """Peak memory so far: CUDA allocator peak on a GPU, the process's peak RSS on a CPU."""
    import resource

    import torch

    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _versions() -> dict[str, str]:
    import importlib.metadata

    return {
        pkg: importlib.metadata.version(pkg)
        for pkg in ("neuromem", "torch", "diffusers", "peft", "ray")
    }


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

    settings = DraftSettings.from_dict(config["settings"])
    torch.manual_seed(config["seed"])  # the LoRA's random init
    pipe = load_pipeline(config["model"], device=device, dtype=getattr(torch, config["dtype"]),
                         seed=config["seed"], scheduler="ddim")
    params = prepare_pipeline(pipe, settings)
    broadcast_parameters(params)
    spec = RewardSpec.from_dict(config["reward"])
    reward = build_composite_reward(config["encoder"], spec, device=device,
                                    roi_set=config["roi_set"], trunc_layer=config["trunc_layer"])
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
    keys = ("model", "encoder", "seed", "global_batch", "prompts", "roi_set", "trunc_layer",
            "dtype")
    return {
        "step": step, "world_size": world, **{k: config[k] for k in keys},
        "reward": state.spec.to_dict(), "settings": state.settings.to_dict(),
        "versions": _versions(), "history": history,
    }


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker function: DRaFT updates with gradient all-reduce and checkpoints."""
    import ray.train
    import ray.train.torch
    import torch

    from neuromem.generation.draft import draft_update, load_lora_into, save_lora

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

    for step in range(start, config["steps"]):
        tic = time.perf_counter()
        batch = worker_batch(state, config, step, rank, world)
        metrics = draft_update(state.pipe, state.reward, state.optimizer, state.params, batch,
                               state.settings)
        metrics.update(step=step + 1, seconds=time.perf_counter() - tic, resumed_from=start,
                       peak_memory_bytes=peak_memory_bytes(device))
        history.append(metrics)
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
