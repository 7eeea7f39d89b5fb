"""``neuromem assess`` and ``neuromem label-categories``: a per-image model added to a copy of a table.

Both read the distinct images of a score table (its ``source`` column, or ``--images ROOT`` +
``image_id``), run a model over them on the image-map engine (rows mode: a value per image comes
back to the driver), and write a copy of the table with the new columns
(:func:`neuromem.scoring.annotate.write_annotated`). Images that cannot be read get null values
and are listed in ``OUT/_errors/<command>.parquet``; the input table is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.errors import InputError
from neuromem.jobs.image_map import ModelRecipe, PoolJobConfig, map_images
from neuromem.runtime.config import JobConfig
from neuromem.runtime.provenance import command_line, utc_now, versions
from neuromem.runtime.storage import ERRORS_DIR, check_writable, display, join_uri
from neuromem.scoring.annotate import (
    KEY_COLUMNS,
    check_output,
    image_rows,
    labels_from_csv,
    write_annotated,
)
from neuromem.scoring.table import open_table


@dataclass(frozen=True)
class _AnnotateConfig(PoolJobConfig):
    """Options shared by the annotating commands (see the command's help)."""

    table: str
    out: str
    images: str | None = None
    overwrite: bool = False
    batch_size: int = field(default=32, kw_only=True)

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with."""
        super().check()
        if self.decode != "actor":
            raise InputError("--decode tasks is for `neuromem score`; annotating jobs decode in "
                             "their actors")


@dataclass(frozen=True)
class AssessConfig(_AnnotateConfig):
    """``neuromem assess``: ResMem memorability of every image of a table."""


@dataclass(frozen=True)
class LabelConfig(_AnnotateConfig):
    """``neuromem label-categories``: zero-shot CLIP (or CSV) categories of every image.

    Attributes
    ----------
    csv : str or None
        Take labels from a CSV (``image_id``, ``category`` and optionally ``dataset``).
    classes : str or None
        ``name=prompt|prompt,...`` (None: scene/object).
    column : str
        Column to write (its probability goes to ``<column>_probability``).
    clip_model : str
        ``open_clip:NAME[@PRETRAINED]``; without ``@PRETRAINED`` the weights are random, drawn
        with ``seed``.
    seed : int
        Seed of random weights.
    """

    csv: str | None = None
    classes: str | None = None
    column: str = "category"
    clip_model: str = "open_clip:ViT-B-32@openai"
    seed: int = 0


@dataclass
class AnnotateSummary:
    """What an annotating run did."""

    command: str
    out: str
    rows: int = 0
    files: int = 0
    images: int = 0
    failed: int = 0
    rows_without_value: int = 0
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Human-readable summary lines."""
        lines = [f"{self.command}: {self.rows} rows in {self.files} files written to {self.out}; "
                 f"{self.images} images, {self.failed} failed, "
                 f"{self.rows_without_value} rows without a value", *self.notes]
        if self.failed:
            lines.append(f"errors: {join_uri(self.out, ERRORS_DIR)}/{self.command}.parquet")
        return "\n".join(lines)


def _prepare(config: _AnnotateConfig, column: str, *, replace_column: bool,
             read_images: bool = True) -> pd.DataFrame:
    """Checks before any model loads or Ray starts; the distinct images of the table."""
    config.check()
    dataset = open_table(config.table)
    if column in dataset.schema.names and not replace_column:
        filled = dataset.count_rows() - dataset.to_table(columns=[column]).column(column).null_count
        if filled:
            raise InputError(f"{display(config.table)} already has {filled} values in column "
                             f"{column!r}; add --overwrite to replace them")
    check_output(config.table, config.out, overwrite=config.overwrite)
    check_writable(config.out)
    if not read_images:
        return image_rows(config.table, columns=())
    return image_rows(config.table, images=config.images)


def _annotation(command: str, config: JobConfig, **extra: Any) -> dict[str, Any]:
    return {"command": command, "settings": config.to_dict(), "created": utc_now(),
            "command_line": command_line(), "versions": versions(("ray",)), **extra}


def run_assess(config: AssessConfig) -> AnnotateSummary:
    """Score every image of the table with ResMem; write the table's copy with the scores."""
    from neuromem.memorability.resmem import RESMEM_COLUMN, ResMemAssessor, ResMemRowModel

    keys = _prepare(config, RESMEM_COLUMN, replace_column=config.overwrite)
    result = map_images(keys, ModelRecipe(ResMemRowModel), pool=config.pool,
                        address=config.address, progress=not config.no_progress,
                        desc="assess")
    annotation = _annotation("assess", config, column=RESMEM_COLUMN,
                             **ResMemAssessor.provenance())
    counts = write_annotated(config.table, config.out, keys[list(KEY_COLUMNS)],
                             {RESMEM_COLUMN: result.values.column(RESMEM_COLUMN)},
                             annotation=annotation, errors=result.errors, stage="assess")
    scores = result.values.column(RESMEM_COLUMN).to_numpy(zero_copy_only=False)
    return AnnotateSummary("assess", display(config.out), images=len(keys),
                           failed=int((~result.ok).sum()),
                           notes=[f"{RESMEM_COLUMN} mean {np.nanmean(scores):.3f}"], **counts)


def run_label_categories(config: LabelConfig) -> AnnotateSummary:
    """Label every image (zero-shot CLIP or a CSV); write the table's copy with the labels."""
    from neuromem.networks import check_network
    from neuromem.probes.zero_shot import ZeroShotRowModel, parse_classes

    if config.csv is not None:
        keys = _prepare(config, config.column, replace_column=config.overwrite,
                        read_images=False)
        labels = labels_from_csv(config.csv, keys)
        values = {config.column: pa.array(labels, pa.string(), from_pandas=True)}
        counts = write_annotated(config.table, config.out, keys[list(KEY_COLUMNS)], values,
                                 annotation=_annotation("label-categories", config),
                                 stage="label-categories")
        return AnnotateSummary("label-categories", display(config.out), images=len(keys),
                               **counts)
    classes = {name: list(prompts) for name, prompts in parse_classes(config.classes).items()}
    check_network(config.clip_model)
    keys = _prepare(config, config.column, replace_column=config.overwrite)
    result = map_images(keys, ModelRecipe(ZeroShotRowModel, {"clip_model": config.clip_model,
                                                             "classes": classes,
                                                             "seed": config.seed}),
                        pool=config.pool, address=config.address,
                        progress=not config.no_progress, desc="label-categories")
    values = {config.column: result.values.column("label"),
              f"{config.column}_probability": result.values.column("probability")}
    counts = write_annotated(config.table, config.out, keys[list(KEY_COLUMNS)], values,
                             annotation=_annotation("label-categories", config, classes=classes),
                             errors=result.errors, stage="label-categories")
    found = pd.Series(result.values.column("label").to_pylist()).value_counts().to_dict()
    return AnnotateSummary("label-categories", display(config.out), images=len(keys),
                           failed=int((~result.ok).sum()),
                           notes=[f"labels: {found}"], **counts)

