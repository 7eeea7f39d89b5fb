"""Label each image's category (scene/object or your classes) by zero-shot CLIP or from a CSV.

``neuromem label-categories TABLE --out OUT`` reads the images of a score table (its ``source``
column, or ``--images ROOT`` + ``image_id``), classifies them by zero-shot CLIP in a Ray Data
actor pool (GPU actors when the cluster has GPUs) and writes a copy of the table to ``OUT``
with the ``category`` column (``--column``) set and a ``category_probability`` column (the
probability of the chosen class). With ``--csv FILE`` (columns ``image_id``, ``category`` and
optionally ``dataset``) the labels come from the file and no model runs.

The input table is never modified: ``OUT`` holds the same files, rows, row order, columns and
metadata (plus a record of the labelling under ``annotations``). Images that cannot be read get
a null label and are listed in ``OUT/_errors/label-categories.parquet``. An existing non-null
column is only replaced with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from neuromem.errors import InputError
from neuromem.probes.annotate import KEY_COLUMNS, image_rows, write_annotated
from neuromem.probes.features import ClipModelSpec, load_clip_model
from neuromem.probes.image_map import ERROR, ROW, decode_batch, failed_rows, map_images
from neuromem.probes.zero_shot import ZeroShotClassifier, parse_classes

log = logging.getLogger(__name__)

STAGE = "label-categories"
LABEL = "label"
PROBABILITY = "probability"


class LabelActor:
    """Ray actor: payloads → zero-shot label and its probability (null where decoding failed).

    Parameters
    ----------
    model : dict
        :class:`ClipModelSpec` fields.
    classes : dict
        Class name → prompts.
    """

    def __init__(self, model: dict[str, Any], classes: dict[str, list[str]]) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        clip, tokenizer = load_clip_model(ClipModelSpec(**model), device)
        self.classifier = ZeroShotClassifier(clip, tokenizer, classes)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        pixels, errors = decode_batch(batch, self.classifier.input_size)
        ok = [i for i, image in enumerate(pixels) if image is not None]
        labels = np.full(batch.num_rows, None, dtype=object)
        probabilities = np.full(batch.num_rows, np.nan, dtype=np.float32)
        if ok:
            images_b3hw = torch.from_numpy(np.stack([pixels[i] for i in ok])).permute(0, 3, 1, 2)
            names, probs = self.classifier.classify(images_b3hw.float() / 255.0)
            labels[ok] = names
            probabilities[ok] = probs
        return {
            ROW: batch.column(ROW).to_numpy(),
            LABEL: labels,
            PROBABILITY: probabilities,
            ERROR: np.array(errors, dtype=object),
        }


def labels_from_csv(path: str, keys: pd.DataFrame) -> pd.Series:
    """Labels of ``keys`` (``dataset``, ``image_id``) from a CSV; missing ids give null."""
    table = pd.read_csv(path, dtype=str)
    missing = [c for c in ("image_id", "category") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: the CSV needs columns image_id and category; missing {missing}")
    on = list(KEY_COLUMNS) if "dataset" in table.columns else ["image_id"]
    if table.duplicated(on).any():
        raise InputError(f"{path}: {on} repeat; give one category per image")
    merged = keys[list(KEY_COLUMNS)].merge(table[[*on, "category"]], on=on, how="left")
    return merged["category"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neuromem label-categories``."""
    parser.add_argument("table", help="score table (Parquet directory or file)")
    parser.add_argument("--out", required=True, help="new folder for the labelled copy")
    parser.add_argument("--images", default=None,
                        help="image root: read ROOT/<image_id> instead of the 'source' column")
    parser.add_argument("--csv", default=None,
                        help="take labels from a CSV (image_id, category[, dataset]) instead")
    parser.add_argument("--classes", default=None,
                        help="classes and prompts: 'scene=a photo of a scene|a landscape,"
                             "object=a photo of an object' (default: scene/object, 4 prompts each)")
    parser.add_argument("--column", default="category", help="column to write (default category)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing column that already holds values")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip model name or 'tiny'")
    parser.add_argument("--pretrained", default="openai",
                        help="open_clip pretrained tag or local file; '' for random weights")
    parser.add_argument("--seed", type=int, default=0, help="seed of random model weights")
    parser.add_argument("--batch-size", type=int, default=64, help="images per actor call")
    parser.add_argument("--actors", type=int, default=1, help="labelling actors")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")


def _check_column(table: str, column: str, overwrite: bool) -> None:
    from neuromem.scoring.table import open_table

    dataset = open_table(table)
    if column in dataset.schema.names and not overwrite:
        filled = dataset.count_rows() - dataset.to_table(columns=[column]).column(column).null_count
        if filled:
            raise InputError(
                f"column {column!r} already holds {filled} values; pass --overwrite to replace it "
                "or --column NAME to write another column"
            )


def run(args: argparse.Namespace) -> int:
    """Label the images and write the labelled copy of the table."""
    _check_column(args.table, args.column, args.overwrite)
    errors = None
    if args.csv is not None:
        keys = image_rows(args.table, columns=())
        labels = labels_from_csv(args.csv, keys)
        values = {args.column: pa.array(labels, pa.string(), from_pandas=True)}
        annotation: dict[str, Any] = {"command": STAGE, "column": args.column, "csv": str(args.csv)}
    else:
        import ray

        keys = image_rows(args.table, columns=() if args.images else ("source",))
        if args.images:
            root = os.fspath(args.images)
            keys["source"] = [str(Path(root) / image_id) for image_id in keys["image_id"]]
        classes = parse_classes(args.classes)
        model = ClipModelSpec(args.model, args.pretrained, args.seed)
        model.validate()
        if not ray.is_initialized():
            ray.init(address=args.address, include_dashboard=False)
        results = map_images(
            keys, LabelActor, {"model": model.to_dict(), "classes": {k: list(v) for k, v in classes.items()}},
            batch_size=args.batch_size, n_actors=args.actors,
        )
        errors = failed_rows(keys, results, STAGE)
        values = {
            args.column: pa.array(results[LABEL], pa.string(), from_pandas=True),
            f"{args.column}_probability": pa.array(
                results[PROBABILITY].to_numpy(np.float32), pa.float32(),
                mask=results[ERROR].notna().to_numpy(),
            ),
        }
        annotation = {"command": STAGE, "column": args.column, "model": model.to_dict(),
                      "classes": {k: list(v) for k, v in classes.items()}}
    counts = write_annotated(
        args.table, args.out, keys[list(KEY_COLUMNS)], values, annotation=annotation,
        errors=errors, stage=STAGE,
    )
    print(
        f"label-categories: {counts['rows']} rows in {counts['files']} files written to "
        f"{args.out}; {counts['rows_without_value']} rows without a label"
    )
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
