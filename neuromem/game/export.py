"""Human memorability as tables: the per-image export and a score table annotated with it.

The export (:func:`export_human`, :func:`write_scores`) is one Parquet file, one row per image: ``image_id``,
``memorability_human`` (lag-corrected hit rate, :func:`neuromem.game.scoring.image_scores`),
``hit_rate``, ``false_alarm_rate``, ``n_participants``, ``hits``, ``mean_lag``; the schema
metadata key ``neuromem`` records the study, the lag fit, the split-half consistency and the
flagged participants. It joins with score tables on ``image_id``. ``neuromem decompose`` reads
its memorability from the score table itself, so :func:`annotate_scores` writes a copy of a
score table with the export's columns added (``human_<column>`` for the per-image statistics);
then ``neuromem decompose COPY --memorability memorability_human``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import pandas as pd
import pyarrow as pa

from neuromem.errors import InputError
from neuromem.game.scoring import (
    IMAGE_ID,
    MEMORABILITY_HUMAN,
    drop_flagged,
    image_scores,
    participant_flags,
    split_half,
)
from neuromem.game.study import Flags

METADATA_KEY = b"neuromem"
HUMAN_COLUMNS = ("hit_rate", "false_alarm_rate", "n_participants")
"""Per-image statistics copied into annotated score tables, as ``human_<name>``."""


def write_scores(scores: pd.DataFrame, out: str, metadata: Mapping[str, Any]) -> None:
    """Write the per-image table of :func:`~neuromem.game.scoring.image_scores` as Parquet.

    Parameters
    ----------
    scores : pandas.DataFrame
        One row per image with ``image_id`` and ``memorability_human``.
    out : str
        Parquet file (local path or URI), written atomically.
    metadata : mapping
        JSON-ready record stored under the schema metadata key ``neuromem``.
    """
    from neuromem.runtime.storage import dumps_json, write_parquet

    missing = [c for c in (IMAGE_ID, MEMORABILITY_HUMAN) if c not in scores.columns]
    if missing:
        raise InputError(f"the scores lack the columns {missing}")
    table = pa.Table.from_pandas(scores.reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata({METADATA_KEY: dumps_json(dict(metadata),
                                                                    indent=None)})
    write_parquet(out, table)


def export_human(responses: pd.DataFrame, out: str, *, study: str,
                 reference_lag: float | None = None, n_splits: int = 100, seed: int = 0,
                 flag_thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Score a study's responses and write the per-image table (what ``neuromem game export`` does).

    Flags participants (:func:`~neuromem.game.scoring.participant_flags`), leaves the flagged
    out, scores the images, measures the split-half consistency and writes :func:`write_scores`
    with a record of all of it.

    Parameters
    ----------
    responses : pandas.DataFrame
        The study's response record (:mod:`neuromem.game.scoring`).
    out : str
        Parquet file to write (local path or URI).
    study : str
        Study name (recorded).
    reference_lag : float or None
        Lag the memorability is corrected to (e.g. the middle of the study's ``target_lag``);
        None: the median target lag.
    n_splits, seed : int
        Split-half splits and their seed.
    flag_thresholds : mapping, optional
        Keyword arguments of :func:`~neuromem.game.scoring.participant_flags` (a study's
        ``flags``); default: its defaults.

    Returns
    -------
    dict
        The record stored in the table's metadata: ``study``, ``n_images``,
        ``n_participants``, ``flagged`` (ids), ``alpha``, ``reference_lag``, ``split_half``
        (``rho``, ``rho_corrected``, ``n_splits``, ``seed``, ``n_images``).
    """
    thresholds = {**asdict(Flags()), **(flag_thresholds or {})}
    flags = participant_flags(responses, **thresholds)
    kept = drop_flagged(responses, flags)
    if kept.empty:
        raise InputError(f"every participant of study {study} is flagged "
                         f"({len(flags)} participants); nothing to score")
    scores = image_scores(kept, reference_lag)
    consistency = split_half(kept, n_splits=n_splits, seed=seed,
                             reference_lag=scores.attrs["reference_lag"])
    record = {
        "study": study, "n_images": len(scores),
        "n_participants": int(kept["participant"].nunique()),
        "flagged": sorted(map(str, flags.loc[flags["flagged"], "participant"])),
        "flag_thresholds": thresholds,
        "alpha": scores.attrs["alpha"], "reference_lag": scores.attrs["reference_lag"],
        "split_half": {"rho": consistency.rho, "rho_corrected": consistency.rho_corrected,
                       "n_splits": n_splits, "seed": seed, "n_images": consistency.n_images},
    }
    write_scores(scores, out, record)
    return record


def read_scores(location: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a table written by :func:`write_scores`: the rows and the ``neuromem`` record."""
    import pyarrow.parquet as pq

    from neuromem.runtime.storage import read_bytes

    table = pq.read_table(pa.BufferReader(read_bytes(location)))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    return table.to_pandas(), (json.loads(raw) if raw else {})


def annotate_scores(score_table: str, human: str, out: str, *, overwrite: bool = False) -> dict:
    """Copy a score table with the human memorability of its images added, for ``decompose``.

    Parameters
    ----------
    score_table : str
        Score table (folder or file, local path or URI) with ``image_id``.
    human : str
        A table written by :func:`write_scores`.
    out : str
        Output folder; the input is never modified.
    overwrite : bool
        Replace Parquet files already in ``out``.

    Returns
    -------
    dict
        ``rows``, ``files`` and ``rows_without_value`` (images nobody scored: null).
    """
    from neuromem.scoring.annotate import check_output, image_rows, write_annotated

    check_output(score_table, out, overwrite=overwrite)
    scores, record = read_scores(human)
    keys = image_rows(score_table, columns=())
    joined = keys.merge(scores.astype({IMAGE_ID: str}), on=IMAGE_ID, how="left")
    if joined[MEMORABILITY_HUMAN].notna().sum() == 0:
        raise InputError(f"no image of {score_table} is in {human} (compare their image_id "
                         "columns)")
    values = {MEMORABILITY_HUMAN: pa.array(joined[MEMORABILITY_HUMAN], pa.float64())}
    for column in HUMAN_COLUMNS:
        values[f"human_{column}"] = pa.array(joined[column], pa.float64())
    return write_annotated(score_table, out, keys[["dataset", IMAGE_ID]], values,
                           annotation={"job": "game export", "human": human,
                                       "study": record.get("study")})
