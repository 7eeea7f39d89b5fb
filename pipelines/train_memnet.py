"""Train networks on memorability, categories or both (Ray Train) and benchmark memorability assessors.

For each LaMem split ``k`` (``--split k`` or ``--split all`` for 1..5) a backbone
(``timm:NAME``, ``torchvision:NAME``, ``open_clip:NAME``, optionally ``@WEIGHTS``) with its
classifier removed gets a memorability head, a category head or both
(:mod:`neuromem.representations.memnet`) and is fine-tuned on ``train_k`` with Ray Train
(``TorchTrainer``, DDP; gloo on CPU, NCCL on GPU). Images are decoded by Ray Data and streamed
to the workers' shards. Rank 0 writes a checkpoint folder every epoch
(``model.safetensors`` + ``config.json``); the last one is copied to ``OUT/split_k/``. The
driver then predicts ``test_k`` and reports Spearman ρ.

``OUT/assess.parquet`` is the memorability-assessor benchmark: one row per assessor and split
(``assessor, split, rho, n``); ``--resmem`` adds the pretrained ResMem (weights from the
``resmem`` wheel, offline) scored on the same test splits. Trained checkpoints are layer scan
models: ``neuromem layers --model memnet:OUT/split_1 --model memnet:OTHER/split_1 --compare``
compares variants layer by layer (CKA, neural predictivity, unique variance).

Example::

    neuromem train-memnet --lamem-root data/lamem --backbone timm:resnet50@/w/r50.safetensors \\
        --task both --categories categories.csv --split all --epochs 10 --workers 4 --out runs/both
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.cli import run_module
from neuromem.errors import InputError
from neuromem.representations.memnet import TASKS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem train-memnet``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--table", help="score table or Parquet of LaMem rows "
                                        "(image_id, source, memorability, splits, category)")
    source.add_argument("--lamem-root", help="LaMem folder (images/, splits/)")
    parser.add_argument("--categories", default=None,
                        help="CSV with image_id, category (fills the category labels)")
    parser.add_argument("--backbone", default="timm:resnet50", help="LIBRARY:NAME[@WEIGHTS]")
    parser.add_argument("--task", choices=TASKS, default="memorability")
    parser.add_argument("--memorability-weight", type=float, default=1.0)
    parser.add_argument("--category-weight", type=float, default=1.0)
    parser.add_argument("--split", default="1", help="LaMem split number 1..5, or 'all'")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="per worker")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--resmem", action="store_true",
                        help="also score the test splits with the pretrained ResMem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder (local or shared storage)")
    parser.add_argument("--address", default=None, help="Ray address (default: local Ray)")


# ----------------------------------------------------------------------------------------------
# Rows


def load_rows(
    table: str | None, lamem_root: str | None, categories: str | None, limit: int | None
) -> pd.DataFrame:
    """LaMem rows with ``image_id, source, memorability, splits, category``."""
    if table is not None:
        from pipelines.layer_scan import read_rows

        rows = read_rows(table, lamem_root=None, limit=None)
    else:
        from neuromem.data.lamem import list_lamem

        rows = list_lamem(lamem_root)
    if categories is not None:
        labels = pd.read_csv(categories, dtype={"image_id": str}).set_index("image_id")["category"]
        rows["category"] = rows["image_id"].map(labels)
    for column in ("memorability", "splits"):
        if column not in rows or rows[column].isna().all():
            raise InputError(f"training needs LaMem's {column!r} column; the rows have none")
    if "category" not in rows:
        rows["category"] = None
    rows = rows[rows["memorability"].notna()].reset_index(drop=True)
    return rows.iloc[:limit].reset_index(drop=True) if limit is not None else rows


def category_names(rows: pd.DataFrame) -> list[str]:
    """Sorted distinct category labels (nulls left out)."""
    return sorted(str(c) for c in rows["category"].dropna().unique())


def split_rows(rows: pd.DataFrame, k: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``train_k`` and ``test_k`` rows."""
    member = rows["splits"].fillna("").str.split(",")
    train = rows[member.apply(lambda s: f"train_{k}" in s)]
    test = rows[member.apply(lambda s: f"test_{k}" in s)]
    if train.empty or test.empty:
        raise InputError(f"LaMem split {k}: no train_{k}/test_{k} rows in the table")
    return train.reset_index(drop=True), test.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Ray Data: decoded images for the workers


