"""Training data and steps of memorability/category networks (``neuromem train-memnet``).

Images are decoded once by the image-map engine with :class:`PixelModel` into a *pixel table*
(``OUT/pixels/`` of ``train-memnet``): the listing's columns plus ``pixels``, each image's
``S × S × 3`` uint8 pixels as one raw ``fixed_size_binary`` value (the table codec
:func:`neuromem.scoring.table.arrays_to_arrow`), resized on the shorter side and centre-cropped
as for inference. Unreadable images land in its ``_errors/`` and are left out of training.
Training then streams the pixel table to the workers (:func:`training_batch`) and runs
:func:`train_epoch` on each worker's shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from neuromem.data.batch import DecodedBatch
from neuromem.data.lamem import SPLITS, split_members
from neuromem.data.schema import CATEGORY, MEMORABILITY
from neuromem.errors import InputError
from neuromem.representations.memnet import memnet_loss
from neuromem.scoring.table import arrays_from_arrow, arrays_to_arrow

#: Column of the pixel table holding each image's raw uint8 pixels.
PIXELS = "pixels"


class PixelModel:
    """The image-map engine's "model" that keeps decoded pixels: ``S × S × 3`` uint8 per image.

    Parameters
    ----------
    size : int
        Side ``S`` in pixels.
    """

    clip_frames = 0

    def __init__(self, size: int) -> None:
        self.input_size = int(size)
        self.device = torch.device("cpu")
        self.schema = pa.schema([(PIXELS, pa.binary(3 * self.input_size**2))])

    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """The decoded rows' pixels as one raw column."""
        pixels_bhw3 = np.asarray(decoded.pixels, dtype=np.uint8)
        return pa.table([arrays_to_arrow(pixels_bhw3, np.uint8)], schema=self.schema)


def build_pixel_model(size: int) -> PixelModel:
    """Model recipe of the engine: ``PixelModel(size)``."""
    return PixelModel(size)


def category_names(rows: pd.DataFrame) -> list[str]:
    """Sorted distinct category labels of the rows (missing ones left out)."""
    if CATEGORY not in rows:
        return []
    labels = rows[CATEGORY].dropna().astype(str)
    return sorted(set(labels) - {"", "None", "nan"})


def category_codes(labels: Sequence[str | None], categories: Sequence[str]) -> np.ndarray:
    """Class index of each label in ``categories``; ``-1`` for a missing or unknown label."""
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index.get(str(v), -1) if v is not None else -1 for v in labels],
                    dtype=np.int64)


def training_batch(batch: pa.Table, *, size: int, categories: list[str],
                   split: str) -> dict[str, np.ndarray]:
    """Rows of a pixel-table batch in split ``split`` (e.g. ``"train_1"``), as training arrays.

    Returns
    -------
    dict
        ``pixels`` ``(B, S, S, 3)`` uint8, ``memorability`` ``(B,)`` float32 and ``category``
        ``(B,)`` int64 (``-1`` for no label), ``B`` the rows of the batch in the split.
    """
    rows = split_members(batch.column(SPLITS).to_pylist()).get(split, np.empty(0, np.int64))
    batch = batch.take(pa.array(rows, pa.int64()))
    pixels = arrays_from_arrow(batch.column(PIXELS), 3 * size * size, np.uint8)
    labels = (batch.column(CATEGORY).to_pylist() if CATEGORY in batch.column_names
              else [None] * batch.num_rows)
    return {
        PIXELS: pixels.reshape(-1, size, size, 3),
        MEMORABILITY: batch.column(MEMORABILITY).to_numpy(zero_copy_only=False)
        .astype(np.float32),
        CATEGORY: category_codes(labels, categories),
    }


def train_epoch(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                optimiser: torch.optim.Optimizer, *, mean: Sequence[float],
                std: Sequence[float], memorability_weight: float = 1.0,
                category_weight: float = 1.0,
                on_step: Callable[[float], None] | None = None) -> float:
    """One pass over ``batches`` (:func:`training_batch` arrays as tensors); the mean loss.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`~neuromem.representations.memnet.MemNet` (possibly DDP-wrapped).
    batches : iterable of dict
        ``pixels`` ``(B, S, S, 3)`` uint8, ``memorability`` ``(B,)``, ``category`` ``(B,)``.
    optimiser : torch.optim.Optimizer
    mean, std : sequence of float
        Per-channel normalisation of the backbone.
    memorability_weight, category_weight : float
        Weights of the joint loss (:func:`~neuromem.representations.memnet.memnet_loss`).
    on_step : callable or None
        Called with each step's loss.

    Raises
    ------
    InputError
        When the loss is not finite (a learning rate too high, or broken inputs).
    """
    from neuromem.encoders.preprocessing import normalise

    model.train()
    total, count = 0.0, 0
    for batch in batches:
        images_b3hw = batch[PIXELS].permute(0, 3, 1, 2).float().div(255)
        loss = memnet_loss(model(normalise(images_b3hw, mean, std)), batch[MEMORABILITY],
                           batch[CATEGORY], memorability_weight=memorability_weight,
                           category_weight=category_weight)
        if not torch.isfinite(loss):
            raise InputError(f"the training loss became {loss.item()}; lower --lr")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += loss.item() * len(images_b3hw)
        count += len(images_b3hw)
        if on_step is not None:
            on_step(loss.item())
    return total / max(count, 1)
