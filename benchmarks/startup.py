"""Where the first seconds of a small `neuromem score` go, and how this checkout compares with another.

A small job (300 images, ``clip-probe:tiny``, 2 cores) is all start-up: Python imports in the
driver, starting an embedded Ray, the actor's process and imports, the model build, then a
handful of batches. This benchmark runs the same small folder job (and, with ``--demo``, the
whole ``neuromem demo``) as a user would — a fresh process each time — ``--repeats`` times,
interleaving this checkout with ``--compare-with`` (another checkout, e.g. a ``git worktree`` of
an older commit) so both see the same machine load, and prints the median wall time of each
plus the start-up breakdown neuromem's summary reports (Ray, actor processes, model, first
batch) and the driver's import time (``python -X importtime``).

Example (before/after a change)::

    git worktree add /tmp/before <old-commit>
    python benchmarks/startup.py --compare-with /tmp/before --repeats 3 \\
        --out benchmarks/results/startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def driver_import_s(checkout: Path, env: dict) -> float:
    """Seconds to import the score command's module in a fresh interpreter."""
    text = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pipelines.score"],
                          env={**env, "PYTHONPATH": str(checkout)}, cwd=checkout,
                          capture_output=True, text=True, check=True).stderr
    cumulative = [int(m.group(1)) for m in re.finditer(r"\|\s+(\d+) \| pipelines\.score$", text,
                                                       re.MULTILINE)]
    return cumulative[-1] / 1e6 if cumulative else float("nan")


def run_once(checkout: Path, command: list[str], env: dict) -> tuple[float, str]:
    """Wall time of one fresh-process run, s, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(command, env={**env, "PYTHONPATH": str(checkout)}, cwd=checkout,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {checkout}:\n{done.stderr[-2000:]}")
    return wall, done.stdout


def startup_breakdown(printed: str) -> dict[str, float]:
    """The ``start-up: ray 3.1 s, ...`` figures of a score summary (empty for older versions)."""
    match = re.search(r"start-up: ([^)]*)\)", printed)
    if not match:
        return {}
    return {name.strip(): float(value) for name, value in
            re.findall(r"([a-z ]+?) ([\d.]+) s", match.group(1))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images in the folder")
    parser.add_argument("--repeats", type=int, default=3, help="runs per checkout")
    parser.add_argument("--compare-with", default=None,
                        help="another checkout to time the same way (before/after)")
    parser.add_argument("--demo", action="store_true", help="also time `neuromem demo`")
    parser.add_argument("--work", default="/tmp/neuromem_startup", help="data and outputs")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)

    from neuromem.data import synthetic

    work = Path(args.work)
    folder = work / f"folder_{args.n}"
    if not folder.is_dir():
        synthetic.write_image_folder(folder, n_images=args.n, seed=0, csv=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    checkouts = {"this": REPO}
    if args.compare_with:
        checkouts["compared"] = Path(args.compare_with).resolve()
    jobs = {"score_300": lambda out: [
        sys.executable, "-m", "pipelines.score", "--dataset", "folder", "--root", str(folder),
        "--encoder", "clip-probe:tiny", "--out", str(out), "--no-progress"]}
    if args.demo:
        jobs["demo"] = lambda out: [sys.executable, "-m", "neuromem.cli", "demo", "--out", str(out)]
    load_before = os.getloadavg()[0]
    results: dict = {name: {"driver_import_s": driver_import_s(path, env)}
                     for name, path in checkouts.items()}
    for job, make_command in jobs.items():
        for name in checkouts:
            results[name][job] = {"wall_s": [], "startup": []}
        for k in range(args.repeats):
            for name, path in checkouts.items():  # interleaved: same load for both
                out = work / f"out_{name}_{job}_{k}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                wall, printed = run_once(path, make_command(out), env)
                results[name][job]["wall_s"].append(wall)
                results[name][job]["startup"].append(startup_breakdown(printed))
        for name in checkouts:
            runs = results[name][job]
            runs["median_wall_s"] = statistics.median(runs["wall_s"])
            print(f"{job:>9} {name:>8}: median {runs['median_wall_s']:.1f} s over "
                  f"{args.repeats} runs {[round(w, 1) for w in runs['wall_s']]}; driver import "
                  f"{results[name]['driver_import_s']:.2f} s; start-up {runs['startup'][-1]}")
    record = {"n_images": args.n, "repeats": args.repeats, "cpus": os.cpu_count(),
              "checkouts": {k: str(v) for k, v in checkouts.items()}, "results": results,
              "load_average_1min": [load_before, os.getloadavg()[0]],
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
