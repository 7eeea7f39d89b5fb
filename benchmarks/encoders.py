"""Throughput of each brain encoder against its bare backbone on the same input.

For every encoder, images/s of

- ``full``: ``encoder.roi_responses(images, reducer)`` — preprocessing, backbone, head and ROI
  reduction, what the scoring stage runs;
- ``backbone``: the bare backbone on the same, already normalised pixels (open_clip image
  tower; the V-JEPA2 encoder on the one window the ``static`` protocol computes: the image on
  all of the window's frames, 64 at real size);

and their ratio. The head + ROI reduction should cost at most 5 % (ratio ≥ 0.95) at real size.
TRIBE v2 is measured with its ``static`` still-image protocol, whose backbone work is one window
per image, so the ratio isolates the head; what each protocol costs (``paper`` computes 10
windows per image) is measured by ``benchmarks/tribe_protocols.py``.

Default: the tiny seeded encoders on CPU. ``--real-size``: open_clip ViT-B-32 + probe head and
V-JEPA2 ViT-g + the released TRIBE v2 head layout, random weights, on the GPU in bfloat16.

    python benchmarks/encoders.py                     # -> benchmarks/results/encoders_cpu.json
    python benchmarks/encoders.py --real-size         # -> benchmarks/results/encoders_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.cortex.surface import N_VERTICES
from neuromem.encoders import BrainEncoder, load_encoder
from neuromem.encoders.clip_probe import ClipProbeEncoder, build_image_tower
from neuromem.encoders.preprocessing import normalise
from neuromem.encoders.tribe_head import FmriHead
from neuromem.encoders.tribev2 import (
    RELEASED_BACKBONE_CONFIG,
    RELEASED_BUILD_ARGS,
    RELEASED_CONFIG,
    TribeV2Encoder,
    feature_spec,
    head_config,
)

RESULTS = Path(__file__).parent / "results"
#: The TRIBE v2 protocol measured here (one backbone window per image).
TRIBE_PROTOCOL = "static"


def real_size_encoders(device: str) -> list[BrainEncoder]:
    """ViT-B-32 probe and ViT-g TRIBE v2 with random weights (built on ``device``)."""
    from transformers import VJEPA2Config, VJEPA2Model

    with torch.device(device):
        visual, _ = build_image_tower("ViT-B-32", "")
        probe = ClipProbeEncoder(
            visual, torch.nn.Linear(visual.output_dim, N_VERTICES), spec="clip-probe:ViT-B-32-random",
            model_name="ViT-B-32", pretrained="", feature_norm="l2", trained=False, files=[],
        )
        backbone = VJEPA2Model(VJEPA2Config(**RELEASED_BACKBONE_CONFIG))
        head = FmriHead(head_config(RELEASED_CONFIG, RELEASED_BUILD_ARGS, n_subject_rows=1))
        features = feature_spec(RELEASED_CONFIG, RELEASED_BACKBONE_CONFIG["num_hidden_layers"],
                                RELEASED_BUILD_ARGS["n_output_timesteps"])
        tribe = TribeV2Encoder(backbone, head, features, spec="tribev2:vitg-random",
                               trained=False, files=[], protocol=TRIBE_PROTOCOL)
    # open_clip moves towers to the CPU even inside a device context: place both explicitly
    return [m.to(device).requires_grad_(False).eval() for m in (probe, tribe)]


def bare_backbone(encoder: BrainEncoder) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder's backbone alone, on images already at the input size."""
    if isinstance(encoder, ClipProbeEncoder):
        return lambda images: encoder.visual(normalise(images, encoder.image_mean, encoder.image_std))

    def vjepa(images: torch.Tensor) -> torch.Tensor:
        pixels = encoder.preprocessing.normalise(images)
        window = pixels[:, None].expand(-1, encoder.features_spec.num_frames, -1, -1, -1)
        hidden = encoder.backbone.embeddings(window)
        for block in encoder.backbone.layer:
            hidden = block(hidden, None)[0]
        return hidden

    return vjepa


def images_per_second(fn: Callable[[], object], batch: int, iters: int, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return batch * iters / (time.perf_counter() - start)


def measure(encoder: BrainEncoder, reducer: RoiReducer, args, device: str) -> dict:
    """Median images/s of the full encoder and its bare backbone, alternating repeats."""
    generator = torch.Generator().manual_seed(0)
    size = encoder.input_size
    images = torch.rand(args.batch_size, 3, size, size, generator=generator).to(device)
    backbone = bare_backbone(encoder)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda")
                else contextlib.nullcontext())
    runs = {"full": lambda: encoder.roi_responses(images, reducer), "backbone": lambda: backbone(images)}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode(), autocast:
        for fn in runs.values():
            for _ in range(args.warmup):
                fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                rates[name].append(images_per_second(fn, args.batch_size, args.iters, sync))
    full, bare = statistics.median(rates["full"]), statistics.median(rates["backbone"])
    return {
        "encoder": encoder.spec,
        "input_size": size,
        "protocol": encoder.protocol,
        "batch_size": args.batch_size,
        "images_per_s_full": round(full, 2),
        "images_per_s_backbone": round(bare, 2),
        "ratio_full_to_backbone": round(full / bare, 4),
        "head_and_reduction_cost_pct": round(100 * (1 - full / bare), 2),
        "repeats": {name: [round(r, 2) for r in values] for name, values in rates.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-size", action="store_true",
                        help="ViT-B-32 and ViT-g with random weights (needs a GPU)")
    parser.add_argument("--device", default=None, help="default: cuda for --real-size, else cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 32 tiny, 64 real")
    parser.add_argument("--iters", type=int, default=5, help="batches per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="output JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if args.real_size else "cpu")
    args.batch_size = args.batch_size or (64 if args.real_size else 32)
    kind = "gpu" if device.startswith("cuda") else "cpu"
    out = args.out or RESULTS / f"encoders_{kind}.json"

    torch.manual_seed(0)
    reducer = RoiReducer(load_roi_set("default"))
    if args.real_size:
        encoders = real_size_encoders(device)
    else:
        encoders = [load_encoder("clip-probe:tiny", device=device),
                    load_encoder("tribev2:tiny", device=device, protocol=TRIBE_PROTOCOL)]
    results = []
    for encoder in encoders:
        row = measure(encoder, reducer, args, device)
        print(json.dumps({k: v for k, v in row.items() if k != "repeats"}))
        results.append(row)
    report = {
        "benchmark": "encoders",
        "size": "real (random weights)" if args.real_size else "tiny (seeded random)",
        "device": torch.cuda.get_device_name() if kind == "gpu" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "dtype": "bfloat16 autocast" if kind == "gpu" else "float32",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
