"""``neuromem score``: a dataset through a brain encoder on the image-map engine into a score table.

The driver lists the dataset (no bytes read), checks the output folder (a rerun resumes only
with identical settings), and runs :func:`neuromem.jobs.image_map.map_images` in parts mode with
:func:`build_scorer` as the model: each actor loads the encoder once, scores encoder batches with
:class:`neuromem.scoring.batch.BatchScorer` and writes every block as one atomic part. Rows and
vertex arrays never travel to the driver, so memory stays bounded whatever the dataset size.
BOLD5000 has measured ROI responses and no images: its table is written directly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from neuromem.data.readers import DATASETS, list_rows
from neuromem.data.schema import IMAGE_ID
from neuromem.errors import InputError
from neuromem.jobs.image_map import (
    ModelRecipe,
    PartsOutput,
    PoolJobConfig,
    map_images,
)
from neuromem.runtime.provenance import command_line, utc_now
from neuromem.runtime.storage import ERRORS_DIR, PartWriter, check_writable, display, join_uri
from neuromem.scoring.output import SETTINGS_KEY, prepare_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreConfig(PoolJobConfig):
    """Everything ``neuromem score`` needs; fields mirror the command-line options.

    Attributes
    ----------
    dataset : str
        One of :data:`neuromem.data.readers.DATASETS`.
    root : str
        Dataset root folder (local path or URI).
    encoder : str
        Encoder spec (``tribev2``, ``clip-probe:/probe.safetensors``, ``clip-probe:tiny`` ...).
    protocol : str or None
        Still-image protocol of an encoder that reads videos (``paper``, ``static``, ``fast``
        for ``tribev2``); None: the encoder's default. Encoders without protocols refuse one.
    out : str
        Output score table: local folder or pyarrow filesystem URI.
    rois : str
        ROI set: ``"default"`` or a YAML file.
    keep_vertices : bool
        Also store the 20,484 float16 vertex responses per row.
    keep_timecourse : bool
        Also store each video's ROI time course (``timecourse`` column,
        :mod:`neuromem.scoring.timecourse`); encoders that read videos only.
    overwrite : bool
        Replace an existing table in ``out`` instead of resuming it.
    retry_errors : bool
        Score again the inputs listed in ``out/_errors``.
    split, scores, limit : optional
        Dataset split (LaMem ``train_1`` ... ``test_5``); image folders: CSV of ``image_id,
        memorability, category``; score only the first ``limit`` rows of the listing.
    clip_frames : int or None
        Frames per video clip; None: the encoder's own.
    actors, gpus_per_actor, cpus_per_actor, torch_threads, batch_size, decode, decode_threads
        Actor pool (:class:`~neuromem.jobs.image_map.PoolOptions`).
    rows_per_part : int
        Rows per Parquet part (whole encoder batches): a killed run redoes at most one part per
        actor; larger parts read back faster.
    address : str or None
        Ray cluster address; None: ``RAY_ADDRESS`` if set, else an embedded local Ray.
    no_progress : bool
        No progress bar.
    """

    dataset: str
    root: str
    encoder: str
    out: str
    protocol: str | None = None
    rois: str = "default"
    keep_vertices: bool = False
    keep_timecourse: bool = False
    overwrite: bool = False
    retry_errors: bool = False
    split: str | None = None
    scores: str | None = None
    limit: int | None = None
    clip_frames: int | None = None
    rows_per_part: int = 1024

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with."""
        self.require_choice("dataset", DATASETS)
        self.require_at_least(1, "rows_per_part", "clip_frames")
        self.require_at_least(0, "limit")
        super().check()
        if self.overwrite and self.retry_errors:
            raise InputError("--overwrite starts afresh; --retry-errors retries an existing "
                             "table's errors: give one of them")

    def listing_options(self) -> dict[str, Any]:
        """Options of the dataset's listing function."""
        return {name: value for name, value in (("split", self.split), ("scores", self.scores))
                if value is not None}


