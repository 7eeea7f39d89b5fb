"""Run a per-image model over the rows of a table as a Ray Data actor-pool job.

The three image jobs of this package (CLIP features for ``fit-probes``, zero-shot labels for
``label-categories``, ResMem scores for ``assess``) share this plumbing: rows (``image_id``,
``source``...) → payload bytes read by :mod:`neuromem.data` → a fixed-size pool of actors (one
GPU each when the cluster has GPUs) that decode and run the model → rows back on the driver in
their original order. A row whose image cannot be read or decoded comes back with its
``error`` set; it never stops the job.

An actor class takes its configuration as keyword arguments and maps a
:class:`pyarrow.Table` batch (the input columns plus ``media`` and ``payload``) to a dict of
numpy columns holding at least ``_row`` (passed through) and ``error`` (``None`` on success).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.data.schema import MEDIA_UNREADABLE
from neuromem.errors import InputError

log = logging.getLogger(__name__)

ROW = "_row"
ERROR = "error"
#: Columns the payload reader needs from every row.
INPUT_COLUMNS = ("image_id", "dataset", "source")


def cluster_has_gpus() -> bool:
    """Whether the connected Ray cluster advertises at least one GPU."""
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def map_images(
    rows: pd.DataFrame,
    actor_cls: type,
    actor_kwargs: dict[str, Any],
    *,
    batch_size: int = 64,
    n_actors: int = 1,
    gpus_per_actor: float | None = None,
) -> pd.DataFrame:
    """Apply an actor class to the images of ``rows`` with Ray Data.

    Parameters
    ----------
    rows : pandas.DataFrame
        At least ``image_id``, ``dataset`` and ``source`` (a path, URI, or NSD
        ``.../nsd_stimuli.hdf5#<index>``).
    actor_cls : type
        Callable class, see the module docstring.
    actor_kwargs : dict
        Keyword arguments of ``actor_cls``.
    batch_size : int
        Images per actor call.
    n_actors : int
        Size of the (fixed) actor pool.
    gpus_per_actor : float or None
        GPUs each actor asks for; ``None``: 1 when the cluster has GPUs, else 0.

    Returns
    -------
    pandas.DataFrame
        The actor's output columns, one row per input row in the input order (``_row``
        dropped); failed rows have a message in ``error``.
    """
    import ray

    from neuromem.data.readers import load_payloads

    missing = [c for c in INPUT_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(f"image rows need columns {list(INPUT_COLUMNS)}; missing {missing}")
    if len(rows) == 0:
        raise InputError("no images to process: the table has no rows")
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if cluster_has_gpus() else 0.0
    inputs = rows[list(INPUT_COLUMNS)].reset_index(drop=True)
    inputs[ROW] = np.arange(len(inputs), dtype=np.int64)
    blocks = [inputs.iloc[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
    dataset = (
        ray.data.from_pandas(blocks)
        .map_batches(load_payloads, batch_format="pyarrow", batch_size=batch_size)
        .map_batches(
            actor_cls,
            fn_constructor_kwargs=actor_kwargs,
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_gpus=gpus_per_actor,
            batch_size=batch_size,
            batch_format="pyarrow",
        )
    )
    parts = list(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    if not parts:
        raise InputError("the image job returned no rows")
    out = pa.concat_tables(parts, promote_options="permissive").to_pandas()
    out = out.sort_values(ROW).reset_index(drop=True)
    if len(out) != len(inputs) or not np.array_equal(out[ROW].to_numpy(), inputs[ROW].to_numpy()):
        raise RuntimeError(f"image job lost rows: {len(inputs)} in, {len(out)} out")
    n_failed = int(out[ERROR].notna().sum())
    if n_failed == len(out):
        raise InputError(
            f"none of the {len(out)} images could be read or decoded; first error: "
            f"{out[ERROR].iloc[0]}"
        )
    if n_failed:
        log.warning("%d of %d images could not be processed", n_failed, len(out))
    return out.drop(columns=[ROW])


def failed_rows(rows: pd.DataFrame, results: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The errors table (``image_id``, ``source``, ``stage``, ``error``) of the failed rows."""
    failed = results[ERROR].notna().to_numpy()
    return pd.DataFrame(
        {
            "image_id": rows["image_id"].to_numpy()[failed],
            "source": rows["source"].to_numpy()[failed],
            "stage": stage,
            "error": results[ERROR].to_numpy()[failed],
        }
    )


def decode_batch(batch: pa.Table, size: int | None) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Decode every row's ``payload`` to uint8 ``(H, W, 3)`` pixels.

    Parameters
    ----------
    batch : pyarrow.Table
        Rows with ``media`` and ``payload`` from :func:`neuromem.data.readers.load_payloads`
        (an unreadable file has an empty payload and ``media`` ``"unreadable: <reason>"``).
    size : int or None
        Square side of the output (shorter-side resize, centre crop), ``None`` for native size.

    Returns
    -------
    pixels : list
        One array per row, ``None`` where decoding failed.
    errors : list
        One message per row, ``None`` where decoding succeeded.
    """
    from neuromem.data.decode import decode_image

    media = batch.column("media").to_pylist()
    payloads = batch.column("payload").to_pylist()
    pixels: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for medium, payload in zip(media, payloads, strict=True):
        if payload is None or len(payload) == 0:
            pixels.append(None)
            unreadable = medium.startswith(MEDIA_UNREADABLE)
            errors.append(medium if unreadable else "empty payload: the file is empty")
            continue
        try:
            pixels.append(decode_image(payload, medium, size))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - one bad image is recorded, not fatal
            pixels.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return pixels, errors
