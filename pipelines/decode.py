"""Decode images from brain signals: contrastive brain encoders and 200-way retrieval (Ray Train).

Seed 003's experiment. Brain signals come from a score table (measured or predicted: the
``vertices`` column or the ROI columns, one row per presentation, a ``subject`` column when
there are several subjects) or from a ``.npz`` file with ``signals`` (N, ...) (EEG/MEG
channels × time, or any shape), ``image_id`` (N,) and optionally ``subject`` (N,); images are
found by ``image_id`` in ``--images`` (a table with ``image_id`` and ``source``).

Each image encoder (``--image-encoder``, repeatable: ``open_clip:ViT-B-32@openai``, a
human-aligned variant as ``open_clip:ViT-B-32@/path/weights.pt``, ``timm:...`` or
``torchvision:...`` with the classifier removed) embeds every image once. ``--n-test`` images
(default 200, the same for every encoder and subject, drawn with ``--seed``) are held out.
For every (image encoder, subject) one :class:`~neuromem.decoding.contrastive.BrainSignalEncoder`
(an MLP over the flattened, z-scored signal) is trained with the symmetric InfoNCE loss and a
learned temperature; all of them train in one Ray Train run (``TorchTrainer``, DDP: each worker
draws its batches from its own share of the training rows). With ``--shuffled-control`` each
is trained a second time on randomly re-paired signals and images: its retrieval must be at
chance.

Evaluation: the test presentations of each image are averaged per subject, encoded, and each
image's true embedding is ranked among the ``n_test`` candidates by cosine similarity: top-1
and top-5 accuracy (chance ``1/n_test``, ``5/n_test``: 0.5 % and 2.5 % for 200). Output:
``OUT/retrieval.parquet`` (``image_encoder, subject, pairing, top1, top5, chance_top1,
chance_top5, n_test, n_train``, plus ``subject = "mean"`` rows averaging the subjects) and the
trained encoders in ``OUT/encoders.pt``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from neuromem.cli import run_module
from neuromem.errors import InputError

logger = logging.getLogger(__name__)

SIGNAL_KINDS = ("vertices", "rois")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem decode``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--brain", help="score table of brain responses (one row per presentation)")
    source.add_argument("--signals", help=".npz with signals (N, ...), image_id (N,), [subject (N,)]")
    parser.add_argument("--images", default=None,
                        help="table with image_id and source (default: --brain)")
    parser.add_argument("--signal", choices=SIGNAL_KINDS, default="vertices",
                        help="--brain: decode from vertices or ROI columns (default: vertices)")
    parser.add_argument("--image-encoder", action="append", required=True,
                        help="LIBRARY:NAME[@WEIGHTS], repeatable to compare encoders")
    parser.add_argument("--image-size", type=int, default=None, help="default: the encoder's")
    parser.add_argument("--n-test", type=int, default=200, help="held-out images (default: 200)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width")
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--shuffled-control", action="store_true",
                        help="also train on shuffled pairs (retrieval must fall to chance)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--address", default=None, help="Ray address (default: local Ray)")


# ----------------------------------------------------------------------------------------------
# Inputs


def read_signals(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``signals (N, ...)`` float32, ``image_ids (N,)`` and ``subjects (N,)`` strings."""
    if args.signals is not None:
        with np.load(args.signals, allow_pickle=False) as data:
            for key in ("signals", "image_id"):
                if key not in data:
                    raise InputError(f"{args.signals}: missing array {key!r}; expected "
                                     "signals (N, ...), image_id (N,) and optionally subject (N,)")
            signals = data["signals"].astype(np.float32)
            image_ids = data["image_id"].astype(str)
            subjects = data["subject"].astype(str) if "subject" in data else np.full(len(signals), "all")
    else:
        from neuromem.scoring.table import VERTICES_COLUMN, decode_vertices, open_table, roi_columns

        dataset = open_table(args.brain)
        has_subject = "subject" in dataset.schema.names
        if args.signal == "vertices":
            columns = [VERTICES_COLUMN]
        else:
            columns = roi_columns(dataset.schema)
        table = dataset.to_table(columns=["image_id", *columns, *(["subject"] if has_subject else [])])
        if args.signal == "vertices":
            signals = decode_vertices(table.column(VERTICES_COLUMN), dtype=np.float32)
        else:
            signals = np.stack([table.column(c).to_numpy() for c in columns], 1).astype(np.float32)
        image_ids = np.asarray(table.column("image_id").to_pylist(), dtype=str)
        subjects = (np.asarray(table.column("subject").to_pylist(), dtype=str) if has_subject
                    else np.full(len(signals), "all"))
    if len(signals) != len(image_ids) or len(signals) != len(subjects):
        raise InputError("signals, image_id and subject must have the same length")
    return signals, image_ids, subjects


