"""The Ray Data scoring job: read → decode → encoder actor pool → ROI reduction → Parquet parts.

The driver does little: it lists the ids already written to the output (resume), builds the
Ray Dataset, and counts the small summary rows the actors return to drive a progress bar. Each
actor of a fixed-size pool (Ray issue #59144: an autoscaling GPU pool can stay at one actor)
loads the encoder once, scores batches with :class:`neuromem.scoring.batch.BatchScorer` and
writes every batch as one atomic Parquet part (:class:`neuromem.scoring.parts.PartWriter`), so
score rows and vertex arrays never travel back to the driver and memory stays bounded by the
pipeline's buffers whatever the dataset size.

Where decoding runs (``decode``):

``"actor"`` (default)
    Compressed bytes travel to the actor, which decodes them with a thread pool (PIL and PyAV
    release the GIL) or, on a CUDA device, JPEGs with nvJPEG. Compressed bytes are several times
    smaller than pixels in the object store (domain notes: ~7x). The CPU run in
    ``benchmarks/results/score_throughput_cpu.json`` was taken on a shared, overloaded
    2-core machine and does not separate the two modes; re-measure on a quiet machine/GPU.
``"tasks"``
    Separate Ray CPU tasks decode to uint8 pixels which then travel to the actors: useful when
    the cluster has CPU-only nodes to spread decoding over.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from neuromem.data.schema import IMAGE_ID, LOADED_COLUMNS, SOURCE
from neuromem.errors import InputError
from neuromem.scoring.batch import (
    BatchScorer,
    DecodedBatch,
    decode_rows,
    error_table,
    take_rows,
)
from neuromem.scoring.parts import PartWriter
from neuromem.scoring.table import build_metadata, write_metadata

logger = logging.getLogger(__name__)

DATASETS = ("lamem", "nsd", "memento10k", "bold5000", "folder")
DECODE_MODES = ("actor", "tasks")
PIXELS = "__pixels"
ERROR = "__error"
#: Files and folders never uploaded with the working directory when connecting to a cluster.
RUNTIME_EXCLUDES = [".venv", ".upstream", ".git", "demo_out", "**/__pycache__", "*.egg-info"]


@dataclass(frozen=True)
class ScoreConfig:
    """Everything ``neuromem score`` needs; fields mirror the command-line options.

    Attributes
    ----------
    dataset : str
        One of :data:`DATASETS`.
    root : str
        Dataset root folder.
    encoder : str
        Encoder spec (``clip-probe:tiny``, ``tribev2`` ...).
    out : str
        Output score table: local folder or pyarrow filesystem URI.
    rois : str
        ROI set: ``"default"`` or a YAML file.
    keep_vertices : bool
        Also store the 20,484 float16 vertex responses per row.
    actors : int
        Size of the (fixed) encoder actor pool.
    gpus_per_actor : float or None
        GPUs per actor; None: 1 when the cluster has GPUs, else 0.
    cpus_per_actor : float
        CPUs reserved per actor. When Ray does not fuse the read stage into the actors (it
        does with the defaults), leave CPUs for the read tasks or the pool waits for input.
    torch_threads : int or None
        torch threads of each actor on CPU; None: ``cpus_per_actor`` (Ray sets 1 otherwise).
    batch_size : int
        Rows per encoder batch.
    rows_per_part : int
        Rows per Parquet part (rounded up to whole encoder batches): each actor call scores
        this many rows batch by batch and writes them as one file. Larger parts read back
        faster (``read_vertices``); a killed run redoes at most one part per actor.
    split : str or None
        Dataset split (LaMem: ``train_1`` ... ``test_5``).
    scores : str or None
        Image folders only: CSV of ``image_id, memorability, category``.
    limit : int or None
        Score only the first ``limit`` rows of the listing (stable across resumes).
    decode : str
        Where payloads are decoded: ``"actor"`` or ``"tasks"`` (see the module docstring).
    decode_threads : int
        Decoding threads inside each actor.
    clip_frames : int or None
        Frames per video clip; None: the encoder's own.
    address : str or None
        Ray cluster address; None: ``RAY_ADDRESS`` if set, else an embedded local Ray.
    progress : bool
        Show a progress bar.
    """

    dataset: str
    root: str
    encoder: str
    out: str
    rois: str = "default"
    keep_vertices: bool = False
    actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None
    batch_size: int = 64
    rows_per_part: int = 1024
    split: str | None = None
    scores: str | None = None
    limit: int | None = None
    decode: str = "actor"
    decode_threads: int = 4
    clip_frames: int | None = None
    address: str | None = None
    progress: bool = True

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with."""
        if self.dataset not in DATASETS:
            raise InputError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(DATASETS)}")
        if self.decode not in DECODE_MODES:
            raise InputError(f"decode must be one of {', '.join(DECODE_MODES)}, got {self.decode!r}")
        for name in ("actors", "batch_size", "rows_per_part", "decode_threads"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 0:
            raise InputError(f"limit must be non-negative, got {self.limit}")


@dataclass
class ScoreSummary:
    """What a run did.

    Attributes
    ----------
    out : str
        The score table.
    rows, errors : int
        Rows scored and rows failed by this run.
    skipped : int
        Rows skipped because an earlier run already wrote them (scored or failed).
    wall_s : float
        Wall time of the run, s (from the start of :func:`run_score_job`).
    first_result_s : float or None
        Time until the first batch was written, s: start cost (cluster, actors, model load).
    images_per_s : float
        ``(rows + errors) / wall_s``.
    steady_images_per_s : float or None
        Images/s from the first written batch to the last (the pipeline once running).
    seconds : dict
        Time summed over actors: ``decode_s``, ``encode_s``, ``table_s``, ``write_s``.
    """

    out: str
    rows: int = 0
    errors: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    first_result_s: float | None = None
    images_per_s: float = 0.0
    steady_images_per_s: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def format(self) -> str:
        """Human-readable summary lines."""
        steady = (
            f", {self.steady_images_per_s:.1f} images/s once running"
            if self.steady_images_per_s
            else ""
        )
        first = f", first batch after {self.first_result_s:.1f} s" if self.first_result_s else ""
        parts = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in self.seconds.items())
        return (
            f"scored {self.rows} rows, {self.errors} errors, {self.skipped} already done; "
            f"{self.wall_s:.1f} s wall, {self.images_per_s:.1f} images/s{steady}{first}\n"
            f"actor time: {parts or 'none'}\n"
            f"table: {self.out}"
        )

    def to_dict(self) -> dict:
        """JSON-able dictionary."""
        return asdict(self)


