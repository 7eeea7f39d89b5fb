"""Layer-feature tables: every layer of a network, pooled, one Parquet column per layer.

A feature folder (``OUT/features/<network>/`` of ``neuromem layers``) is a parts folder written
by the image-map engine (:mod:`neuromem.jobs.image_map`) with :class:`LayerFeatureModel` as the
model: columns ``image_id``, ``dataset``, ``source`` and one ``fixed_size_binary(4·K)`` column
per layer holding the ``K`` pooled values as raw little-endian float32 (the table codec
:func:`neuromem.scoring.table.arrays_to_arrow`). Every part records the settings that shape the
folder (network spec, pooling, input size, seed, layer filter) in its metadata, so a rerun
resumes only with the same settings (:func:`neuromem.scoring.output.prepare_output`), and
``_layers.json`` lists the layers (name, shape, ``K``, index, depth fraction). Images that could
not be read are in ``_errors/``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from neuromem.data.batch import DecodedBatch, to_float_pixels
from neuromem.data.schema import IMAGE_ID
from neuromem.errors import InputError
from neuromem.networks import load_model
from neuromem.representations.layers import LayerExtractor, LayerInfo, Pooling, depth_fractions
from neuromem.runtime.storage import join_uri, read_json, write_json
from neuromem.scoring.table import arrays_from_arrow, arrays_to_arrow, open_table

#: On-disk type of pooled values: little-endian float32.
FEATURE_DTYPE = np.dtype("<f4")
#: The layer list of a feature folder (``_`` so table readers skip it).
MANIFEST = "_layers.json"


def network_slug(spec: str) -> str:
    """A folder name for a network spec (``timm:resnet18@/w.pt`` → ``timm_resnet18_w.pt``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_")


def feature_settings(spec: str, *, image_size: int | None, pooling: Pooling,
                     include: str | None) -> dict[str, Any]:
    """The settings that shape a feature folder (a rerun into it must repeat them)."""
    return {"kind": "layer features", "network": spec, "image_size": image_size,
            "grid": pooling.grid, "max_features": pooling.max_features, "seed": pooling.seed,
            "include": include}


def discover(spec: str, *, image_size: int | None, pooling: Pooling,
             include: str | None) -> list[dict[str, Any]]:
    """The layers of a network (one dummy forward pass on the CPU), as manifest records.

    Returns
    -------
    list of dict
        :meth:`LayerInfo.to_dict` of every layer (``shape`` as a list, as JSON keeps it) plus
        its ``depth_fraction``, in execution order.
    """
    model = load_model(spec, image_size=image_size, seed=pooling.seed)
    extractor = LayerExtractor(model, pooling, include=include)
    layers = [layer.to_dict() for layer in extractor.layers]
    extractor.remove()
    fractions = depth_fractions(len(layers))
    return [{**layer, "shape": list(layer["shape"]), "depth_fraction": float(f)}
            for layer, f in zip(layers, fractions, strict=True)]


def write_manifest(folder: str, settings: dict[str, Any], layers: list[dict[str, Any]]) -> None:
    """Write ``_layers.json`` (settings and layers) into a feature folder."""
    write_json(join_uri(folder, MANIFEST), {**settings, "layers": layers})


def read_manifest(folder: str) -> list[dict[str, Any]]:
    """The layer records of a feature folder's ``_layers.json``."""
    return read_json(join_uri(folder, MANIFEST))["layers"]


def layer_schema(layers: list[dict[str, Any]]) -> pa.Schema:
    """Columns of the layers: ``fixed_size_binary(4 · n_features)`` each."""
    return pa.schema([(layer["name"], pa.binary(layer["n_features"] * FEATURE_DTYPE.itemsize))
                      for layer in layers])


class LayerFeatureModel:
    """The image-map engine's model of a layer scan: pooled outputs of every layer.

    Parameters
    ----------
    spec : str
        Network spec ``LIBRARY:NAME[@WEIGHTS]``.
    image_size : int or None
        Input side in pixels (None: the network's).
    grid, max_features, seed : int
        :class:`~neuromem.representations.layers.Pooling` settings (``seed`` also seeds random
        weights).
    layers : list of dict
        Manifest records of the layers to keep (:func:`discover`).
    """

    clip_frames = 0

    def __init__(self, spec: str, image_size: int | None, grid: int, max_features: int,
                 seed: int, layers: list[dict[str, Any]]) -> None:
        from neuromem.runtime.device import resolve_device

        self.device = resolve_device("auto")
        model = load_model(spec, image_size=image_size, seed=seed)
        model.module.to(self.device)
        infos = [LayerInfo(**{k: (tuple(v) if k == "shape" else v) for k, v in layer.items()
                              if k != "depth_fraction"}) for layer in layers]
        self.extractor = LayerExtractor(model, Pooling(grid, max_features, seed), infos)
        self.input_size = model.image_size
        self.schema = layer_schema(layers)

    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """One ``fixed_size_binary`` column per layer, one row per decoded image."""
        images_b3hw = to_float_pixels(decoded.pixels, self.device)
        outputs = self.extractor(images_b3hw)
        return pa.table([arrays_to_arrow(outputs[field.name].cpu().numpy(), FEATURE_DTYPE)
                         for field in self.schema], schema=self.schema)


def build_layer_features(**kwargs: Any) -> LayerFeatureModel:
    """Model recipe of the engine: ``LayerFeatureModel(**kwargs)``."""
    return LayerFeatureModel(**kwargs)


def feature_ids(folder: str) -> list[str]:
    """Image ids that have features in a feature folder."""
    return [str(i) for i in open_table(folder).to_table(columns=[IMAGE_ID])
            .column(IMAGE_ID).to_pylist()]


def read_layer(folder: str, layer: str, n_features: int) -> tuple[list[str], np.ndarray]:
    """Image ids and ``(N, n_features)`` float32 features of one layer of a feature folder.

    Raises
    ------
    InputError
        When the folder has no such layer column.
    """
    dataset = open_table(folder)
    if layer not in dataset.schema.names:
        raise InputError(f"{folder} has no features of layer {layer!r}")
    table = dataset.to_table(columns=[IMAGE_ID, layer])
    return ([str(i) for i in table.column(IMAGE_ID).to_pylist()],
            arrays_from_arrow(table.column(layer), n_features, FEATURE_DTYPE))