def decode_batch(batch: pa.Table, size: int, categories: list[str]) -> dict[str, np.ndarray]:
    """``map_batches`` function: payloads → ``pixels`` (B, S, S, 3) uint8, targets."""
    from neuromem.data.decode import decode_image

    pixels = np.stack([
        decode_image(p, m, size)
        for p, m in zip(batch.column("payload").to_pylist(), batch.column("media").to_pylist(),
                        strict=True)
    ])
    index = {c: i for i, c in enumerate(categories)}
    labels = [index.get(c, -1) if c is not None else -1 for c in batch.column("category").to_pylist()]
    return {
        "pixels": pixels,
        "memorability": batch.column("memorability").to_numpy().astype(np.float32),
        "category": np.asarray(labels, dtype=np.int64),
    }


def image_dataset(rows: pd.DataFrame, size: int, categories: list[str], batch_size: int):
    """A Ray Dataset of decoded training images."""
    import ray

    from neuromem.data.readers import load_payloads

    frame = rows[["image_id", "source", "memorability", "category"]].copy()
    frame["category"] = frame["category"].astype(object).where(frame["category"].notna(), None)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return ray.data.from_arrow(table).map_batches(load_payloads, batch_size=batch_size,
                                                  batch_format="pyarrow").map_batches(
        decode_batch, batch_size=batch_size, batch_format="pyarrow",
        fn_kwargs={"size": size, "categories": categories})


# ----------------------------------------------------------------------------------------------
# Ray Train loop


