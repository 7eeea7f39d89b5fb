"""Layer extraction: the Ray Data actor job of ``neuromem layers`` vs a plain PyTorch loop.

Both extract every layer of one model (default: torchvision ``densenet121`` with random
weights: 366 layers) for the same LaMem-layout JPEGs, pool them the same way
(:class:`neuromem.representations.layers.Pooling`) and write the same Parquet parts (one
``fixed_size_binary`` column per layer). Reported per run size:

- throughput in layers × images per second, end to end (the Ray side includes cluster start,
  actor start and model build; the loop includes model build);
- ratio = Ray throughput / loop throughput;
- peak resident memory (``ru_maxrss``) of the process doing the extraction (the actor for
  Ray, this process for the loop), at two image counts: equal peaks show that memory is
  bounded by the batch, not by the number of images × layers.

Example::

    python benchmarks/layer_scan.py --save benchmarks/results/layer_scan_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_loop(spec: str, rows, folder: str, *, image_size: int, batch_size: int,
               max_features: int) -> dict:
    """Extract in this process: decode, forward with hooks, write one part per batch."""
    import numpy as np
    import pyarrow as pa
    import torch

    from neuromem.data.decode import decode_image
    from neuromem.data.readers import read_bytes
    from neuromem.networks import load_model
    from neuromem.representations.layers import LayerExtractor, Pooling
    from pipelines.layer_scan import features_to_arrow, write_part

    start = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    model = load_model(spec, image_size=image_size)
    extractor = LayerExtractor(model, Pooling(2, max_features, 0))
    for i in range(0, len(rows), batch_size):
        part = rows.iloc[i:i + batch_size]
        pixels = np.stack([decode_image(read_bytes(s), size=image_size) for s in part["source"]])
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        columns = {"image_id": pa.array(part["image_id"].tolist())}
        for name, values in extractor(images).items():
            columns[name] = features_to_arrow(values.numpy())
        write_part(pa.table(columns), folder)
    return {"wall_s": time.perf_counter() - start, "layers": len(extractor.layers),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:densenet121")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256],
                        help="image counts (default: 64 256)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-features", type=int, default=1024)
    parser.add_argument("--save", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from neuromem.data.lamem import list_lamem
    from neuromem.data.synthetic import write_lamem
    from pipelines.layer_scan import extract_features

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_lamem(Path(tmp, "lamem"), n_images=max(args.sizes), image_size=96)
        all_rows = list_lamem(Path(tmp, "lamem"))
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for n in args.sizes:
                rows = all_rows.iloc[:n]
                start = time.perf_counter()
                summary = extract_features(
                    args.model, rows, str(Path(tmp, f"ray_{n}")), image_size=args.image_size,
                    max_features=args.max_features, batch_size=args.batch_size,
                )
                ray_wall = time.perf_counter() - start
                loop = plain_loop(args.model, rows, str(Path(tmp, f"loop_{n}")),
                                  image_size=args.image_size, batch_size=args.batch_size,
                                  max_features=args.max_features)
                ray_rate = summary.layers * n / ray_wall
                loop_rate = loop["layers"] * n / loop["wall_s"]
                out_mb = sum(p.stat().st_size for p in Path(tmp, f"ray_{n}").glob("*.parquet")) / 2**20
                results.append({
                    "images": n, "layers": summary.layers,
                    "ray_wall_s": round(ray_wall, 2),
                    "ray_actor_busy_s": round(summary.actor_seconds, 2),
                    "ray_layer_images_per_s": round(ray_rate, 1),
                    "loop_wall_s": round(loop["wall_s"], 2),
                    "loop_layer_images_per_s": round(loop_rate, 1),
                    "ratio_ray_over_loop": round(ray_rate / loop_rate, 3),
                    "ray_actor_peak_rss_mb": round(summary.actor_peak_rss_mb, 1),
                    "loop_process_peak_rss_mb": round(loop["peak_rss_mb"], 1),
                    "features_on_disk_mb": round(out_mb, 1),
                })
                print(json.dumps(results[-1]))
        finally:
            ray.shutdown()
    record = {
        "benchmark": "layer_scan", "model": args.model, "image_size": args.image_size,
        "batch_size": args.batch_size, "max_features": args.max_features,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "cuda": torch.cuda.is_available(),
                    "load_average_1min": round(os.getloadavg()[0], 1)},
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "notes": "loop peak RSS is this process's (it also ran the driver side); the actor's is "
                 "its own process. Ray wall includes actor start and model build.",
        "results": results,
    }
    if args.save:
        Path(args.save).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
