"""Layer extraction: the image-map engine (``neuromem layers``' extraction) vs a plain PyTorch loop.

Both extract every layer of one network (default: torchvision ``densenet121`` with random
weights: 366 layers) for the same LaMem-layout JPEGs: the same payload reading and decoding
(:func:`neuromem.data.readers.load_payloads`, :func:`neuromem.data.batch.decode_rows`), the same
:class:`neuromem.representations.features.LayerFeatureModel` (hooks pooling every layer) and the
same Parquet parts (:class:`neuromem.runtime.storage.PartWriter`, one raw column per layer).
Ray is started once, before the first run size. Reported per run size:

- end-to-end throughput in layers × images per second and its ratio engine / loop (the engine's
  wall time includes the layer discovery, actor start and model build; the loop's its model
  build);
- steady-state throughput from the batch times (:func:`neuromem.runtime.throughput.steady_state`
  of the actors' :attr:`MapResult.batches`, and of the loop's batches), its ratio, and how many
  batches the steady interval holds (no figure under 5);
- peak resident memory of the actor processes (sampled every 0.2 s) and of this process for the
  loop, at two image counts: equal peaks show that memory is bounded by the batch, not by the
  number of images × layers.

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
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def plain_loop(spec: str, rows, folder: str, *, image_size: int, batch_size: int,
               max_features: int) -> dict:
    """Extract in this process: read, decode, forward with hooks, write one part per batch."""
    from neuromem.data.batch import decode_rows
    from neuromem.data.readers import load_payloads
    from neuromem.data.schema import rows_to_arrow
    from neuromem.representations.features import LayerFeatureModel, discover
    from neuromem.representations.layers import Pooling
    from neuromem.runtime.storage import PartWriter
    from neuromem.runtime.throughput import BatchTime, steady_state

    start = time.perf_counter()
    pooling = Pooling(2, max_features, 0)
    layers = discover(spec, image_size=image_size, pooling=pooling, include=None)
    model = LayerFeatureModel(spec, image_size, 2, max_features, 0, layers)
    writer = PartWriter(folder)
    writer.prepare()
    table = rows_to_arrow(rows)
    batches = []
    for first in range(0, table.num_rows, batch_size):
        began = time.time()
        decoded = decode_rows(load_payloads(table.slice(first, batch_size)), model.input_size, 0)
        out = model(decoded)
        for name in out.column_names:
            decoded.rows = decoded.rows.append_column(name, out.column(name))
        writer.write(decoded.rows)
        batches.append(BatchTime("loop", began, time.time(), decoded.rows.num_rows, {}))
    return {"wall_s": time.perf_counter() - start, "layers": len(layers),
            "steady": steady_state(batches).to_dict(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class ActorMemory:
    """Peak resident memory of this machine's Ray worker processes, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(self.interval_s):
            for process in psutil.process_iter(["name", "cmdline"]):
                try:
                    command = " ".join(process.info["cmdline"] or [])
                    if "ray::" in command or "ray::" in (process.info["name"] or ""):
                        rss = process.memory_info().rss / 2**20
                        self.peak_mb = max(self.peak_mb, rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue

    def __enter__(self) -> ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def engine_run(spec: str, rows, folder: str, *, image_size: int, batch_size: int,
               max_features: int) -> dict:
    """Extract with the image-map engine in parts mode, as ``neuromem layers`` does."""
    from neuromem.jobs.image_map import ModelRecipe, PartsOutput, PoolOptions, map_images
    from neuromem.representations.features import build_layer_features, discover
    from neuromem.representations.layers import Pooling

    start = time.perf_counter()
    layers = discover(spec, image_size=image_size, pooling=Pooling(2, max_features, 0),
                      include=None)
    recipe = ModelRecipe(build_layer_features, {
        "spec": spec, "image_size": image_size, "grid": 2, "max_features": max_features,
        "seed": 0, "layers": layers})
    with ActorMemory() as memory:
        result = map_images(rows, recipe,
                            pool=PoolOptions(actors=1, batch_size=batch_size,
                                             torch_threads=os.cpu_count() or 1),
                            parts=PartsOutput(folder, rows_per_part=batch_size), progress=False)
    return {"wall_s": time.perf_counter() - start, "layers": len(layers),
            "first_result_s": result.first_result_s, "steady": result.steady.to_dict(),
            "actor_peak_rss_mb": memory.peak_mb, "errors": result.n_errors}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="torchvision:densenet121")
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
    from neuromem.data.schema import BASE_COLUMNS
    from neuromem.data.synthetic import write_lamem
    from neuromem.jobs.session import ray_session

    settings = {"image_size": args.image_size, "batch_size": args.batch_size,
                "max_features": args.max_features}
    results = []
    with tempfile.TemporaryDirectory() as tmp, ray_session():
        write_lamem(Path(tmp, "lamem"), n_images=max(args.sizes), image_size=96)
        all_rows = list_lamem(Path(tmp, "lamem"))[list(BASE_COLUMNS)]
        for n in args.sizes:
            rows = all_rows.iloc[:n]
            engine = engine_run(args.network, rows, str(Path(tmp, f"engine_{n}")), **settings)
            loop = plain_loop(args.network, rows, str(Path(tmp, f"loop_{n}")), **settings)
            engine_rate = engine["layers"] * n / engine["wall_s"]
            loop_rate = loop["layers"] * n / loop["wall_s"]
            steady_engine = engine["steady"]["rows_per_s"]
            steady_loop = loop["steady"]["rows_per_s"]
            out_mb = sum(p.stat().st_size
                         for p in Path(tmp, f"engine_{n}").glob("*.parquet")) / 2**20
            results.append({
                "images": n, "layers": engine["layers"],
                "engine_wall_s": round(engine["wall_s"], 2),
                "engine_first_result_s": round(engine["first_result_s"] or 0.0, 2),
                "engine_layer_images_per_s": round(engine_rate, 1),
                "loop_wall_s": round(loop["wall_s"], 2),
                "loop_layer_images_per_s": round(loop_rate, 1),
                "ratio_end_to_end": round(engine_rate / loop_rate, 3),
                "engine_steady_images_per_s": steady_engine and round(steady_engine, 2),
                "loop_steady_images_per_s": steady_loop and round(steady_loop, 2),
                "ratio_steady": (round(steady_engine / steady_loop, 3)
                                 if steady_engine and steady_loop else None),
                "engine_steady_batches": engine["steady"]["n_batches"],
                "loop_steady_batches": loop["steady"]["n_batches"],
                "engine_actor_peak_rss_mb": round(engine["actor_peak_rss_mb"], 1),
                "loop_process_peak_rss_mb": round(loop["peak_rss_mb"], 1),
                "features_on_disk_mb": round(out_mb, 1),
            })
            print(json.dumps(results[-1]))
    record = {
        "benchmark": "layer_scan", "network": args.network, **settings,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "cuda": torch.cuda.is_available(),
                    "load_average_1min": round(os.getloadavg()[0], 1)},
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "notes": "Ray started once before the runs. Engine wall time includes layer discovery, "
                 "actor start and model build; the loop's includes its model build. Steady "
                 "figures need at least 5 batches inside the interval where every worker is "
                 "busy (None otherwise). The loop's peak RSS is this process's (it also ran the "
                 "driver side); the engine's is the largest Ray worker process's, sampled.",
        "results": results,
    }
    if args.save:
        Path(args.save).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
