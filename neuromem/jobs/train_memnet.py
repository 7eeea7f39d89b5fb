"""``neuromem train-memnet``: networks trained on memorability, categories or both (Ray Train).

1. **Checks** (before Ray starts): settings, the backbone spec, the LaMem rows and splits, the
   category labels, the output folder (a rerun with other training settings refuses).
2. **Pixels**: the image-map engine decodes every image once into ``OUT/pixels/``
   (:class:`~neuromem.representations.memnet_training.PixelModel`, parts mode: unreadable
   images in its ``_errors/`` are left out of training; a rerun resumes).
3. **Training**, per LaMem split ``k``: the pixel table is streamed to ``TorchTrainer`` workers
   (DDP), each training :func:`~neuromem.representations.memnet_training.train_epoch` on its
   shard of ``train_k``; rank 0 checkpoints every epoch and the last checkpoint is copied to
   ``OUT/split_k/``. A split whose checkpoint is already there is not trained again.
4. **Assessment**: the engine runs each checkpoint (and with ``resmem`` the pretrained ResMem)
   on ``test_k``; Spearman ρ per assessor and split goes to ``OUT/assess.parquet`` and the
   mean per assessor to ``OUT/assess.json``. Images that fail here are in ``OUT/_errors/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.data.lamem import SPLIT_NUMBERS, SPLITS, split_rows
from neuromem.data.schema import BASE_COLUMNS, CATEGORY, IMAGE_ID, MEMORABILITY
from neuromem.errors import InputError, MissingWeightsError
from neuromem.jobs.image_map import ModelRecipe, PartsOutput, PoolOptions, map_images
from neuromem.jobs.train import TrainJobConfig, WorkerProgress, fit
from neuromem.representations.memnet import TASKS
from neuromem.representations.memnet_training import category_names
from neuromem.runtime.progress import StageTimer
from neuromem.runtime.provenance import command_line, utc_now, versions
from neuromem.runtime.storage import (
    ERRORS_DIR,
    PartWriter,
    exists,
    join_uri,
    read_bytes,
    write_bytes,
    write_json,
    write_parquet,
)
from neuromem.scoring.output import (
    RUN_RECORD,
    SETTINGS_KEY,
    MetadataStamp,
    prepare_output,
    prepare_run,
)

#: Files and folders of a run (replaced by ``--overwrite``).
OUTPUTS = ("pixels", *(f"split_{k}" for k in SPLIT_NUMBERS), "assess.parquet", "assess.json",
           ERRORS_DIR, "ray")
#: Rows per part of the pixel table.
PIXEL_ROWS_PER_PART = 256


@dataclass(frozen=True)
class TrainMemnetConfig(TrainJobConfig):
    """Everything ``neuromem train-memnet`` needs; fields mirror the command-line options.

    Attributes
    ----------
    out : str
        Output folder (local path or URI).
    network : str
        Backbone spec ``LIBRARY:NAME[@WEIGHTS]`` (its classifier is removed).
    table, lamem_root : str or None
        The rows: a score table of LaMem rows (``image_id``, ``source``, ``memorability``,
        ``splits``, ``category``), or a LaMem folder; exactly one.
    categories : str or None
        CSV of ``image_id, category`` filling the category labels.
    task : {"memorability", "category", "both"}
    memorability_weight, category_weight : float
        Weights of the joint loss.
    split : str
        LaMem split ``1`` … ``5``, or ``all``.
    epochs, batch_size : int
        Epochs, and images per step per worker.
    lr, weight_decay : float
        AdamW settings.
    image_size : int or None
        Input side in pixels (None: the backbone's).
    limit : int or None
        First ``limit`` scored images only.
    resmem : bool
        Also assess the test splits with the pretrained ResMem.
    seed : int
        Seed of the heads' initialisation, random backbone weights and the batch order.
    overwrite : bool
        Replace an earlier run in ``out``.
    workers, gpus_per_worker, cpus_per_worker
        Ray Train resources (:class:`~neuromem.jobs.train.TrainWorkers`); the image steps
        run on as many actors with the same CPUs.
    address : str or None
        Ray cluster address.
    no_progress : bool
        No progress bars.
    """

    out: str
    network: str = "timm:resnet50"
    table: str | None = None
    lamem_root: str | None = None
    categories: str | None = None
    task: str = "memorability"
    memorability_weight: float = 1.0
    category_weight: float = 1.0
    split: str = "1"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-4
    image_size: int | None = None
    limit: int | None = None
    resmem: bool = False
    seed: int = 0
    overwrite: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with."""
        if (self.table is None) == (self.lamem_root is None):
            raise InputError("give the rows with exactly one of --table and --lamem-root")
        self.require_choice("task", TASKS)
        self.require_choice("split", (*SPLIT_NUMBERS, "all"))
        self.require_at_least(1, "epochs", "batch_size", "image_size", "limit")
        self.require_at_least(0, "memorability_weight", "category_weight", "weight_decay")
        if self.lr <= 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        super().check()


    @property
    def splits(self) -> list[str]:
        return list(SPLIT_NUMBERS) if self.split == "all" else [self.split]

    def run_settings(self) -> dict[str, Any]:
        """The settings that shape the checkpoints (a rerun into ``out`` must repeat them).

        ``split`` and ``resmem`` are not among them: a rerun may train other splits or add
        ResMem; the assessment table covers the splits of the last run.
        """
        shaping = ("table", "lamem_root", "categories", "network", "task", "memorability_weight",
                   "category_weight", "epochs", "batch_size", "lr", "weight_decay", "image_size",
                   "limit", "seed", "workers")
        return {name: self.to_dict()[name] for name in shaping}

    def pool(self, gpus: float | None, n_blocks: int) -> PoolOptions:
        """The image steps' actor pool: one actor per worker (at most one per block of the
        engine's input), with the workers' CPUs."""
        actors = max(1, min(self.workers, n_blocks))
        return PoolOptions(actors=actors, gpus_per_actor=gpus,
                           cpus_per_actor=self.cpus_per_worker, batch_size=self.batch_size)


@dataclass
class TrainMemnetSummary:
    """What a run did (printed at the end, recorded in ``run.json``)."""

    out: str
    assess: list[dict[str, Any]]
    trained: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    pixel_errors: int = 0
    assess_errors: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    timing: str = ""

    def format(self) -> str:
        """Human-readable summary lines."""
        lines = []
        if self.trained:
            lines.append(f"trained split(s) {', '.join(self.trained)}")
        if self.reused:
            lines.append(f"reused the checkpoints of split(s) {', '.join(self.reused)}")
        lines += [f"{r['assessor']} {r['split']}: Spearman rho {r['rho']:.3f} (n = {r['n']})"
                  for r in self.assess]
        if self.pixel_errors:
            lines.append(f"{self.pixel_errors} unreadable images left out; errors: "
                         f"{join_uri(self.out, 'pixels', ERRORS_DIR)}")
        if self.assess_errors:
            lines.append(f"{self.assess_errors} test images failed; errors: "
                         f"{join_uri(self.out, ERRORS_DIR)}")
        lines.append(f"wrote {join_uri(self.out, 'assess.parquet')}")
        lines.append(self.timing)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_rows(config: TrainMemnetConfig) -> pd.DataFrame:
    """LaMem rows with a memorability score, ``splits`` and ``category`` (``limit`` applied)."""
    from neuromem.representations.targets import read_image_rows

    if config.table is not None:
        rows = read_image_rows(config.table)
    else:
        from neuromem.data.lamem import list_lamem

        rows = list_lamem(config.lamem_root)
    if config.categories is not None:
        labels = pd.read_csv(io.BytesIO(read_bytes(config.categories)), dtype=str)
        if not {IMAGE_ID, CATEGORY} <= set(labels.columns):
            raise InputError(f"{config.categories}: expected columns {IMAGE_ID}, {CATEGORY}")
        rows[CATEGORY] = rows[IMAGE_ID].astype(str).map(
            labels.drop_duplicates(IMAGE_ID).set_index(IMAGE_ID)[CATEGORY])
    for column in (MEMORABILITY, SPLITS):
        if column not in rows or rows[column].isna().all():
            raise InputError(f"training needs LaMem's {column!r} column; the rows have none "
                             "(give --lamem-root, or a table of LaMem rows)")
    rows[CATEGORY] = rows[CATEGORY].astype(object).where(rows[CATEGORY].notna(), None)
    rows = rows[rows[MEMORABILITY].notna()].reset_index(drop=True)
    return rows.iloc[: config.limit].reset_index(drop=True) if config.limit else rows


@dataclass
class _Prepared:
    rows: pd.DataFrame
    categories: list[str]
    image_size: int
    pixels: PartWriter
    errors: PartWriter


def prepare(config: TrainMemnetConfig) -> _Prepared:
    """Everything checkable before Ray starts; resolves the input size (builds the backbone)."""
    from neuromem.networks import check_network, load_model

    config.check()
    check_network(config.network)
    if config.resmem and importlib.util.find_spec("resmem") is None:
        raise MissingWeightsError("--resmem needs the 'resmem' package (weights ship in its "
                                  "wheel): pip install 'neuromem[assess]'")
    rows = load_rows(config)
    for k in config.splits:
        split_rows(rows, k)
    categories = category_names(rows) if config.task != "memorability" else []
    if config.task != "memorability" and len(categories) < 2:
        raise InputError(f"--task {config.task} needs at least 2 category labels; the rows have "
                         f"{len(categories)} (give --categories)")
    prepare_run(config.out, config.run_settings(), overwrite=config.overwrite, outputs=OUTPUTS)
    image_size = config.image_size or load_model(config.network, seed=config.seed).image_size
    pixels = PartWriter(join_uri(config.out, "pixels"))
    prepare_output(pixels, {"kind": "pixels", "image_size": image_size,
                            **config.run_settings()}, overwrite=config.overwrite)
    errors = PartWriter(config.out)
    errors.delete_parts(errors=True)  # this run's assessment writes them afresh
    return _Prepared(rows, categories, image_size, pixels, errors)


def memnet_loop(config: dict[str, Any]) -> None:
    """Per-worker training loop (DDP via ``ray.train.torch.prepare_model``)."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model

    from neuromem.representations.memnet import build_memnet, save_memnet
    from neuromem.representations.memnet_training import train_epoch

    torch.manual_seed(config["seed"])
    net, net_config = build_memnet(config["network"], config["task"], len(config["categories"]),
                                   image_size=config["image_size"], seed=config["seed"])
    model = prepare_model(net)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config["lr"],
                                  weight_decay=config["weight_decay"])
    device = get_device()
    shard = ray.train.get_dataset_shard("train")
    progress = WorkerProgress(config)
    epochs = config["epochs"]
    for epoch in range(epochs):
        loss = train_epoch(
            model, shard.iter_torch_batches(batch_size=config["batch_size"], device=device),
            optimiser, mean=net_config["mean"], std=net_config["std"],
            memorability_weight=config["memorability_weight"],
            category_weight=config["category_weight"],
            on_step=lambda value, e=epoch: progress.step(1, epoch=f"{e + 1}/{epochs}",
                                                         loss=f"{value:.3g}"))
        metrics = {"epoch": epoch, "train_loss": loss}
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                unwrapped = model.module if hasattr(model, "module") else model
                save_memnet(folder, unwrapped, {**net_config, "categories": config["categories"],
                                                "training": config["training"], **metrics})
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)


def train_split(config: TrainMemnetConfig, prepared: _Prepared, k: str,
                failed: set[str]) -> str:
    """Train on ``train_k`` (images with pixels); return the checkpoint folder ``OUT/split_k``."""
    import ray

    from neuromem.representations.memnet_training import training_batch

    train, _ = split_rows(prepared.rows, k)
    n_train = int((~train[IMAGE_ID].astype(str).isin(failed)).sum())
    if n_train < 2:
        raise InputError(f"split {k}: only {n_train} training images could be read")
    dataset = ray.data.read_parquet(prepared.pixels.part_paths(),
                                    filesystem=prepared.pixels.fs).map_batches(
        training_batch, batch_format="pyarrow", batch_size=PIXEL_ROWS_PER_PART,
        fn_kwargs={"size": prepared.image_size, "categories": prepared.categories,
                   "split": f"train_{k}"})
    loop_config = {
        **{name: getattr(config, name) for name in (
            "network", "task", "seed", "lr", "weight_decay", "epochs", "batch_size",
            "memorability_weight", "category_weight")},
        "image_size": prepared.image_size, "categories": prepared.categories,
        "training": {**config.run_settings(), "split": k, "n_train": n_train},
    }
    steps = config.epochs * math.ceil(n_train / (config.batch_size * config.workers))
    result = fit(memnet_loop, loop_config, workers=config.train_workers,
                 name=f"memnet_split_{k}", out=config.out, datasets={"train": dataset},
                 total_steps=steps, progress=not config.no_progress,
                 desc=f"training split {k}")
    target = join_uri(config.out, f"split_{k}")
    with result.checkpoint.as_directory() as folder:
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), "rb") as handle:
                write_bytes(join_uri(target, name), handle.read())
    return target


def _assess(config: TrainMemnetConfig, prepared: _Prepared, rows: pd.DataFrame,
            recipe: ModelRecipe, column: str, desc: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores of ``rows`` by one assessor on the engine; failed rows go to ``OUT/_errors``."""
    result = map_images(rows[list(BASE_COLUMNS)], recipe, pool=config.pool(config.gpus_per_worker, math.ceil(len(rows) / config.batch_size)),
                        progress=not config.no_progress, desc=desc)
    prepared.errors.write(result.errors, errors=True)
    scores = result.values.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    return scores, result.ok, result.n_errors


def run_train_memnet(config: TrainMemnetConfig,
                     argv: list[str] | None = None) -> TrainMemnetSummary:
    """Train and assess (see the module docstring); return the summary.

    Raises
    ------
    InputError
        Bad settings, rows without LaMem splits, an output folder holding another run, no image
        readable, or a diverging loss.
    """
    from scipy import stats

    from neuromem.jobs.session import ray_session
    from neuromem.memorability.resmem import ResMemRowModel
    from neuromem.representations.memnet import build_memorability_model
    from neuromem.representations.memnet_training import build_pixel_model

    timer = StageTimer()
    with timer.stage("checks"):
        prepared = prepare(config)
    summary = TrainMemnetSummary(config.out, [])
    records = []
    with ray_session(config.address):
        with timer.stage("pixels"):
            metadata = {SETTINGS_KEY: {"kind": "pixels", "image_size": prepared.image_size,
                                       **config.run_settings()},
                        "command": command_line(argv), "created": utc_now()}
            map_images(prepared.rows[[*BASE_COLUMNS, SPLITS]],
                       ModelRecipe(build_pixel_model, {"size": prepared.image_size}),
                       pool=config.pool(0.0, math.ceil(len(prepared.rows) / PIXEL_ROWS_PER_PART)),
                       parts=PartsOutput(prepared.pixels.location, metadata=MetadataStamp(metadata),
                                         rows_per_part=PIXEL_ROWS_PER_PART),
                       progress=not config.no_progress, desc="decoding")
            failed = prepared.pixels.written_keys(errors=True) - prepared.pixels.written_keys()
            summary.pixel_errors = len(failed)
        for k in config.splits:
            checkpoint = join_uri(config.out, f"split_{k}")
            if exists(join_uri(checkpoint, "config.json")):
                summary.reused.append(k)
            else:
                with timer.stage("training"):
                    train_split(config, prepared, k, failed)
                summary.trained.append(k)
            _, test = split_rows(prepared.rows, k)
            test = test[~test[IMAGE_ID].astype(str).isin(failed)].reset_index(drop=True)
            truth = test[MEMORABILITY].to_numpy(np.float64)
            assessors = []
            if config.task != "category":
                assessors.append((f"memnet:{config.network}:{config.task}",
                                  ModelRecipe(build_memorability_model, {"checkpoint": checkpoint}),
                                  "memorability", checkpoint))
            if config.resmem:
                assessors.append(("resmem", ModelRecipe(ResMemRowModel),
                                  "memorability_resmem", ""))
            with timer.stage("assessment"):
                for name, recipe, column, source in assessors:
                    scores, ok, n_failed = _assess(config, prepared, test, recipe, column,
                                                   f"assessing split {k} ({name})")
                    summary.assess_errors += n_failed
                    rho = stats.spearmanr(scores[ok], truth[ok]).statistic
                    records.append({"assessor": name, "split": f"test_{k}", "rho": float(rho),
                                    "n": int(ok.sum()), "checkpoint": source})
    table = pd.DataFrame.from_records(records,
                                      columns=["assessor", "split", "rho", "n", "checkpoint"])
    write_parquet(join_uri(config.out, "assess.parquet"),
                  pa.Table.from_pandas(table, preserve_index=False))
    means = table.groupby("assessor", sort=False)["rho"].agg(["mean", "std", "count"])
    write_json(join_uri(config.out, "assess.json"), means.reset_index().to_dict("records"))
    summary.assess = records
    summary.seconds, summary.timing = timer.to_dict(), timer.format()
    write_json(join_uri(config.out, RUN_RECORD), {
        SETTINGS_KEY: config.run_settings(), "config": config.to_dict(),
        "image_size": prepared.image_size, "categories": prepared.categories,
        "command": command_line(argv), "finished": utc_now(), "versions": versions(("ray",)),
        "summary": summary.to_dict()})
    return summary