def train_loop(config: dict) -> None:
    """Per-worker training loop (DDP via ``ray.train.torch.prepare_model``)."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    from neuromem.encoders.preprocessing import normalise
    from neuromem.representations.memnet import build_memnet, memnet_loss, save_memnet

    torch.manual_seed(config["seed"])
    net, net_config = build_memnet(config["backbone"], config["task"],
                                   len(config["categories"]), image_size=config["image_size"],
                                   seed=config["seed"])
    model = prepare_model(net)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                                  weight_decay=config["weight_decay"])
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(config["epochs"]):
        model.train()
        total, count = 0.0, 0
        for batch in shard.iter_torch_batches(batch_size=config["batch_size"], device=device):
            images = batch["pixels"].permute(0, 3, 1, 2).float().div(255)
            images = normalise(images, net_config["mean"], net_config["std"])
            loss = memnet_loss(model(images), batch["memorability"], batch["category"],
                               memorability_weight=config["memorability_weight"],
                               category_weight=config["category_weight"])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss) * len(images)
            count += len(images)
        metrics = {"epoch": epoch, "train_loss": total / max(count, 1)}
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                unwrapped = model.module if hasattr(model, "module") else model
                save_memnet(folder, unwrapped, {**net_config, "categories": config["categories"],
                                                "training": config["training"], **metrics})
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def train_split(rows: pd.DataFrame, k: str, args: argparse.Namespace, out: Path) -> Path:
    """Train on ``train_k``; return the checkpoint folder ``out/split_k``."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from neuromem.networks import load_model

    train, _ = split_rows(rows, k)
    categories = category_names(rows) if args.task != "memorability" else []
    size = args.image_size or load_model(args.backbone).image_size
    training = {k_: v for k_, v in vars(args).items() if not k_.startswith("_")}
    config = {
        "backbone": args.backbone, "task": args.task, "categories": categories,
        "image_size": size, "seed": args.seed, "lr": args.lr, "weight_decay": args.weight_decay,
        "epochs": args.epochs, "batch_size": args.batch_size,
        "memorability_weight": args.memorability_weight,
        "category_weight": args.category_weight,
        "training": {**training, "split": k, "n_train": len(train)},
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
        run_config=RunConfig(name=f"memnet_split_{k}", storage_path=str(out.resolve() / "ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
        datasets={"train": image_dataset(train, size, categories, args.batch_size)},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise InputError(f"split {k}: training produced no checkpoint ({result.error})")
    target = out / f"split_{k}"
    if target.exists():
        shutil.rmtree(target)
    with result.checkpoint.as_directory() as folder:
        shutil.copytree(folder, target)
    return target


# ----------------------------------------------------------------------------------------------
# Assessment


def predict_memorability(checkpoint: str | os.PathLike, rows: pd.DataFrame, batch_size: int = 64) -> np.ndarray:
    """Memorability predicted by a trained checkpoint for ``rows`` (decoded here, CPU/GPU)."""
    import torch

    from neuromem.data.decode import decode_image
    from neuromem.data.readers import read_bytes
    from neuromem.encoders.preprocessing import normalise
    from neuromem.representations.memnet import load_memnet

    net, config = load_memnet(checkpoint)
    if net.memorability_head is None:
        raise InputError(f"{checkpoint} was trained on categories only: no memorability head")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    predictions = []
    for start in range(0, len(rows), batch_size):
        sources = rows["source"].iloc[start:start + batch_size]
        pixels = np.stack([decode_image(read_bytes(s), size=config["image_size"]) for s in sources])
        images = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div(255)
        with torch.inference_mode():
            out = net(normalise(images, config["mean"], config["std"]))
        predictions.append(out["memorability"].float().cpu().numpy())
    return np.concatenate(predictions)


def resmem_predictions(rows: pd.DataFrame, batch_size: int = 32) -> np.ndarray:
    """Memorability predicted by the pretrained ResMem (``neuromem.memorability``)."""
    import torch

    from neuromem.data.decode import decode_image
    from neuromem.data.readers import read_bytes
    from neuromem.memorability import ResMemAssessor

    assessor = ResMemAssessor("cuda" if torch.cuda.is_available() else "cpu")
    scores = [
        assessor.score_pixels([decode_image(read_bytes(s)) for s in
                               rows["source"].iloc[start:start + batch_size]])
        for start in range(0, len(rows), batch_size)
    ]
    return np.concatenate(scores)


def run(args: argparse.Namespace) -> int:
    """Train on each requested split, then write the assessor table."""
    from scipy import stats

    from neuromem.scoring.job import init_ray

    rows = load_rows(args.table, args.lamem_root, args.categories, args.limit)
    splits = [str(k) for k in range(1, 6)] if args.split == "all" else [args.split]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    started = init_ray(args.address)
    try:
        for k in splits:
            checkpoint = train_split(rows, k, args, out)
            _, test = split_rows(rows, k)
            assessor = f"memnet:{args.backbone}:{args.task}"
            if args.task != "category":
                rho = stats.spearmanr(predict_memorability(checkpoint, test),
                                      test["memorability"]).statistic
                records.append({"assessor": assessor, "split": f"test_{k}", "rho": float(rho),
                                "n": len(test), "checkpoint": str(checkpoint)})
                logger.info("split %s: test Spearman rho %.3f (n=%d)", k, rho, len(test))
            if args.resmem:
                rho = stats.spearmanr(resmem_predictions(test), test["memorability"]).statistic
                records.append({"assessor": "resmem", "split": f"test_{k}", "rho": float(rho),
                                "n": len(test), "checkpoint": ""})
    finally:
        if started:
            import ray

            ray.shutdown()
    table = pd.DataFrame.from_records(records, columns=["assessor", "split", "rho", "n", "checkpoint"])
    table.to_parquet(out / "assess.parquet", index=False)
    summary = table.groupby("assessor")["rho"].agg(["mean", "std", "count"]).reset_index()
    (out / "assess.json").write_text(json.dumps(summary.to_dict("records"), indent=1))
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