@dataclass
class ScoreSummary:
    """What a run did (printed at the end, and written as JSON with ``--summary-json``).

    Attributes
    ----------
    out : str
        The score table.
    rows, errors : int
        Rows scored and rows failed by this run.
    skipped : int
        Rows an earlier run already wrote (or failed, unless retried).
    retried : int
        Earlier failures tried again (``--retry-errors``).
    wall_s : float
        Wall time of the run, s.
    first_result_s : float or None
        Seconds until the first part was written: start cost (Ray, actors, model load).
    images_per_s : float
        ``(rows + errors) / wall_s``.
    steady : dict
        Steady-state throughput from the actors' batch times (interval, batches inside it).
    seconds : dict
        Seconds per stage summed over actors (``decode``, ``model``, ``write``) and the driver's
        listing (``list``).
    startup : dict
        Where the start-up went, s (:attr:`neuromem.jobs.image_map.MapResult.startup`).
    skipped_files : dict
        Image folders: files that are not images, ``{extension: count}``.
    interrupted : bool
        Stopped by Ctrl-C: the parts written so far stay; a rerun resumes.
    """

    out: str
    rows: int = 0
    errors: int = 0
    skipped: int = 0
    retried: int = 0
    wall_s: float = 0.0
    first_result_s: float | None = None
    images_per_s: float = 0.0
    steady: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    startup: dict[str, float] = field(default_factory=dict)
    skipped_files: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    def format(self) -> str:
        """Human-readable summary lines."""
        skipped_files = ("files that are not images, not scored: " + ", ".join(
            f"{count} {extension}" for extension, count in self.skipped_files.items())
            if self.skipped_files else "")
        if self.rows == 0 and self.errors == 0 and not self.interrupted:
            return "\n".join(line for line in [
                f"nothing to do: the {self.skipped} rows asked for are already in {self.out}",
                skipped_files] if line)
        lines = [skipped_files,f"scored {self.rows} rows, {self.errors} errors, {self.skipped} already done"
                 + (f", {self.retried} earlier errors retried" if self.retried else "")
                 + f"; {self.wall_s:.1f} s wall, {self.images_per_s:.1f} images/s"]
        if self.first_result_s is not None:
            lines.append(f"first part after {self.first_result_s:.1f} s" + (
                " (start-up: " + ", ".join(f"{name.replace('_', ' ')} {value:.1f} s"
                                           for name, value in self.startup.items()) + ")"
                if self.startup else ""))
        rate = self.steady.get("rows_per_s")
        if rate:
            lines.append(f"steady state {rate:.1f} images/s over {self.steady['interval_s']:.1f} s "
                         f"({self.steady['n_batches']} batches, {self.steady['n_workers']} actors)")
        if self.seconds:
            lines.append("where the time went: " + ", ".join(
                f"{name} {value:.1f} s" for name, value in self.seconds.items()))
        lines.append(f"table: {self.out}")
        if self.interrupted:
            lines.append("interrupted: the parts written so far are kept; run the same command "
                         "again to resume")
        if self.errors or self.skipped:
            lines.append(f"errors: {join_uri(self.out, ERRORS_DIR)} "
                         "(rerun with --retry-errors to try them again)"
                         if self.errors else "")
        return "\n".join(line for line in lines if line)

    def to_dict(self) -> dict:
        """JSON-able dictionary."""
        return dataclasses.asdict(self)


def table_settings(config: ScoreConfig, roi_set, protocol: str | None) -> dict[str, Any]:
    """The settings that shape the table: a rerun into the same folder must repeat them.

    ``protocol`` is the still-image protocol the encoder uses (the default resolved), so a rerun
    with another protocol refuses.
    """
    return {
        "dataset": config.dataset,
        "split": config.split,
        "encoder": config.encoder,
        "protocol": protocol,
        "rois": roi_set.to_dict()["indices_sha256"],
        "rois_name": roi_set.name,
        "keep_vertices": config.keep_vertices,
        "keep_timecourse": config.keep_timecourse,
        "clip_frames": config.clip_frames,
    }


