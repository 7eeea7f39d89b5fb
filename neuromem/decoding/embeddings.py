"""Image embeddings to decode into: an image network without its classifier, per image.

:class:`EmbeddingModel` is the image-map engine's model (:mod:`neuromem.jobs.image_map`): each
actor builds the network once (:func:`neuromem.networks.load_model`, classifier removed by
:func:`neuromem.representations.memnet.strip_classifier`) and returns one ``embedding`` vector
per image. :func:`check_finite` stops a job whose embeddings are not finite, since retrieval
among broken embeddings means nothing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from neuromem.data.batch import DecodedBatch, to_float_pixels
from neuromem.errors import InputError
from neuromem.networks import load_model
from neuromem.representations.memnet import strip_classifier

#: Column of the engine's output.
EMBEDDING = "embedding"


class EmbeddingModel:
    """Embeddings ``(D,)`` float32 of images by an image network without its classifier.

    Parameters
    ----------
    spec : str
        Network spec ``LIBRARY:NAME[@WEIGHTS]``.
    image_size : int or None
        Input side in pixels (None: the network's).
    seed : int
        Seed of random weights.
    """

    clip_frames = 0

    def __init__(self, spec: str, image_size: int | None = None, seed: int = 0) -> None:
        from neuromem.runtime.device import resolve_device

        self.device = resolve_device("auto")
        self.model = load_model(spec, image_size=image_size, seed=seed)
        self.net = strip_classifier(self.model.module).eval().to(self.device)
        self.input_size = self.model.image_size
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
            width = int(self.net(probe).flatten(1).shape[1])
        self.schema = pa.schema([(EMBEDDING, pa.list_(pa.float32(), width))])

    @torch.inference_mode()
    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """One embedding per decoded image."""
        images_b3hw = to_float_pixels(decoded.pixels, self.device)
        embeddings_bd = self.net(self.model.preprocess(images_b3hw)).flatten(1).float().cpu()
        flat = pa.array(embeddings_bd.numpy().reshape(-1), pa.float32())
        width = self.schema.field(EMBEDDING).type.list_size
        return pa.table([pa.FixedSizeListArray.from_arrays(flat, width)], schema=self.schema)


def build_embedding_model(spec: str, image_size: int | None, seed: int) -> EmbeddingModel:
    """Model recipe of the engine: ``EmbeddingModel(spec, image_size, seed)``."""
    return EmbeddingModel(spec, image_size, seed)


def embeddings_of(values: pa.Table, ok: np.ndarray) -> np.ndarray:
    """``(N_ok, D)`` float32 embeddings of the rows that succeeded, from the engine's values."""
    column = values.column(EMBEDDING).filter(pa.array(ok))
    width = values.schema.field(EMBEDDING).type.list_size
    return column.combine_chunks().flatten().to_numpy().reshape(-1, width).astype(np.float32)


def check_finite(spec: str, embeddings_nd: np.ndarray, image_ids: list[str]) -> None:
    """Raise :class:`InputError` when a network gave non-finite embeddings.

    Raises
    ------
    InputError
        Naming the network, how many images and examples.
    """
    bad = ~np.isfinite(embeddings_nd).all(axis=1)
    if bad.any():
        examples = [image_ids[i] for i in np.flatnonzero(bad)[:3]]
        raise InputError(f"network {spec} gave non-finite embeddings for {int(bad.sum())} of "
                         f"{len(bad)} images (e.g. {examples}); its weights or inputs are broken, "
                         "so retrieval would mean nothing")