class ScoreActor:
    """One member of the encoder actor pool: decode (if needed), encode, reduce, write a part.

    Called by Ray Data with a :class:`pyarrow.Table` batch; returns one summary row.
    """

    def __init__(
        self,
        encoder: str,
        rois: str,
        out: str,
        keep_vertices: bool,
        decode_threads: int,
        clip_frames: int | None,
        metadata: dict,
        torch_threads: int,
        batch_size: int,
    ) -> None:
        import torch

        from neuromem.cortex.reduce import RoiReducer
        from neuromem.cortex.rois import load_roi_set
        from neuromem.encoders import load_encoder

        if torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            torch.set_num_threads(max(1, torch_threads))
            device = torch.device("cpu")
        model = load_encoder(encoder, device)
        roi_set = load_roi_set(rois)
        reducer = RoiReducer(roi_set)
        self.scorer = BatchScorer(
            model,
            reducer,
            reducer.column_names,
            keep_vertices=keep_vertices,
            executor=ThreadPoolExecutor(decode_threads),
            clip_frames=clip_frames,
        )
        self.writer = PartWriter(out)
        self.batch_size = batch_size
        extra = {name: value for name, value in metadata.items() if name != "created"}
        self.metadata = build_metadata(
            encoder=model.metadata(), atlas=roi_set.atlas, rois=roi_set.to_dict(), **extra
        )
        self.metadata["created"] = metadata["created"]  # the driver's start, same in every part

    def __call__(self, rows: pa.Table) -> pa.Table:
        scored = []
        for first in range(0, rows.num_rows, self.batch_size):  # encoder batches of one part
            batch = rows.slice(first, self.batch_size)
            if PIXELS in batch.column_names:
                decoded = table_to_decoded(batch)
            else:
                decoded = self.scorer.decode(batch)
            scored.append(self.scorer.score(decoded))
        scores = pa.concat_tables([s.scores for s in scored])
        errors = pa.concat_tables([s.errors for s in scored])
        timings: dict[str, float] = {}
        for one in scored:
            for name, value in one.timings.items():
                timings[name] = timings.get(name, 0.0) + value
        start = time.perf_counter()
        part = self.writer.write(write_metadata(scores, self.metadata))
        self.writer.write(errors, errors=True)
        timings["write_s"] = time.perf_counter() - start
        return pa.table(
            {
                "part": [part or ""],
                "rows": [scores.num_rows],
                "errors": [errors.num_rows],
                **{name: [value] for name, value in timings.items()},
            }
        )


