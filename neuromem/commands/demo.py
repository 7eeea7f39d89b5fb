"""Run the main job offline on a generated sample set: images → tiny encoder on Ray → Parquet.

``make demo`` runs ``neuromem demo --out demo_out``. Nothing is downloaded: the images are
drawn by :mod:`neuromem.data.synthetic` (scene-like and object-like, with planted memorability
scores and categories) and the encoder is ``clip-probe:tiny``, whose weights are seeded-random.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

DEMO_ENCODER = "clip-probe:tiny"
PREVIEW_ROIS = ("roi_V1", "roi_FFA", "roi_PPA", "roi_LOC")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem demo``."""
    parser.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    parser.add_argument("--n-images", type=int, default=300,
                        help="sample images to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample set")


def run(args: argparse.Namespace) -> int:
    """Generate the sample set, score it, print a preview and what to do next."""
    from neuromem.data import synthetic
    from neuromem.jobs.score import ScoreConfig, run_score
    from neuromem.scoring.table import ERRORS_DIR, open_table, read_metadata, read_vertices

    start = time.perf_counter()
    out = Path(args.out).absolute()
    images = out / "images"
    table_dir = out / "scores"
    print(f"1/3 writing {args.n_images} sample images (scene-like and object-like) to {images}")
    synthetic.write_image_folder(images, n_images=args.n_images, seed=args.seed, csv=True)
    print(f"2/3 scoring them with {DEMO_ENCODER} on a local Ray actor pool")
    summary = run_score(
        ScoreConfig(
            dataset="folder",
            root=str(images),
            scores=str(images / "scores.csv"),
            encoder=DEMO_ENCODER,
            out=str(table_dir),
            keep_vertices=True,
            batch_size=50,
            rows_per_part=100,
            gpus_per_actor=0,
        ),
        argv=["neuromem", "demo", "--out", str(args.out)],
    )
    print(summary.format())
    dataset = open_table(table_dir)
    rois = [name for name in PREVIEW_ROIS if name in dataset.schema.names]
    frame = dataset.to_table(
        columns=["image_id", "category", "memorability", "encoder", *rois]
    ).to_pandas().sort_values("image_id", ignore_index=True)
    vertices_nv = read_vertices(table_dir, rows=(0, 5))
    metadata = read_metadata(table_dir)
    with pd.option_context("display.width", 120, "display.max_columns", 12):
        print("\n3/3 the score table (pandas):")
        print(frame.head(8).to_string(index=False))
        print(f"\n{len(frame)} rows; mean ROI response by category:")
        print(frame.groupby("category")[rois].mean().round(4).to_string())
    print(
        f"""
Where things are
  images        {images}  (+ scores.csv: image_id, memorability, category)
  score table   {table_dir}  (Parquet; one float32 column per ROI, float16 `vertices`)
  failed inputs {table_dir / ERRORS_DIR}  ({summary.errors} this run)
  encoder       {metadata.get("encoder", {}).get("spec")} (weights sha256 {str(metadata.get("encoder", {}).get("weights_sha256"))[:12]}...)
  vertices      read_vertices(...) -> array of shape {vertices_nv.shape[1:]} per row

Read it back
  import pandas as pd, neuromem
  df = pd.read_parquet("{table_dir}", columns=["image_id", "memorability", "roi_FFA"])
  vertices = neuromem.read_vertices("{table_dir}")          # (N, 20484) float16

NOTE: {DEMO_ENCODER} has seeded-RANDOM, UNTRAINED weights. These numbers show that the
pipeline runs; they say nothing about the brain. For real predictions use TRIBE v2 weights
(or a fitted CLIP probe) that you have locally:

  neuromem score --dataset folder --root {images} --scores {images / "scores.csv"} \\
      --encoder tribev2:/path/to/tribev2 --out scores/mine --keep-vertices
  neuromem score --dataset lamem --root /data/lamem --encoder tribev2 --out scores/lamem \\
      --actors 4 --gpus-per-actor 1        # add --address or use `ray job submit` for a cluster

Next steps
  neuromem decompose --help     # which cortical regions explain memorability in a score table
  neuromem rois --help          # the ROI set and how to define your own
  neuromem game demo --out game_demo   # what people remember: the memory game, simulated

demo finished in {time.perf_counter() - start:.0f} s"""
    )
    return 0