def build_scorer(encoder: str, rois: str, keep_vertices: bool, clip_frames: int | None,
                 protocol: str | None = None, keep_timecourse: bool = False):
    """The :class:`~neuromem.scoring.batch.BatchScorer` an actor runs (a model recipe)."""
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder
    from neuromem.runtime.device import resolve_device
    from neuromem.scoring.batch import BatchScorer

    model = load_encoder(encoder, resolve_device("auto"), protocol=protocol)
    return BatchScorer(model, RoiReducer(load_roi_set(rois)), keep_vertices=keep_vertices,
                       clip_frames=clip_frames, keep_timecourse=keep_timecourse)


class _Stamp:
    """Adds the score-table metadata (with the actor's encoder provenance) to each part."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base

    def __call__(self, scorer):
        from neuromem.scoring.table import build_metadata, write_metadata

        roi_set = scorer.reducer.roi_set
        metadata = build_metadata(encoder=scorer.encoder.metadata(), atlas=roi_set.atlas,
                                  rois=roi_set.to_dict(), **self.base)
        metadata["created"] = self.base["created"]  # the driver's start, same in every part
        if scorer.keep_timecourse:
            step_s = 1.0 / float(scorer.encoder.config()["output_frequency"])
            metadata["timecourse"] = {"column": "timecourse", "step_seconds": step_s}
        return lambda table: write_metadata(table, metadata)


def prepare(config: ScoreConfig) -> tuple[pd.DataFrame, PartWriter, dict[str, Any]]:
    """Everything checkable before Ray starts: the listing, the encoder spec, the ROI set, the output.

    Returns
    -------
    rows : pandas.DataFrame
        The listing to score (``--limit`` applied).
    writer : PartWriter
        The output folder, ready (resumable, or emptied by ``--overwrite``).
    settings : dict
        The table settings (:func:`table_settings`), ``protocol`` the one the encoder will use.
    """
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders.registry import check_spec

    config.check()
    protocol = None
    if config.dataset != "bold5000":
        protocol = check_spec(config.encoder, config.protocol)
        _check_inputs(config)
    elif config.protocol is not None:
        raise InputError("bold5000 holds measured responses: no encoder, so no --protocol")
    roi_set = load_roi_set(config.rois)
    if config.dataset == "bold5000":
        from neuromem.data import bold5000

        rows = bold5000.measured_table(config.root)
    else:
        rows = list_rows(config.dataset, config.root, **config.listing_options())
    skipped_files = rows.attrs.get("skipped_files", {})
    if config.limit is not None:
        rows = rows.iloc[: config.limit]
    rows.attrs["skipped_files"] = skipped_files
    check_writable(config.out)
    writer = PartWriter(config.out)
    settings = table_settings(config, roi_set, protocol)
    if config.dataset == "bold5000":
        settings.update(encoder="measured", rois=None, rois_name=None)
    prepare_output(writer, settings, overwrite=config.overwrite)
    return rows, writer, settings


def run_score(config: ScoreConfig, argv: list[str] | None = None) -> ScoreSummary:
    """Score a dataset into a Parquet score table, resuming where an earlier run stopped.

    Parameters
    ----------
    config : ScoreConfig
        What to score and how.
    argv : list of str or None
        Command line recorded in the table metadata (``sys.argv`` when None).

    Returns
    -------
    ScoreSummary

    Raises
    ------
    InputError
        Bad settings, a folder holding another table, or no row scored (the message says where
        the errors are).
    """
    start = time.perf_counter()
    rows, writer, settings = prepare(config)
    listed_s = time.perf_counter() - start
    base = {"command": command_line(argv), "created": utc_now(), "dataset": config.dataset,
            "split": config.split, "protocol": settings["protocol"], SETTINGS_KEY: settings}
    if config.dataset == "bold5000":
        summary = _write_measured(rows, writer, base)
    else:
        result = map_images(
            rows,
            ModelRecipe(build_scorer, {"encoder": config.encoder, "rois": config.rois,
                                       "keep_vertices": config.keep_vertices,
                                       "clip_frames": config.clip_frames,
                                       "protocol": settings["protocol"],
                                       "keep_timecourse": config.keep_timecourse}),
            pool=config.pool,
            parts=PartsOutput(config.out, metadata=_Stamp(base),
                              rows_per_part=config.rows_per_part,
                              retry_errors=config.retry_errors),
            decode_size=_decode_size(config) if config.decode == "tasks" else None,
            address=config.address,
            progress=not config.no_progress,
            desc="scoring",
        )
        summary = ScoreSummary(out=display(config.out), rows=result.n_rows,
                               errors=result.n_errors, skipped=result.n_skipped,
                               retried=result.n_retried, first_result_s=result.first_result_s,
                               steady=result.steady.to_dict(),
                               seconds={"list": listed_s, **result.stage_seconds},
                               startup=result.startup, interrupted=result.interrupted)
    summary.skipped_files = rows.attrs.get("skipped_files", {})
    summary.wall_s = time.perf_counter() - start
    summary.images_per_s = (summary.rows + summary.errors) / summary.wall_s
    return summary


def _check_inputs(config: ScoreConfig) -> None:
    """Options that depend on how the encoder reads its inputs (no weights loaded)."""
    from neuromem.encoders.registry import reads_videos

    if not reads_videos(config.encoder):
        if config.keep_timecourse:
            raise InputError(f"encoder {config.encoder!r} predicts no time course; "
                             "--keep-timecourse needs an encoder that reads videos (tribev2)")
        return
    if config.decode == "tasks":
        raise InputError(f"encoder {config.encoder!r} decodes its own inputs (stills at their "
                         "size, videos with upstream's frame times): leave --decode at actor")
    if config.clip_frames is not None:
        raise InputError(f"encoder {config.encoder!r} reads every frame its windows need; "
                         "leave --clip-frames out")


def _decode_size(config: ScoreConfig) -> tuple[int, int]:
    """The encoder's decode size and frames, for decoding before the actors exist."""
    from neuromem.encoders import load_encoder

    probe = load_encoder(config.encoder, "cpu", protocol=config.protocol)
    return int(probe.input_size), int(config.clip_frames or probe.clip_frames)