def decode_task(batch: pa.Table, size: int, clip_frames: int) -> pa.Table:
    """Ray task of ``decode="tasks"``: reader rows → rows with a uint8 pixel tensor column.

    Rows that fail keep their columns, zero pixels and their reason in the ``__error`` column.
    """
    from ray.data.extensions import ArrowTensorArray

    decoded = decode_rows(batch, size, clip_frames)
    reasons = dict(
        zip(decoded.errors.column(IMAGE_ID).to_pylist(),
            decoded.errors.column("error").to_pylist(), strict=True)
    )
    ids = batch.column(IMAGE_ID).to_pylist()
    ok_pixels = iter(decoded.pixels)
    blank = np.zeros(decoded.pixels.shape[1:], np.uint8)
    pixels = np.stack([blank if i in reasons else next(ok_pixels) for i in ids])
    table = batch.drop_columns([c for c in LOADED_COLUMNS if c in batch.column_names])
    table = table.append_column(PIXELS, ArrowTensorArray.from_numpy(pixels))
    return table.append_column(ERROR, pa.array([reasons.get(i) for i in ids], pa.string()))


def table_to_decoded(table: pa.Table) -> DecodedBatch:
    """The :class:`DecodedBatch` of a batch that :func:`decode_task` produced."""
    reasons = table.column(ERROR).to_pylist()
    ok = [i for i, reason in enumerate(reasons) if reason is None]
    failed = take_rows(table, [i for i, reason in enumerate(reasons) if reason is not None])
    pixels = table.column(PIXELS).combine_chunks().to_numpy_ndarray()
    return DecodedBatch(
        rows=take_rows(table.drop_columns([PIXELS, ERROR]), ok),
        pixels=pixels[ok],
        is_clip=pixels.ndim == 5,
        errors=error_table(
            failed.column(IMAGE_ID).to_pylist(),
            failed.column(SOURCE).to_pylist(),
            "decode",
            failed.column(ERROR).to_pylist(),
        ),
    )


def init_ray(address: str | None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``) or start an embedded local Ray.

    Returns True when this call started Ray (the caller then shuts it down).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict = {"log_to_driver": False}
    if address:
        kwargs["address"] = address
        # A driver outside `ray job submit` ships this checkout to the cluster's workers.
        if not os.environ.get("RAY_JOB_ID"):
            kwargs["runtime_env"] = {"working_dir": _repo_root(), "excludes": RUNTIME_EXCLUDES}
    elif not os.environ.get("RAY_ADDRESS"):
        # "local": a new embedded Ray, never a cluster someone else started on this machine
        kwargs.update(address="local", include_dashboard=False)
    ray.init(**kwargs)
    return True


def _repo_root() -> str:
    import neuromem

    return os.path.dirname(os.path.dirname(os.path.abspath(neuromem.__file__)))


