"""Cost of brain guidance: seconds per guided image against the same unguided pipeline.

Four runs of the same prompts, seeds and steps: unguided; guided through the full encoder
(``grad_path="x0"``: no UNet backward); guided with the probe's straight-through surrogate at
half the encoder's depth; guided with the full backward through the UNet (``grad_path="unet"``,
the cost of BrainDiVE's gradient path). They are timed interleaved,
round by round, after a warm-up round. For each: median seconds per image over the rounds, the
median over rounds of the guided/unguided ratio, and peak memory (GPU:
``torch.cuda.max_memory_allocated`` of the run; CPU: the process's peak resident set so far).

Default: the tiny pipeline and ``clip-probe:tiny`` on CPU. ``--real-size``: SD-1.5-size UNet,
VAE and text encoder and an open_clip ViT-g-14 probe (40 blocks, width 1408, the size of the
V-JEPA2 ViT-g backbone TRIBE v2 reads) with random weights, on the GPU in bfloat16. Target
there: ratio <= 2.5 with the surrogate.

    python benchmarks/guidance.py               # -> benchmarks/results/guidance_cpu.json
    python benchmarks/guidance.py --real-size   # -> benchmarks/results/guidance_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.cortex.surface import N_VERTICES
from neuromem.encoders import load_encoder
from neuromem.encoders.clip_probe import ClipProbeEncoder, build_image_tower
from neuromem.generation.guidance import BrainGuidance, GuidanceConfig, generate
from neuromem.generation.objective import RoiObjective, parse_target
from neuromem.generation.pipeline import load_pipeline, tiny_tokenizer

RESULTS = Path(__file__).parent / "results"
TARGET = "roi_PPA:+1,roi_RSC:-1"


def sd15_size_pipeline(device: str, dtype: torch.dtype):
    """Stable Diffusion 1.5's architecture (UNet, VAE, CLIP ViT-L text) with random weights."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512,
        )
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, vocab_size=49408, max_position_embeddings=77,
            hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return pipe


def vitg_probe(device: str, dtype: torch.dtype) -> ClipProbeEncoder:
    """open_clip ViT-g-14 image tower + linear head to the vertices, random weights."""
    visual, _ = build_image_tower("ViT-g-14", "")  # open_clip builds on the CPU
    encoder = ClipProbeEncoder(
        visual, torch.nn.Linear(visual.output_dim, N_VERTICES), spec="clip-probe:ViT-g-14-random",
        model_name="ViT-g-14", pretrained="", feature_norm="l2", trained=False, files=[],
    )
    return encoder.to(device=device, dtype=dtype).requires_grad_(False).eval()


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def time_runs(runs: dict, n_images: int, repeats: int, device: str) -> dict[str, dict]:
    """Seconds per image of each run, interleaved round by round so load drifts hit all alike.

    One warm-up round, then ``repeats`` timed rounds. Returns per run the median seconds per
    image, every round's value, and the peak memory in MiB (GPU: of that run alone).
    """
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    peaks = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, run in runs.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append((time.perf_counter() - start) / n_images)
            peaks[name] = max(peaks[name], peak_memory_mb(device))
    return {name: {"seconds_per_image": statistics.median(times[name]),
                   "rounds_s_per_image": times[name], "peak_memory_mb": peaks[name]}
            for name in runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-size", action="store_true",
                        help="SD-1.5-size pipeline and a ViT-g-14 probe, random weights (GPU)")
    parser.add_argument("--device", default=None, help="default: cuda with --real-size, else cpu")
    parser.add_argument("--steps", type=int, default=None, help="default 50 real size, 10 tiny")
    parser.add_argument("--batch", type=int, default=None, help="images per run (4 real, 2 tiny)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if args.real_size else "cpu")
    steps = args.steps or (50 if args.real_size else 10)
    batch = args.batch or (4 if args.real_size else 2)
    if args.real_size:
        dtype = torch.bfloat16
        pipe = sd15_size_pipeline(device, dtype)
        encoder = vitg_probe(device, dtype)
    else:
        dtype = torch.float32
        pipe = load_pipeline("tiny", device=device)
        encoder = load_encoder("clip-probe:tiny", device=device)
    objective = RoiObjective(RoiReducer(load_roi_set("default")), parse_target(TARGET))
    prompts, seeds = ["a photo of a kitchen"] * batch, list(range(batch))
    half = max(1, encoder.n_layers // 2)

    def runner(config: GuidanceConfig | None):
        guidance = None if config is None else BrainGuidance(pipe, encoder, objective, config)
        return lambda: generate(pipe, prompts, seeds, guidance=guidance, steps=steps)

    configs = {"unguided": None,
               "guided_full": GuidanceConfig(scale=args.scale),
               "guided_surrogate_half": GuidanceConfig(scale=args.scale, surrogate_layer=half),
               "guided_unet_path": GuidanceConfig(scale=args.scale, grad_path="unet")}
    results = time_runs({name: runner(c) for name, c in configs.items()}, batch, args.repeats,
                        device)
    base_r = results["unguided"]["rounds_s_per_image"]
    for name, config in configs.items():
        results[name]["surrogate_layer"] = None if config is None else config.surrogate_layer
        results[name]["grad_path"] = None if config is None else config.grad_path
        if config is not None:  # median over rounds of the paired guided/unguided ratio
            results[name]["ratio_to_unguided"] = statistics.median(
                g / u for g, u in zip(results[name]["rounds_s_per_image"], base_r, strict=True))
        print(f"{name}: {results[name]['seconds_per_image']:.3f} s/image, "
              f"ratio {results[name].get('ratio_to_unguided', 1.0):.2f}, "
              f"peak {results[name]['peak_memory_mb']:.0f} MiB", flush=True)

    report = {
        "benchmark": "guidance",
        "size": "real (random weights)" if args.real_size else "tiny (seeded random)",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
        or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "dtype": str(dtype).removeprefix("torch."),
        "pipeline": "SD-1.5 architecture, 512 px" if args.real_size else "tiny, 64 px",
        "encoder": encoder.spec, "encoder_layers": encoder.n_layers, "half_depth": half,
        "steps": steps, "batch": batch, "repeats": args.repeats, "cfg_scale": 7.5,
        "guidance_scale": args.scale, "target": TARGET,
        "memory": "GPU max_memory_allocated per run" if device.startswith("cuda")
        else "process peak RSS so far (monotone)",
        "results": results,
        "versions": {"torch": torch.__version__, **_versions()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
    }
    out = args.out or RESULTS / ("guidance_gpu.json" if args.real_size else "guidance_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _versions() -> dict[str, str]:
    import importlib.metadata

    return {pkg: importlib.metadata.version(pkg) for pkg in ("neuromem", "diffusers")}


if __name__ == "__main__":
    raise SystemExit(main())
