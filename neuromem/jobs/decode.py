"""``neuromem decode``: contrastive brain-to-image decoding and 200-way retrieval (Ray Train).

1. **Checks** (before Ray starts): settings, network specs, the signals, the image table, the
   output folder (a rerun with other settings refuses).
2. **Embeddings**: the image-map engine embeds every image once per network
   (:class:`~neuromem.decoding.embeddings.EmbeddingModel`, rows mode); images that fail are
   written to ``OUT/_errors/`` and their presentations left out; non-finite embeddings stop the
   job. ``n_test`` images embedded by every network are held out (the same for every network
   and subject, drawn with the seed).
3. **Training**: for every (network, subject[, shuffled control]) one
   :class:`~neuromem.decoding.contrastive.BrainSignalEncoder` is trained with the symmetric
   InfoNCE loss (:func:`~neuromem.decoding.contrastive.train_contrastive`), all of them in one
   Ray Train run (DDP: each worker draws its batches from its share of the training rows).
4. **Evaluation** (rank 0): top-1/top-5 retrieval of each held-out image among the ``n_test``
   (:func:`~neuromem.decoding.contrastive.evaluate_retrieval`); ``OUT/retrieval.parquet``
   (``image_encoder, subject, pairing, top1, top5, temperature, n_test, n_train, chance_top1,
   chance_top5``, plus ``subject = "mean"`` rows), the encoders in ``OUT/encoders.pt`` and
   ``OUT/run.json``.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.data.schema import BASE_COLUMNS, IMAGE_ID, SOURCE
from neuromem.decoding.signals import SIGNAL_KINDS, Signals
from neuromem.errors import InputError
from neuromem.jobs.image_map import ModelRecipe, PoolOptions, map_images
from neuromem.jobs.train import TrainJobConfig, WorkerProgress, fit
from neuromem.runtime.progress import StageTimer
from neuromem.runtime.provenance import command_line, utc_now, versions
from neuromem.runtime.storage import (
    ERRORS_DIR,
    PartWriter,
    join_uri,
    write_bytes,
    write_json,
    write_parquet,
)
from neuromem.scoring.output import RUN_RECORD, SETTINGS_KEY, prepare_run

#: Files and folders of a run (replaced by ``--overwrite``).
OUTPUTS = ("retrieval.parquet", "encoders.pt", ERRORS_DIR, "ray")
#: Retrieval ranks reported.
TOP_K = (1, 5)


@dataclass(frozen=True)
class DecodeConfig(TrainJobConfig):
    """Everything ``neuromem decode`` needs; fields mirror the command-line options.

    Attributes
    ----------
    out : str
        Output folder (local path or URI).
    network : tuple of str
        Image networks whose embeddings are decoded into (``LIBRARY:NAME[@WEIGHTS]``).
    brain, signals : str or None
        The signals: a score table (one row per presentation), or an ``.npz`` with
        ``signals``, ``image_id`` and optionally ``subject``; exactly one.
    images : str or None
        Table with ``image_id`` and ``source`` (default: ``brain``).
    signal : {"vertices", "rois"}
        Which signal of a score table.
    image_size : int or None
        Input side of the networks (None: each network's).
    n_test : int
        Held-out images.
    epochs, batch_size : int
        Training epochs, and rows per step per worker.
    lr, hidden, dropout
        AdamW learning rate, MLP width, dropout.
    shuffled_control : bool
        Also train on shuffled pairs (retrieval must fall to chance).
    seed : int
        Seed of the held-out draw, random weights, initialisation and batch order.
    overwrite : bool
        Replace an earlier run in ``out``.
    workers, gpus_per_worker, cpus_per_worker
        Ray Train resources; the embedding step runs on as many actors.
    address : str or None
        Ray cluster address.
    no_progress : bool
        No progress bars.
    """

    out: str
    network: tuple[str, ...]
    brain: str | None = None
    signals: str | None = None
    images: str | None = None
    signal: str = "vertices"
    image_size: int | None = None
    n_test: int = 200
    epochs: int = 50
    batch_size: int = 128
    lr: float = 1e-3
    hidden: int = 1024
    dropout: float = 0.3
    shuffled_control: bool = False
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", tuple(self.network or ()))

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with."""
        if (self.brain is None) == (self.signals is None):
            raise InputError("give the signals with exactly one of --brain and --signals")
        if self.signals is not None and self.images is None:
            raise InputError("--signals needs --images, a table with image_id and source")
        if not self.network:
            raise InputError("give at least one --network LIBRARY:NAME[@WEIGHTS]")
        if len(set(self.network)) != len(self.network):
            raise InputError("each --network may be given once")
        self.require_choice("signal", SIGNAL_KINDS)
        self.require_at_least(2, "n_test")
        self.require_at_least(1, "epochs", "batch_size", "hidden", "image_size")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.dropout < 1:
            raise InputError(f"--dropout must be in [0, 1), got {self.dropout}")
        super().check()


    def run_settings(self) -> dict[str, Any]:
        """The settings that shape the outputs (a rerun into ``out`` must repeat them)."""
        operational = ("out", "overwrite", "address", "no_progress", "gpus_per_worker",
                       "cpus_per_worker")
        return {k: v for k, v in self.to_dict().items() if k not in operational}


@dataclass
class DecodeSummary:
    """What a run did (printed at the end, recorded in ``run.json``)."""

    out: str
    table: list[dict[str, Any]]
    n_test: int
    errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    timing: str = ""

    def format(self) -> str:
        """Human-readable summary lines."""
        lines = [f"{r['image_encoder']} {r['subject']} ({r['pairing']} pairs): top-1 "
                 f"{r['top1']:.1%}, top-5 {r['top5']:.1%} among {self.n_test} "
                 f"(chance {r['chance_top1']:.1%}, {r['chance_top5']:.1%})" for r in self.table]
        if self.errors:
            lines.append(f"{self.errors} images could not be embedded and were left out; "
                         f"errors: {join_uri(self.out, ERRORS_DIR)}")
        lines.append(f"wrote {join_uri(self.out, 'retrieval.parquet')}")
        lines.append(self.timing)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Prepared:
    signals: Signals
    images: pd.DataFrame
    errors: PartWriter


def prepare(config: DecodeConfig) -> _Prepared:
    """Everything checkable before Ray starts and before any network is built."""
    from neuromem.decoding.signals import read_npz_signals, read_sources, read_table_signals
    from neuromem.networks import check_network

    config.check()
    for spec in config.network:
        check_network(spec)
    signals = (read_npz_signals(config.signals) if config.signals is not None
               else read_table_signals(config.brain, config.signal))
    image_ids = sorted(set(signals.image_ids.tolist()))
    if config.n_test >= len(image_ids):
        raise InputError(f"--n-test {config.n_test} leaves no training images "
                         f"({len(image_ids)} images)")
    sources = read_sources(config.images or config.brain, image_ids)
    images = pd.DataFrame({IMAGE_ID: image_ids, "dataset": "images", "split": None,
                           SOURCE: sources, "memorability": np.nan, "category": None})
    prepare_run(config.out, config.run_settings(), overwrite=config.overwrite, outputs=OUTPUTS)
    errors = PartWriter(config.out)
    errors.delete_parts(errors=True)  # this run writes them afresh
    return _Prepared(signals, images[list(BASE_COLUMNS)], errors)


def decode_loop(config: dict[str, Any]) -> None:
    """Train one brain encoder per job, then evaluate retrieval on rank 0 and report."""
    import ray
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from neuromem.decoding.contrastive import (
        BrainSignalEncoder,
        evaluate_retrieval,
        train_contrastive,
    )

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = get_device()
    progress = WorkerProgress(config)
    results, states = [], {}
    for job in config["jobs"]:
        data = ray.get(job["data"])
        x_train = torch.as_tensor(data["train_signals"])[rank::world]
        y_train = torch.as_tensor(data["train_embeddings"])[rank::world]
        torch.manual_seed(config["seed"])  # the same initial weights on every rank
        net = BrainSignalEncoder(x_train[0].numel(), y_train.shape[1], hidden=config["hidden"],
                                 dropout=config["dropout"])
        label = "/".join(job["labels"].values())
        train_contrastive(
            prepare_model(net), net.logit_scale, x_train, y_train, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"],
            generator=torch.Generator().manual_seed(config["seed"] + rank), device=device,
            on_step=lambda loss, label=label: progress.step(1, job=label, loss=f"{loss:.3g}"))
        if rank == 0:
            accuracy = evaluate_retrieval(net, torch.as_tensor(data["test_signals"]),
                                          torch.as_tensor(data["test_embeddings"]), TOP_K,
                                          device=device)
            results.append({**job["labels"], "top1": accuracy[1], "top5": accuracy[5],
                            "temperature": float(1 / net.logit_scale.exp())})
            states[label] = {k: v.cpu() for k, v in net.state_dict().items()}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            torch.save(states, os.path.join(folder, "encoders.pt"))
            checkpoint = Checkpoint.from_directory(folder)
        ray.train.report({"results": results}, checkpoint=checkpoint)


def embed(config: DecodeConfig, prepared: _Prepared, spec: str) -> dict[str, np.ndarray]:
    """Embeddings by image id of one network's images that succeeded (errors to ``_errors``)."""
    from neuromem.decoding.embeddings import build_embedding_model, check_finite, embeddings_of

    images = prepared.images
    actors = max(1, min(config.workers, -(-len(images) // 64)))
    result = map_images(
        images, ModelRecipe(build_embedding_model, {"spec": spec, "image_size": config.image_size,
                                                    "seed": config.seed}),
        pool=PoolOptions(actors=actors, gpus_per_actor=config.gpus_per_worker,
                         cpus_per_actor=config.cpus_per_worker),
        progress=not config.no_progress, desc=f"embedding ({spec})")
    prepared.errors.write(result.errors, errors=True)
    ids = images[IMAGE_ID].astype(str).to_numpy()[result.ok].tolist()
    embeddings_nd = embeddings_of(result.values, result.ok)
    check_finite(spec, embeddings_nd, ids)
    return dict(zip(ids, embeddings_nd, strict=True))


def run_decode(config: DecodeConfig, argv: list[str] | None = None) -> DecodeSummary:
    """Embed, train every (network, subject[, control]) job in one Ray Train run, evaluate.

    Raises
    ------
    InputError
        Bad settings or inputs, an output folder holding another run, no image embedded,
        non-finite embeddings, or a diverging loss.
    """
    import ray

    from neuromem.decoding.contrastive import steps_per_epoch
    from neuromem.decoding.signals import held_out_images, prepare_job
    from neuromem.jobs.session import ray_session

    timer = StageTimer()
    with timer.stage("checks"):
        prepared = prepare(config)
    with ray_session(config.address):
        with timer.stage("embedding"):
            embeddings = {spec: embed(config, prepared, spec) for spec in config.network}
        embedded = set.intersection(*(set(by_id) for by_id in embeddings.values()))
        n_failed = len(prepared.images) - len(embedded)
        signals = prepared.signals.keep(embedded)
        test_ids = held_out_images(signals.image_ids, config.n_test, config.seed)
        jobs, counts, total_steps = [], {}, 0
        for spec, by_id in embeddings.items():
            for subject in sorted(set(signals.subjects.tolist())):
                mine = signals.of_subject(subject)
                missing = set(test_ids) - set(mine.image_ids.tolist())
                if missing:
                    raise InputError(f"subject {subject} saw {len(missing)} of the held-out "
                                     f"images never (e.g. {sorted(missing)[:3]})")
                pairings = ("true", "shuffled") if config.shuffled_control else ("true",)
                for pairing in pairings:
                    data = prepare_job(mine, by_id, test_ids, shuffle=pairing == "shuffled",
                                       seed=config.seed)
                    labels = {"image_encoder": spec, "subject": subject, "pairing": pairing}
                    n_train = len(data["train_signals"])
                    counts[tuple(labels.values())] = n_train
                    total_steps += config.epochs * steps_per_epoch(
                        -(-n_train // config.workers), config.batch_size)
                    jobs.append({"labels": labels, "data": ray.put(data)})
        loop_config = {"jobs": jobs, **{name: getattr(config, name) for name in (
            "seed", "epochs", "lr", "batch_size", "hidden", "dropout")}}
        with timer.stage("training"):
            result = fit(decode_loop, loop_config, workers=config.train_workers, name="decode",
                         out=config.out, total_steps=total_steps,
                         progress=not config.no_progress, desc="training encoders")
            with result.checkpoint.as_directory() as folder:
                with open(os.path.join(folder, "encoders.pt"), "rb") as handle:
                    write_bytes(join_uri(config.out, "encoders.pt"), handle.read())
    table = retrieval_table(result.metrics["results"], counts, len(test_ids))
    write_parquet(join_uri(config.out, "retrieval.parquet"),
                  pa.Table.from_pandas(table, preserve_index=False))
    summary = DecodeSummary(config.out, table.to_dict("records"), len(test_ids), n_failed,
                            timer.to_dict(), timer.format())
    write_json(join_uri(config.out, RUN_RECORD), {
        SETTINGS_KEY: config.run_settings(), "config": config.to_dict(), "test_ids": test_ids,
        "command": command_line(argv), "finished": utc_now(), "versions": versions(("ray",)),
        "summary": summary.to_dict()})
    return summary


def retrieval_table(results: list[dict[str, Any]], counts: dict[tuple, int],
                    n_test: int) -> pd.DataFrame:
    """Per-job retrieval rows plus ``subject = "mean"`` rows averaging the subjects."""
    table = pd.DataFrame.from_records(results)
    table["n_test"] = n_test
    table["n_train"] = [counts[k] for k in zip(table["image_encoder"], table["subject"],
                                                table["pairing"], strict=True)]
    table["chance_top1"] = 1 / n_test
    table["chance_top5"] = min(5, n_test) / n_test
    mean = table.groupby(["image_encoder", "pairing"], as_index=False, sort=False)[
        ["top1", "top5", "temperature", "n_test", "n_train", "chance_top1", "chance_top5"]].mean()
    mean["subject"] = "mean"
    return pd.concat([table, mean[table.columns]], ignore_index=True)
