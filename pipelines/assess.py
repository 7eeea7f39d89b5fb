"""Add ResMem memorability scores (``memorability_resmem``) to a score table with Ray Data.

``neuromem assess TABLE --out OUT`` reads the images of a score table (its ``source`` column, or
``--images ROOT`` + ``image_id``), scores them with ResMem (Needell & Bainbridge 2022; the
``resmem`` package ships its weights, so this runs offline) in a Ray Data actor pool (GPU actors
when the cluster has GPUs), and writes a copy of the table to ``OUT`` with a float32
``memorability_resmem`` column in [0, 1]. Images are preprocessed exactly as the ``resmem``
package does (Resize(256, 256) → CenterCrop(227) → ToTensor, no normalisation, on the decoded
full-size image).

The input table is never modified: ``OUT`` holds the same files, rows, row order, columns and
metadata (plus a record of the scoring under ``annotations``). Images that cannot be read get a
null score and are listed in ``OUT/_errors/assess.parquet``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neuromem.errors import InputError
from neuromem.probes.annotate import KEY_COLUMNS, image_rows, write_annotated
from neuromem.probes.image_map import ERROR, ROW, decode_batch, failed_rows, map_images

STAGE = "assess"
COLUMN = "memorability_resmem"


class ResMemActor:
    """Ray actor: payloads → ResMem memorability (NaN and an ``error`` where decoding failed)."""

    def __init__(self) -> None:
        from neuromem.memorability.resmem import ResMemAssessor

        self.assessor = ResMemAssessor("cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        pixels, errors = decode_batch(batch, None)
        ok = [i for i, image in enumerate(pixels) if image is not None]
        scores = np.full(batch.num_rows, np.nan, dtype=np.float32)
        if ok:
            scores[ok] = self.assessor.score_pixels([pixels[i] for i in ok])
        return {ROW: batch.column(ROW).to_numpy(), COLUMN: scores, ERROR: np.array(errors, dtype=object)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem assess``."""
    parser.add_argument("table", help="score table (Parquet directory or file)")
    parser.add_argument("--out", required=True, help="new folder for the scored copy")
    parser.add_argument("--images", default=None,
                        help="image root: read ROOT/<image_id> instead of the 'source' column")
    parser.add_argument("--batch-size", type=int, default=32, help="images per actor call")
    parser.add_argument("--actors", type=int, default=1, help="ResMem actors")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")


def run(args: argparse.Namespace) -> int:
    """Score the images with ResMem and write the scored copy of the table."""
    import ray

    from neuromem.memorability.resmem import ResMemAssessor
    from neuromem.scoring.table import open_table

    if COLUMN in open_table(args.table).schema.names:
        raise InputError(f"table {args.table!r} already has a {COLUMN!r} column")
    keys = image_rows(args.table, columns=() if args.images else ("source",))
    if args.images:
        keys["source"] = [str(Path(os.fspath(args.images)) / i) for i in keys["image_id"]]
    if not ray.is_initialized():
        ray.init(address=args.address, include_dashboard=False)
    results = map_images(keys, ResMemActor, {}, batch_size=args.batch_size, n_actors=args.actors)
    failed = results[ERROR].notna().to_numpy()
    values = {COLUMN: pa.array(results[COLUMN].to_numpy(np.float32), pa.float32(), mask=failed)}
    annotation: dict[str, Any] = {"command": STAGE, "column": COLUMN, **ResMemAssessor.provenance()}
    counts = write_annotated(
        args.table, args.out, keys[list(KEY_COLUMNS)], values, annotation=annotation,
        errors=failed_rows(keys, results, STAGE), stage=STAGE,
    )
    scored = results[COLUMN][~failed]
    print(
        f"assess: {counts['rows']} rows in {counts['files']} files written to {args.out}; "
        f"{int(failed.sum())} images failed; memorability_resmem mean {scored.mean():.3f}"
    )
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