def run_score_job(config: ScoreConfig, command: list[str] | None = None) -> ScoreSummary:
    """Score a dataset into a Parquet score table, resuming where an earlier run stopped.

    Parameters
    ----------
    config : ScoreConfig
        What to score and how.
    command : list of str or None
        Command line recorded in the table metadata (``sys.argv`` when None).

    Returns
    -------
    ScoreSummary
    """
    start = time.perf_counter()
    config.check()
    from neuromem.data import readers

    writer = PartWriter(config.out)
    stale = writer.prepare()
    if stale:
        logger.info("removed %d unfinished part(s) of an interrupted run", stale)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    command = list(sys.argv if command is None else command)
    if config.dataset == "bold5000":
        return _write_measured(config, writer, start, command, created)
    done = writer.written_ids() | writer.written_ids(errors=True)

    options = {
        name: value
        for name, value in (("split", config.split), ("scores", config.scores))
        if value is not None
    }
    listing = readers.list_rows(config.dataset, config.root, **options)
    wanted = listing[IMAGE_ID].astype(str).tolist()
    if config.limit is not None:
        wanted = wanted[: config.limit]
    excluded = done | set(listing[IMAGE_ID].astype(str).tolist()[len(wanted):])
    todo = [i for i in wanted if i not in done]
    summary = ScoreSummary(out=writer.uri, skipped=len(wanted) - len(todo))
    if not todo:
        summary.wall_s = time.perf_counter() - start
        return summary

    import ray

    started_ray = init_ray(config.address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws one bar over written rows
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        gpus = config.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        # One input block per part: each actor call returns as soon as its part is written,
        # which drives the progress bar and bounds what a killed run loses.
        rows_per_part = -(-config.rows_per_part // config.batch_size) * config.batch_size
        ds = readers.open_dataset(
            config.dataset, config.root, exclude_ids=excluded or None,
            rows_per_block=rows_per_part, read_batch_size=config.batch_size, **options,
        )
        if config.decode == "tasks":
            from neuromem.encoders import load_encoder

            probe = load_encoder(config.encoder, "cpu")
            ds = ds.map_batches(
                decode_task,
                batch_size=config.batch_size,
                batch_format="pyarrow",
                fn_kwargs={
                    "size": probe.input_size,
                    "clip_frames": config.clip_frames or probe.clip_frames,
                },
            )
            del probe
        ds = ds.map_batches(
            ScoreActor,
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_gpus=gpus,
            num_cpus=config.cpus_per_actor,
            batch_size=rows_per_part,
            batch_format="pyarrow",
            zero_copy_batch=True,
            fn_constructor_kwargs={
                "encoder": config.encoder,
                "rois": config.rois,
                "out": writer.uri,
                "keep_vertices": config.keep_vertices,
                "decode_threads": config.decode_threads,
                "clip_frames": config.clip_frames,
                "metadata": {
                    "command": command,
                    "created": created,
                    "dataset": config.dataset,
                    "split": config.split,
                },
                "torch_threads": config.torch_threads or max(1, int(config.cpus_per_actor)),
                "batch_size": config.batch_size,
            },
        )
        _consume(ds, summary, len(todo), start, config.progress)
    finally:
        if started_ray:
            ray.shutdown()
    summary.wall_s = time.perf_counter() - start
    summary.images_per_s = (summary.rows + summary.errors) / summary.wall_s
    return summary


def _consume(ds, summary: ScoreSummary, total: int, start: float, progress: bool) -> None:
    """Drain the actors' summary rows, updating the progress bar and the totals."""
    from tqdm.auto import tqdm

    first_at = last_at = None
    first_rows = 0
    with tqdm(total=total, unit="img", disable=not progress, smoothing=0.1,
              desc="scoring", file=sys.stderr) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            now = time.perf_counter()
            rows = sum(batch.column("rows").to_pylist())
            errors = sum(batch.column("errors").to_pylist())
            for name in batch.column_names:
                if name.endswith("_s"):
                    summary.seconds[name] = summary.seconds.get(name, 0.0) + float(
                        sum(batch.column(name).to_pylist())
                    )
            if first_at is None:
                first_at, first_rows = now, rows + errors
                summary.first_result_s = now - start
            last_at = now
            logger.debug("wrote part(s) %s: %d rows, %d errors",
                         ",".join(batch.column("part").to_pylist()), rows, errors)
            summary.rows += rows
            summary.errors += errors
            bar.update(rows + errors)
            bar.set_postfix(errors=summary.errors, refresh=False)
    done_after_first = summary.rows + summary.errors - first_rows
    if first_at is not None and last_at > first_at and done_after_first > 0:
        summary.steady_images_per_s = done_after_first / (last_at - first_at)


def _write_measured(
    config: ScoreConfig,
    writer: PartWriter,
    start: float,
    command: list[str],
    created: str,
) -> ScoreSummary:
    """BOLD5000: write the measured ROI table (no encoder) in the score-table format.

    Rows are keyed by ``subject/image_id`` (every subject saw the same stimuli).
    """
    from neuromem.data import bold5000
    from neuromem.scoring.table import open_table

    frame = bold5000.measured_table(config.root)
    if config.limit is not None:
        frame = frame.iloc[: config.limit]
    keys = frame["subject"].astype(str) + "/" + frame[IMAGE_ID].astype(str)
    done: set[str] = set()
    if writer.written_ids():
        written = open_table(config.out).to_table(columns=["subject", IMAGE_ID]).to_pandas()
        done = set(written["subject"].astype(str) + "/" + written[IMAGE_ID].astype(str))
    todo = frame[~keys.isin(done)]
    todo_keys = keys[~keys.isin(done)].tolist()
    table = pa.Table.from_pandas(todo, preserve_index=False)
    metadata = build_metadata(
        encoder={"spec": str(frame["encoder"].iloc[0]), "kind": "measured", "trained": True},
        atlas="BOLD5000 subject-specific functional ROIs",
        rois=None,
        command=command,
        dataset="bold5000",
    )
    metadata["created"] = created
    for first in range(0, table.num_rows, config.rows_per_part):
        writer.write(
            write_metadata(table.slice(first, config.rows_per_part), metadata),
            keys=todo_keys[first : first + config.rows_per_part],
        )
    wall = time.perf_counter() - start
    return ScoreSummary(
        out=writer.uri,
        rows=len(todo),
        skipped=len(frame) - len(todo),
        wall_s=wall,
        images_per_s=len(todo) / wall if wall > 0 else 0.0,
    )