def read_sources(table: str, image_ids: list[str]) -> list[str]:
    """Image sources for ``image_ids`` from a table with ``image_id`` and ``source``."""
    from neuromem.scoring.table import open_table

    frame = open_table(table).to_table(columns=["image_id", "source"]).to_pandas()
    sources = frame.drop_duplicates("image_id").set_index("image_id")["source"]
    missing = [i for i in image_ids if i not in sources.index]
    if missing:
        raise InputError(f"{table}: no source for {len(missing)} images (e.g. {missing[:3]})")
    return sources.loc[image_ids].tolist()


def embed_images(spec: str, sources: list[str], *, image_size: int | None = None,
                 batch_size: int = 64, seed: int = 0) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of images by an image model without its classifier."""
    import torch

    from neuromem.data.decode import decode_image
    from neuromem.data.readers import read_bytes
    from neuromem.networks import load_model
    from neuromem.representations.memnet import strip_classifier

    model = load_model(spec, image_size=image_size, seed=seed)
    net = strip_classifier(model.module).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    parts = []
    for start in range(0, len(sources), batch_size):
        pixels = np.stack([decode_image(read_bytes(s), size=model.image_size)
                           for s in sources[start:start + batch_size]])
        images = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div(255)
        with torch.inference_mode():
            parts.append(net(model.preprocess(images)).flatten(1).float().cpu().numpy())
    return np.concatenate(parts)


def held_out_images(image_ids: np.ndarray, n_test: int, seed: int) -> list[str]:
    """``n_test`` distinct image ids drawn with ``seed`` (sorted first, so the draw does not
    depend on row order)."""
    unique = np.unique(image_ids)
    if n_test >= len(unique):
        raise InputError(f"n_test={n_test} leaves no training images ({len(unique)} images)")
    return sorted(np.random.default_rng(seed).choice(unique, n_test, replace=False).tolist())


# ----------------------------------------------------------------------------------------------
# Ray Train


def train_loop(config: dict) -> None:
    """Train one brain encoder per job, then evaluate retrieval on rank 0 and report."""
    import os
    import tempfile

    import ray
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import prepare_model

    from neuromem.decoding.contrastive import BrainSignalEncoder, info_nce, retrieval_accuracy

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    results, states = [], {}
    for job in config["jobs"]:
        data = ray.get(job["data"])
        x_train = torch.as_tensor(data["train_signals"])[rank::world]
        y_train = torch.as_tensor(data["train_embeddings"])[rank::world]
        generator = torch.Generator().manual_seed(config["seed"] + rank)
        torch.manual_seed(config["seed"])  # the same initial weights on every rank
        net = BrainSignalEncoder(x_train[0].numel(), y_train.shape[1], hidden=config["hidden"],
                                 dropout=config["dropout"])
        model = prepare_model(net)
        optimiser = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
        batch = min(config["batch_size"], len(x_train))
        steps = max(1, len(x_train) // batch)
        model.train()
        for _ in range(config["epochs"]):
            order = torch.randperm(len(x_train), generator=generator)
            for step in range(steps):
                rows = order[step * batch:(step + 1) * batch]
                brain = model(x_train[rows].to(device))
                loss = info_nce(brain, y_train[rows].to(device), net.logit_scale)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        if rank == 0:
            net.eval()
            with torch.inference_mode():
                brain = net(torch.as_tensor(data["test_signals"]).to(device)).cpu()
            accuracy = retrieval_accuracy(brain, torch.as_tensor(data["test_embeddings"]))
            results.append({**job["labels"], "top1": accuracy[1], "top5": accuracy[5],
                            "temperature": float(1 / net.logit_scale.exp())})
            states["/".join(job["labels"].values())] = net.state_dict()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save(states, os.path.join(folder, "encoders.pt"))
            checkpoint = Checkpoint.from_directory(folder)
        ray.train.report({"results": results}, checkpoint=checkpoint)


def prepare_job(signals, image_ids, embeddings_by_id, test_ids, *, shuffle: bool, seed: int):
    """Arrays of one job: z-scored training signals paired with their image embeddings
    (re-paired at random when ``shuffle``), and per test image the mean test signal."""
    test_set = set(test_ids)
    is_test = np.array([i in test_set for i in image_ids])
    train_x = signals[~is_test]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_ids = image_ids[~is_test]
    if shuffle:
        train_ids = np.random.default_rng(seed).permutation(train_ids)
    test_x = np.stack([signals[image_ids == i].mean(0) for i in test_ids])
    return {
        "train_signals": ((train_x - mean) / std).astype(np.float32),
        "train_embeddings": np.stack([embeddings_by_id[i] for i in train_ids]).astype(np.float32),
        "test_signals": ((test_x - mean) / std).astype(np.float32),
        "test_embeddings": np.stack([embeddings_by_id[i] for i in test_ids]).astype(np.float32),
    }


def run(args: argparse.Namespace) -> int:
    """Embed, train every (encoder, subject[, control]) job in one Ray Train run, write results."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from neuromem.scoring.job import init_ray

    signals, image_ids, subjects = read_signals(args)
    test_ids = held_out_images(image_ids, args.n_test, args.seed)
    unique_ids = sorted(set(image_ids.tolist()))
    sources = read_sources(args.images or args.brain, unique_ids)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = init_ray(args.address)
    try:
        jobs, counts = [], {}
        for spec in args.image_encoder:
            embeddings = embed_images(spec, sources, image_size=args.image_size, seed=args.seed)
            by_id = dict(zip(unique_ids, embeddings, strict=True))
            for subject in sorted(set(subjects.tolist())):
                mine = subjects == subject
                missing = set(test_ids) - set(image_ids[mine].tolist())
                if missing:
                    raise InputError(f"subject {subject} saw none of {len(missing)} test images")
                for pairing in ("true", "shuffled") if args.shuffled_control else ("true",):
                    data = prepare_job(signals[mine], image_ids[mine], by_id, test_ids,
                                       shuffle=pairing == "shuffled", seed=args.seed)
                    labels = {"image_encoder": spec, "subject": subject, "pairing": pairing}
                    counts[tuple(labels.values())] = len(data["train_signals"])
                    jobs.append({"labels": labels, "data": ray.put(data)})
        config = {"jobs": jobs, "seed": args.seed, "epochs": args.epochs, "lr": args.lr,
                  "batch_size": args.batch_size, "hidden": args.hidden, "dropout": args.dropout}
        trainer = TorchTrainer(
            train_loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu,
                                         resources_per_worker={"CPU": args.cpus_per_worker}),
            run_config=RunConfig(name="decode", storage_path=str(out.resolve() / "ray")),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as folder:
            shutil.copy(Path(folder) / "encoders.pt", out / "encoders.pt")
    finally:
        if started:
            ray.shutdown()
    table = pd.DataFrame.from_records(result.metrics["results"])
    table["n_test"] = len(test_ids)
    table["n_train"] = [counts[k] for k in zip(table["image_encoder"], table["subject"],
                                                table["pairing"], strict=True)]
    table["chance_top1"] = 1 / len(test_ids)
    table["chance_top5"] = min(5, len(test_ids)) / len(test_ids)
    mean = table.groupby(["image_encoder", "pairing"], as_index=False, sort=False)[
        ["top1", "top5", "temperature", "n_test", "n_train", "chance_top1", "chance_top5"]].mean()
    mean["subject"] = "mean"
    table = pd.concat([table, mean[table.columns]], ignore_index=True)
    table.to_parquet(out / "retrieval.parquet", index=False)
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_module(__name__))
