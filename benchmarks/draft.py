"""DRaFT-1 under Ray Train against the same step in a bare single-process loop.

Reports, for one worker:

- steady-state samples/s of a DRaFT-1 update (median step time after ``--warmup`` steps) in a
  bare loop (``neuromem.jobs.finetune.setup_worker`` + ``draft_update`` in this process) and
  under Ray Train (``TorchTrainer``, 1 worker, the job's own ``train_loop``), and their ratio;
- the fixed start cost of the Ray Train run: wall time of ``fit()`` minus the time of its steps
  (worker start, imports, model build, process group, checkpoint);
- peak memory (CUDA allocator peak on a GPU; peak RSS of the process on a CPU).

Default: the ``tiny`` pipeline and ``clip-probe:tiny`` on CPU, one torch thread in both loops
(Ray workers run with ``OMP_NUM_THREADS=1``). ``--real-size``: SD-1.5-size UNet, VAE and text
encoder and a ViT-B-32 probe, random weights, batch 8 at 512 px on the GPU (bf16 autocast,
gradient checkpointing, LoRA r16).

    python benchmarks/draft.py                 # -> benchmarks/results/draft_cpu.json
    python benchmarks/draft.py --real-size     # -> benchmarks/results/draft_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from neuromem.generation.draft import draft_update
from neuromem.jobs.finetune import (
    FinetuneConfig,
    loop_config,
    peak_memory_bytes,
    setup_worker,
    train_loop,
    worker_batch,
)
from neuromem.jobs.train import TrainWorkers, fit

RESULTS = Path(__file__).parent / "results"


def build_sd15_random(folder: Path) -> None:
    """Save an SD-1.5-size pipeline with random weights (UNet 860 M, VAE 84 M, CLIP-L text)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from neuromem.generation.pipeline import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512], latent_channels=4, sample_size=512,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
    )
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False)
    StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folder)


def build_vitb32_probe(path: Path) -> str:
    """A ViT-B-32 probe with random tower and head; returns its encoder spec."""
    from neuromem.encoders.base import N_VERTICES
    from neuromem.encoders.clip_probe import save_clip_probe

    generator = torch.Generator().manual_seed(0)
    save_clip_probe(
        path, torch.randn(N_VERTICES, 512, generator=generator) / 512**0.5,
        torch.zeros(N_VERTICES), model_name="ViT-B-32", pretrained="", feature_norm="l2",
        training={"trained": False, "purpose": "benchmark"},
    )
    return f"clip-probe:{path}"


def bare_loop(config: dict, device: torch.device, steps: int, warmup: int) -> dict:
    """The job's step in this process, no Ray."""
    state = setup_worker(config, device)
    seconds = []
    for step in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        batch = worker_batch(state, config, step, rank=0, world=1)
        draft_update(state.pipe, state.reward, state.optimizer, state.params, batch,
                     state.settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tic)
    steady = statistics.median(seconds[warmup:])
    return {"step_seconds": seconds, "steady_step_seconds": steady,
            "samples_per_s": config["global_batch"] / steady,
            "peak_memory_bytes": peak_memory_bytes(device)}


def ray_loop(config: dict, steps: int, warmup: int, gpus: float, storage: str) -> dict:
    """The same job under Ray Train, one worker; per-step times come from its history."""
    tic = time.perf_counter()
    result = fit(train_loop, config, workers=TrainWorkers(1, gpus), out=storage, name="bench",
                 progress=False)
    wall = time.perf_counter() - tic
    with result.checkpoint.as_directory() as directory:
        history = json.loads(Path(directory, "run.json").read_text())["history"]
    seconds = [h["seconds"] for h in history]
    steady = statistics.median(seconds[warmup:])
    return {"step_seconds": seconds, "steady_step_seconds": steady,
            "samples_per_s": config["global_batch"] / steady,
            "fit_wall_seconds": wall, "start_cost_seconds": wall - sum(seconds),
            "peak_memory_bytes": max(h["peak_memory_bytes"] for h in history)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-size", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="steps per loop")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    work = Path(tempfile.mkdtemp(prefix="neuromem-draft-bench-"))
    if args.real_size:
        if not torch.cuda.is_available():
            parser.error("--real-size needs a GPU")
        device, gpus, steps = torch.device("cuda"), 1.0, args.steps or 15
        model = str(work / "sd15-random")
        build_sd15_random(Path(model))
        encoder = build_vitb32_probe(work / "vitb32-probe.safetensors")
        sampling = dict(inference_steps=50, size=512, lora_rank=16, lora_alpha=16.0)
        batch = 8
    else:
        device, gpus, steps = torch.device("cpu"), 0.0, args.steps or 12
        model, encoder, batch = "tiny", "clip-probe:tiny", 2
        sampling = dict(inference_steps=4, size=64)
        torch.set_num_threads(1)  # as in a Ray worker (OMP_NUM_THREADS=1)
    job = FinetuneConfig(model=model, encoder=encoder, steps=steps, out=str(work / "runs"),
                         batch_size=batch, checkpoint_every=steps, workers=1, **sampling)
    config = loop_config(job)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # never a stray cluster
    ray_result = ray_loop(config, steps, args.warmup, gpus, str(work / "runs"))
    ray.shutdown()
    bare = bare_loop(config, device, steps, args.warmup)
    record = {
        "benchmark": "draft1", "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(), "versions": {"torch": torch.__version__,
                                                  "ray": ray.__version__},
        "model": "sd15-size random" if args.real_size else model, "encoder": encoder.split("/")[-1],
        "global_batch": batch, "settings": config["settings"], "steps": steps,
        "warmup": args.warmup, "bare": bare, "ray_train": ray_result,
        "ratio_ray_over_bare": ray_result["samples_per_s"] / bare["samples_per_s"],
    }
    out = Path(args.out) if args.out else RESULTS / (
        "draft_gpu.json" if args.real_size else "draft_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("ratio_ray_over_bare", "global_batch")}
                     | {"bare_samples_per_s": bare["samples_per_s"],
                        "ray_samples_per_s": ray_result["samples_per_s"],
                        "start_cost_seconds": ray_result["start_cost_seconds"],
                        "peak_memory_gb": max(bare["peak_memory_bytes"],
                                              ray_result["peak_memory_bytes"]) / 1e9}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