def _write_measured(frame: pd.DataFrame, writer: PartWriter, base: dict[str, Any]) -> ScoreSummary:
    """BOLD5000: write the measured ROI table (no encoder) in the score-table format.

    Rows are keyed by ``subject/image_id`` (every subject saw the same stimuli).
    """
    from neuromem.scoring.table import build_metadata, open_table, write_metadata

    keys = frame["subject"].astype(str) + "/" + frame[IMAGE_ID].astype(str)
    done: set[str] = set()
    if writer.part_paths():
        written = open_table(writer.location).to_table(columns=["subject", IMAGE_ID]).to_pandas()
        done = set(written["subject"].astype(str) + "/" + written[IMAGE_ID].astype(str))
    todo = frame[~keys.isin(done)]
    todo_keys = keys[~keys.isin(done)].tolist()
    table = pa.Table.from_pandas(todo, preserve_index=False)
    metadata = build_metadata(
        encoder={"spec": str(frame["encoder"].iloc[0]), "kind": "measured", "trained": True},
        atlas="BOLD5000 subject-specific functional ROIs", rois=None, **base)
    metadata["created"] = base["created"]
    rows_per_part = 4096
    for first in range(0, table.num_rows, rows_per_part):
        writer.write(write_metadata(table.slice(first, rows_per_part), metadata),
                     keys=todo_keys[first : first + rows_per_part])
    return ScoreSummary(out=display(writer.location), rows=len(todo),
                        skipped=len(frame) - len(todo))
