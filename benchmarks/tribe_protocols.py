"""Cost of each TRIBE v2 still-image protocol, and how closely the protocols agree.

For each protocol (``paper``, ``static``, ``fast``; README, "How TRIBE v2 sees a still image"):

- ``images_per_s``: ``encoder(images)`` without gradients, batches of ``--batch-size``, the
  median of ``--repeats`` timed passes over the images after one untimed pass; ``windows``:
  backbone windows per image (distinct windows only, grey-only windows cached);
- ``peak_mb``: memory that pass takes on top of the loaded model (GPU: CUDA allocator peak;
  CPU: growth of the process's resident high-water mark, reset before each measurement after
  freed memory is handed back with ``malloc_trim``);
- ``grad_mb``: memory of one image's forward + backward to the pixels (what guidance and DRaFT
  take), the whole gradient path and truncated at ``--trunc-layer``;
- ``agreement``: for every pair of protocols, over the images, the Pearson r of each ROI's
  response (median and minimum over ROIs) and the median over vertices of the vertex-level r.

Default: ``tribev2:tiny`` on CPU (the agreement of random weights is a smoke test only).
``--real-size``: V-JEPA2 ViT-g + the released head layout with random weights (cost only).
``--weights DIR``: the released ``config.yaml`` and ``best.ckpt`` (with ``--image-dir``, the
agreement means something). ``--window-frames F`` gives every window F frames instead of 64: a
memory study, since a 64-frame ViT-g backward needs more memory than a small machine has;
``--checkpoint`` turns on gradient checkpointing; ``--protocols``, ``--no-grad`` and
``--no-agreement`` restrict the work.

    python benchmarks/tribe_protocols.py        # -> benchmarks/results/tribe_protocols_cpu.json
    python benchmarks/tribe_protocols.py --real-size --device cuda --images 64 --batch-size 8
    python benchmarks/tribe_protocols.py --weights /models/tribev2 --device cuda \\
        --image-dir /data/lamem/images --images 512
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from neuromem.analysis.correlation import pearson_r
from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.encoders import load_encoder
from neuromem.encoders.tribe_protocols import PROTOCOLS
from neuromem.encoders.tribev2 import (
    RELEASED_BACKBONE_CONFIG,
    RELEASED_BUILD_ARGS,
    RELEASED_CONFIG,
    TINY_BACKBONE_CONFIG,
    TINY_BUILD_ARGS,
    TINY_CONFIG,
    TribeV2Encoder,
    build_random_tribev2,
)

RESULTS = Path(__file__).parent / "results"
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def with_window_frames(config: dict, frames: int | None) -> dict:
    """``config`` with ``data.video_feature.num_frames`` set (None: unchanged)."""
    if frames is None:
        return config
    data = config["data"]
    return {**config, "data": {**data, "video_feature": {**data["video_feature"],
                                                        "num_frames": frames}}}


def build_encoder(args, device: str) -> TribeV2Encoder:
    if args.weights:
        encoder = load_encoder(f"tribev2:{args.weights}", device=device)
    else:
        layouts = ((RELEASED_BACKBONE_CONFIG, RELEASED_CONFIG, RELEASED_BUILD_ARGS, "vitg-random")
                   if args.real_size else
                   (TINY_BACKBONE_CONFIG, TINY_CONFIG, TINY_BUILD_ARGS, "tiny"))
        backbone, config, build_args, name = layouts
        encoder = build_random_tribev2(backbone, with_window_frames(config, args.window_frames),
                                       build_args, spec=f"tribev2:{name}")
    encoder.window_batch = args.window_batch
    encoder.gradient_checkpointing = args.checkpoint
    return encoder.to(device).requires_grad_(False).eval()


def load_images(args, size: int) -> torch.Tensor:
    """``--images`` images ``(N, 3, size, size)`` in [0, 1]: files of ``--image-dir`` or smooth
    random pictures (seeded)."""
    if args.image_dir:
        from neuromem.data.decode import decode_image

        paths = sorted(p for p in Path(args.image_dir).iterdir() if p.is_file())[: args.images]
        pixels = [decode_image(p.read_bytes(), size=size) for p in paths]
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(args.images, 3, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


class PeakMemory:
    """Memory taken by a block on top of what was in use when it started, MB."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            gc.collect()
            with open("/proc/self/clear_refs", "w") as fh:  # resets the high-water mark
                fh.write("5")
            self.start = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        self.mb = (peak - self.start) / 2**20


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def responses(encoder, images: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return torch.cat([encoder(images[i : i + batch_size].to(device)).cpu()
                          for i in range(0, len(images), batch_size)])


def throughput(encoder, images, args, device: str, autocast) -> dict:
    sync: Callable[[], None] = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with autocast():
        first = responses(encoder, images, args.batch_size, device)  # warms the grey cache
        rates = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            with PeakMemory(device) as memory:
                responses(encoder, images, args.batch_size, device)
            sync()
            rates.append(len(images) / (time.perf_counter() - start))
    plan = encoder.still_plan
    varying = np.unique(plan.rows, axis=0)
    windows = int(sum(not (row == 1).all() for row in varying))
    return {"images_per_s": round(statistics.median(rates), 4),
            "repeats": [round(r, 4) for r in rates], "windows": windows,
            "window_frames": int(plan.rows.shape[1]), "peak_mb": round(memory.mb, 1),
            "responses": first}


def gradient_memory(encoder, image: torch.Tensor, trunc_layer: int | None, device: str,
                    reducer: RoiReducer, autocast) -> dict:
    x = image[None].to(device).requires_grad_(True)
    start = time.perf_counter()
    with autocast(), PeakMemory(device) as memory:
        rois = encoder.roi_responses(x, reducer, trunc_layer=trunc_layer)
        rois[:, reducer.names.index("PPA")].sum().backward()
    return {"trunc_layer": trunc_layer, "grad_mb": round(memory.mb, 1),
            "seconds": round(time.perf_counter() - start, 2),
            "grad_abs_sum": float(x.grad.abs().sum())}


def columnwise_r(a_nv: np.ndarray, b_nv: np.ndarray) -> np.ndarray:
    """Pearson r of every column of ``a`` with the same column of ``b`` (over rows)."""
    a = a_nv - a_nv.mean(axis=0)
    b = b_nv - b_nv.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def agreement(results: dict[str, torch.Tensor], reducer: RoiReducer) -> list[dict]:
    rows = []
    names = list(results)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a = results[first].double().numpy()
            b = results[second].double().numpy()
            rois_a, rois_b = reducer(torch.from_numpy(a)).numpy(), reducer(torch.from_numpy(b)).numpy()
            roi_r = np.array([pearson_r(rois_a[:, r], rois_b[:, r]) for r in range(rois_a.shape[1])])
            vertex_r = columnwise_r(a, b)
            rows.append({"protocols": [first, second],
                         "roi_r_median": round(float(np.median(roi_r)), 4),
                         "roi_r_min": round(float(roi_r.min()), 4),
                         "vertex_r_median": round(float(np.nanmedian(vertex_r)), 4)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--real-size", action="store_true",
                      help="ViT-g + released head layout with random weights (cost only)")
    size.add_argument("--weights", type=Path, default=None,
                      help="folder with the released config.yaml and best.ckpt")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    parser.add_argument("--images", type=int, default=24, help="images timed and compared")
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="read images from this folder (default: seeded random pictures)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per encoder call")
    parser.add_argument("--window-batch", type=int, default=8, help="windows per backbone call")
    parser.add_argument("--window-frames", type=int, default=None,
                        help="frames per window instead of 64 (memory study; random weights)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median reported)")
    parser.add_argument("--trunc-layer", type=int, default=None,
                        help="truncation depth of the second gradient measurement "
                        "(default: half the backbone's depth)")
    parser.add_argument("--no-grad", action="store_true", help="skip the gradient measurements")
    parser.add_argument("--checkpoint", action="store_true",
                        help="gradient checkpointing of the backbone blocks")
    parser.add_argument("--no-agreement", action="store_true", help="skip the agreement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="output JSON")
    args = parser.parse_args(argv)
    if args.window_frames is not None and args.weights:
        parser.error("--window-frames builds random weights; it does not apply to --weights")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    kind = "gpu" if device.startswith("cuda") else "cpu"
    if kind == "cpu":
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    tag = "_real" if args.real_size else "_weights" if args.weights else ""
    frames_tag = f"_f{args.window_frames}" if args.window_frames else ""
    ckpt_tag = "_ckpt" if args.checkpoint else ""
    out = args.out or RESULTS / f"tribe_protocols_{kind}{tag}{frames_tag}{ckpt_tag}.json"

    def autocast():
        if kind == "gpu":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    reducer = RoiReducer(load_roi_set("default"))
    start = time.perf_counter()
    base = build_encoder(args, device)
    build_seconds = time.perf_counter() - start
    images = load_images(args, 256 if (args.real_size or args.weights) else 48)
    trunc_layer = args.trunc_layer or base.n_layers // 2
    rows, outputs = [], {}
    for protocol in args.protocols.split(","):
        encoder = base.with_protocol(protocol)
        row = {"protocol": protocol, **throughput(encoder, images, args, device, autocast)}
        outputs[protocol] = row.pop("responses")
        if not args.no_grad:
            row["gradient"] = [gradient_memory(encoder, images[0], k, device, reducer, autocast)
                               for k in (None, trunc_layer)]
        print(json.dumps(row), flush=True)
        rows.append(row)
    report = {
        "benchmark": "tribe_protocols",
        "size": ("real (random weights)" if args.real_size else
                 f"weights {args.weights}" if args.weights else "tiny (seeded random)"),
        "encoder_config": base.config(),
        "window_frames": args.window_frames or base.features_spec.num_frames,
        "gradient_checkpointing": args.checkpoint,
        "images": len(images),
        "image_source": str(args.image_dir) if args.image_dir else "seeded random pictures",
        "model_build_seconds": round(build_seconds, 1),
        "device": torch.cuda.get_device_name() if kind == "gpu" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "dtype": "bfloat16 autocast" if kind == "gpu" else "float32",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": rows,
        "agreement": None if args.no_agreement or len(outputs) < 2 else agreement(outputs, reducer),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["agreement"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
