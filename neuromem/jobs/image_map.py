"""The one image-map engine: rows naming images → a model on a Ray actor pool → rows or Parquet parts.

Every job that turns images into rows (``score``, ``layers``, ``fit-probes``, ``assess``,
``label-categories``, ``train-memnet``, ``decode``, ``cross-eval``) runs this engine, so every job
isolates bad images the same way: a row whose file is missing, unreadable, corrupt or of the
wrong kind becomes a row of the errors table (``image_id``, ``source``, ``stage``, ``error``)
and the job carries on.

Stages
------
1. The driver splits the input rows (``image_id``, ``dataset``, ``source`` and any other
   columns) into blocks; Ray tasks read each block's bytes (:func:`neuromem.data.readers.load_payloads`:
   local paths, URIs, NSD's HDF5 brick).
2. A fixed-size pool of actors (Ray issue #59144: an autoscaling GPU pool can stay at one
   actor) each builds the model once from a :class:`ModelRecipe`, decodes its blocks
   (a thread pool, or nvJPEG on a GPU; or separate CPU tasks with ``decode="tasks"``), runs the
   model on encoder batches of ``batch_size`` rows and records each batch's start, end and
   stage times (:class:`~neuromem.runtime.throughput.BatchTime`).
3. Output, one of two modes:

   *rows* (``parts=None``)
       the model's columns come back to the driver, one row per input row in input order (null
       where the row failed): for small outputs (scores, labels, embeddings).
   *parts* (:class:`PartsOutput`)
       each actor writes every block as one atomic Parquet part (input columns + model columns,
       the metadata in the schema) and its failed rows to ``_errors/``; only a summary row
       travels back. Memory stays bounded whatever the dataset size, and a rerun into the same
       folder resumes: keys already written (or failed, unless ``retry_errors``) are skipped.

The driver draws one progress bar over images and returns a :class:`MapResult` with the counts,
the errors and the batch times (steady-state throughput, where the time went).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from neuromem.data.batch import (
    ERROR_SCHEMA,
    DecodedBatch,
    decode_for,
    decode_rows,
    error_table,
    take_rows,
)
from neuromem.data.schema import IMAGE_ID, LOADED_COLUMNS, SOURCE, rows_to_arrow
from neuromem.errors import InputError, NeuromemError
from neuromem.runtime.config import JobConfig
from neuromem.runtime.progress import progress_bar
from neuromem.runtime.storage import PartWriter, display
from neuromem.runtime.throughput import BatchTime, SteadyState, stage_totals, steady_state

log = logging.getLogger(__name__)

#: Where decoding runs: in the model's actors, or in separate CPU tasks.
DECODE_MODES = ("actor", "tasks")
#: Columns every input row needs.
INPUT_COLUMNS = (IMAGE_ID, "dataset", SOURCE)

_ROW = "__row"          # input position (rows mode)
_ERROR = "__error"      # failure message, null on success (rows mode, decode tasks)
_STAGE = "__stage"      # stage that failed (rows mode)
_TIMES = "__times"      # JSON {"batches": [BatchTime...], "startup": {...} or null}, first row
_PIXELS = "__pixels"    # decoded pixels (decode tasks)


@dataclass(frozen=True)
class ModelRecipe:
    """How each actor builds its model: ``build(**kwargs)``.

    ``build`` must be importable by the workers (a module-level function or class of the
    library); ``kwargs`` must be picklable. It returns a :class:`~neuromem.data.batch.RowModel`.
    """

    build: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PartsOutput:
    """Parts mode: where and how the actors write the output table.

    Attributes
    ----------
    location : str
        Output folder (local path or URI).
    metadata : Callable or None
        ``metadata(model) -> pyarrow.Table -> pyarrow.Table``: a function of the built model
        returning the function that stamps a part with the table's metadata; None: none.
    rows_per_part : int
        Rows per part (rounded up to whole encoder batches). A killed run redoes at most one
        part per actor; larger parts read back faster.
    key : str
        Column identifying rows (parts are named by a hash of their keys).
    retry_errors : bool
        Score again the keys in ``_errors/``; their old errors are removed once they succeed.
    """

    location: str
    metadata: Callable[[Any], Callable[[pa.Table], pa.Table]] | None = None
    rows_per_part: int = 1024
    key: str = IMAGE_ID
    retry_errors: bool = False


@dataclass
class MapResult:
    """What a run of the engine did.

    Attributes
    ----------
    values : pyarrow.Table or None
        Rows mode: the model's columns, one row per input row in input order, null where the
        row failed. None in parts mode.
    ok : numpy.ndarray or None
        Rows mode: ``(N,)`` bool, rows that succeeded.
    errors : pyarrow.Table
        The failed rows of this run (:data:`~neuromem.data.batch.ERROR_SCHEMA`).
    n_rows, n_errors : int
        Rows that succeeded and failed in this run.
    n_skipped : int
        Parts mode: rows skipped because an earlier run wrote (or failed) them.
    n_retried : int
        Parts mode with ``retry_errors``: earlier failures tried again.
    batches : list of BatchTime
        Every encoder batch of every actor.
    wall_s : float
        Wall time of the run, s.
    first_result_s : float or None
        Seconds from the start until the first block came back (start-up cost).
    interrupted : bool
        Parts mode: the run was stopped by Ctrl-C; the parts written so far stay, and a rerun
        resumes after them.
    started_at, ray_ready_at : float
        Wall clock (``time.time()``) when Ray was asked for, and once it was up.
    actor_starts : list of dict
        Per actor: wall clock when its constructor began (``actor_init``) and its model was
        built (``model_ready``).
    """

    values: pa.Table | None = None
    ok: np.ndarray | None = None
    errors: pa.Table = field(default_factory=lambda: ERROR_SCHEMA.empty_table())
    n_rows: int = 0
    n_errors: int = 0
    n_skipped: int = 0
    n_retried: int = 0
    batches: list[BatchTime] = field(default_factory=list)
    wall_s: float = 0.0
    first_result_s: float | None = None
    started_at: float = field(default_factory=time.time)
    interrupted: bool = False
    ray_ready_at: float | None = None
    actor_starts: list[dict[str, float]] = field(default_factory=list)

    @property
    def startup(self) -> dict[str, float]:
        """Where a run's start-up went, s: ``ray`` (starting or joining Ray), ``actors``
        (worker processes and imports, until the first actor began building its model),
        ``model`` (that actor's model build), ``first_batch`` (until its first batch ended)."""
        if self.ray_ready_at is None or not self.actor_starts or not self.batches:
            return {}
        first = min(self.actor_starts, key=lambda s: s["actor_init"])
        first_end = min(b.end for b in self.batches)
        return {"ray": self.ray_ready_at - self.started_at,
                "actors": first["actor_init"] - self.ray_ready_at,
                "model": first["model_ready"] - first["actor_init"],
                "first_batch": first_end - first["model_ready"]}

    @property
    def steady(self) -> SteadyState:
        """Steady-state throughput over the interval where every actor was busy."""
        return steady_state(self.batches)

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage (``decode``, ``model``, ``write``) summed over actors."""
        return stage_totals(self.batches)

    @property
    def images_per_s(self) -> float:
        """Rows done (succeeded or failed) per second of wall time, end to end."""
        return (self.n_rows + self.n_errors) / self.wall_s if self.wall_s > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# the actor


class ImageMapActor:
    """One member of the actor pool: decode, run the model in batches, write or return rows.

    Called by Ray Data with a :class:`pyarrow.Table` block of loaded rows (``media`` and
    ``payload`` added, or ``__pixels`` and ``__error`` with ``decode="tasks"``).
    """

    def __init__(self, recipe: ModelRecipe, batch_size: int, decode_threads: int,
                 torch_threads: int, parts: PartsOutput | None) -> None:
        self.startup: dict[str, float] | None = {"actor_init": time.time()}
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(max(1, torch_threads))
        # A user error while building the model (missing or corrupt weights) is raised by the
        # first call instead: Ray keeps a task's exception for the driver, but reduces an actor
        # constructor's to text, and the user should see neuromem's one-line message.
        self.build_error: NeuromemError | None = None
        try:
            self.model = recipe.build(**recipe.kwargs)
        except NeuromemError as error:
            self.build_error = error
        self.startup["model_ready"] = time.time()
        self.batch_size = batch_size
        self.executor = ThreadPoolExecutor(max(1, decode_threads))
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.parts = parts
        if parts is not None:
            self.writer = PartWriter(parts.location, key=parts.key)
            self.stamp = (parts.metadata(self.model) if parts.metadata and self.build_error is None
                          else (lambda t: t))

    def __call__(self, block: pa.Table) -> pa.Table:
        if self.build_error is not None:
            raise self.build_error
        outputs: list[pa.Table] = []
        inputs: list[pa.Table] = []
        errors: list[pa.Table] = []
        times: list[BatchTime] = []
        for first in range(0, block.num_rows, self.batch_size):
            start = time.time()
            batch = block.slice(first, self.batch_size)
            decoded = (_from_decode_task(batch) if _PIXELS in batch.column_names
                       else decode_for(self.model, batch, self.executor))
            decoded_at = time.time()
            try:
                outputs.append(self.model(decoded))
                inputs.append(decoded.rows)
                errors.append(decoded.errors)
            except Exception:  # noqa: BLE001 - a failing batch is retried row by row
                ok_rows, ok_out, failed = self._rows_one_by_one(decoded)
                outputs.append(ok_out)
                inputs.append(ok_rows)
                errors.extend([decoded.errors, failed])
            end = time.time()
            times.append(BatchTime(self.worker, start, end, batch.num_rows,
                                   {"decode": decoded.seconds or decoded_at - start,
                                    "model": end - decoded_at}))
        if self.parts is not None:
            return self._write(inputs, outputs, errors, times)
        return self._rows(block, inputs, outputs, errors, times)

    def _times(self, times: list[BatchTime]) -> str:
        """The block's batch times, and the actor's start-up with its first block."""
        startup, self.startup = self.startup, None
        return json.dumps({"batches": [t.to_dict() for t in times], "startup": startup})

    def _rows_one_by_one(self, decoded: DecodedBatch):
        """Run the model row by row after a batch failed, to isolate the row(s) at fault."""
        ok, outs, failed_ids, failed_sources, messages = [], [], [], [], []
        for i in range(decoded.rows.num_rows):
            one = _slice_decoded(decoded, i)
            try:
                outs.append(self.model(one))
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - recorded as this row's error
                failed_ids.append(decoded.rows.column(IMAGE_ID)[i].as_py())
                failed_sources.append(decoded.rows.column(SOURCE)[i].as_py())
                messages.append(f"{type(exc).__name__}: {exc}")
        out = (pa.concat_tables(outs) if outs else self.model.schema.empty_table())
        return (take_rows(decoded.rows, ok), out,
                error_table(failed_ids, failed_sources, "model", messages))

    def _write(self, inputs, outputs, errors, times) -> pa.Table:
        start = time.time()
        table = _join(inputs, outputs)
        part = self.writer.write(self.stamp(table)) if table.num_rows else None
        failed = pa.concat_tables(errors)
        self.writer.write(failed, errors=True)
        write_s = time.time() - start
        if times:
            last = times[-1]
            times[-1] = BatchTime(last.worker, last.start, last.end + write_s, last.rows,
                                  {**last.stages, "write": write_s})
        return pa.table({"part": [part or ""], "rows": [table.num_rows],
                         "errors": [failed.num_rows],
                         _TIMES: [self._times(times)]})

    def _rows(self, block, inputs, outputs, errors, times) -> pa.Table:
        positions = block.column(_ROW).to_numpy()
        ids = block.column(IMAGE_ID).to_pylist()
        out = pa.concat_tables(outputs) if outputs else self.model.schema.empty_table()
        done_ids = pa.concat_tables(inputs).column(IMAGE_ID).to_pylist()
        failed = pa.concat_tables(errors)
        index = {image_id: i for i, image_id in enumerate(done_ids)}
        reasons = dict(zip(failed.column(IMAGE_ID).to_pylist(),
                           zip(failed.column("stage").to_pylist(),
                               failed.column("error").to_pylist(), strict=True), strict=True))
        take = [index.get(i) for i in ids]
        columns = {name: out.column(name).take(pa.array(take, pa.int64()))
                   for name in out.column_names}
        return pa.table({
            _ROW: positions,
            **columns,
            _STAGE: pa.array([reasons.get(i, (None, None))[0] for i in ids], pa.string()),
            _ERROR: pa.array([reasons.get(i, (None, None))[1] for i in ids], pa.string()),
            _TIMES: pa.array([self._times(times)]
                             + [None] * (len(ids) - 1), pa.string()),
        })


def _join(inputs: list[pa.Table], outputs: list[pa.Table]) -> pa.Table:
    """Input columns (without ``media``/``payload``) beside the model's columns."""
    rows = pa.concat_tables(inputs, promote_options="permissive")
    out = pa.concat_tables(outputs)
    rows = rows.drop_columns([c for c in (*LOADED_COLUMNS, _ROW) if c in rows.column_names])
    for name in out.column_names:
        rows = rows.append_column(out.schema.field(name), out.column(name))
    return rows


def _slice_decoded(decoded: DecodedBatch, i: int) -> DecodedBatch:
    pixels = decoded.pixels
    one = [pixels[i]] if isinstance(pixels, list) else pixels[i : i + 1]
    return DecodedBatch(rows=decoded.rows.slice(i, 1), pixels=one, is_clip=decoded.is_clip,
                        errors=ERROR_SCHEMA.empty_table())


# ----------------------------------------------------------------------------------------------
# decoding in separate CPU tasks


def decode_task(batch: pa.Table, size: int, clip_frames: int) -> pa.Table:
    """Ray task of ``decode="tasks"``: loaded rows → rows with uint8 pixels and ``__error``.

    Rows that fail keep their columns, zero pixels and their reason in ``__error``.
    """
    from ray.data.extensions import ArrowTensorArray

    decoded = decode_rows(batch, size, clip_frames)
    reasons = dict(zip(decoded.errors.column(IMAGE_ID).to_pylist(),
                       decoded.errors.column("error").to_pylist(), strict=True))
    ids = batch.column(IMAGE_ID).to_pylist()
    ok_pixels = iter(decoded.pixels)
    blank = np.zeros(decoded.pixels.shape[1:], np.uint8)
    pixels = np.stack([blank if i in reasons else next(ok_pixels) for i in ids])
    table = batch.drop_columns([c for c in LOADED_COLUMNS if c in batch.column_names])
    table = table.append_column(_PIXELS, ArrowTensorArray.from_numpy(pixels))
    return table.append_column(_ERROR, pa.array([reasons.get(i) for i in ids], pa.string()))


def _from_decode_task(table: pa.Table) -> DecodedBatch:
    reasons = table.column(_ERROR).to_pylist()
    ok = [i for i, reason in enumerate(reasons) if reason is None]
    failed = take_rows(table, [i for i, reason in enumerate(reasons) if reason is not None])
    pixels = table.column(_PIXELS).combine_chunks().to_numpy_ndarray()
    return DecodedBatch(
        rows=take_rows(table.drop_columns([_PIXELS, _ERROR]), ok),
        pixels=pixels[ok],
        is_clip=pixels.ndim == 5,
        errors=error_table(failed.column(IMAGE_ID).to_pylist(),
                           failed.column(SOURCE).to_pylist(), "decode",
                           failed.column(_ERROR).to_pylist()),
    )


# ----------------------------------------------------------------------------------------------
# the driver


@dataclass(frozen=True)
class PoolOptions:
    """How the actor pool runs (the ``--actors``, ``--gpus-per-actor``, ... options).

    Attributes
    ----------
    actors : int
        Size of the fixed actor pool.
    gpus_per_actor : float or None
        GPUs per actor; None: 1 when the cluster has GPUs, else 0.
    cpus_per_actor : float
        CPUs reserved per actor.
    torch_threads : int or None
        torch threads per actor on CPU; None: ``cpus_per_actor`` (Ray sets 1 otherwise).
    batch_size : int
        Rows per model call.
    decode : str
        ``"actor"`` (in the actors, nvJPEG on GPU) or ``"tasks"`` (separate CPU tasks).
    decode_threads : int
        Decoding threads per actor.
    """

    actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None
    batch_size: int = 64
    decode: str = "actor"
    decode_threads: int = 4

    def check(self) -> None:
        """Raise :class:`InputError` for values the pool cannot run with."""
        for name in ("actors", "batch_size", "decode_threads"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.decode not in DECODE_MODES:
            raise InputError(f"--decode must be one of {', '.join(DECODE_MODES)}, "
                             f"got {self.decode!r}")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise InputError(f"--gpus-per-actor must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise InputError(f"--cpus-per-actor must be > 0, got {self.cpus_per_actor}")


@dataclass(frozen=True, kw_only=True)
class PoolJobConfig(JobConfig):
    """Base of the configs of jobs that run an actor pool: the ``options.add_cluster`` fields.

    Keyword-only, so a job's own required fields may come first; a job that wants another
    default redeclares the field with ``field(default=..., kw_only=True)``.
    """

    actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    torch_threads: int | None = None
    batch_size: int = 64
    decode: str = "actor"
    decode_threads: int = 4
    address: str | None = None
    no_progress: bool = False

    @property
    def pool(self) -> PoolOptions:
        """The actor-pool options."""
        return PoolOptions(**{f.name: getattr(self, f.name) for f in fields(PoolOptions)})

    def check(self) -> None:
        """Raise :class:`InputError` for pool values the job cannot run with."""
        self.pool.check()


def map_images(
    rows: pd.DataFrame,
    recipe: ModelRecipe,
    *,
    pool: PoolOptions = PoolOptions(),
    parts: PartsOutput | None = None,
    decode_size: tuple[int | None, int] | None = None,
    address: str | None = None,
    progress: bool = True,
    desc: str = "images",
) -> MapResult:
    """Run a model over the images of ``rows`` on a Ray actor pool (see the module docstring).

    Ray is started (or joined) through :func:`neuromem.jobs.session.ray_session` only when
    there is work to do; inside an enclosing ``ray_session`` that session is used.

    Parameters
    ----------
    rows : pandas.DataFrame
        At least ``image_id``, ``dataset`` and ``source`` (path, URI, or NSD
        ``.../nsd_stimuli.hdf5#<index>``); in parts mode every column goes to the output.
    recipe : ModelRecipe
        How each actor builds its model.
    pool : PoolOptions
        Actor pool settings.
    parts : PartsOutput or None
        Parts mode (actors write the table) instead of rows mode.
    address : str or None
        Ray cluster address (``--address``); None: ``RAY_ADDRESS``, else an embedded Ray.
    decode_size : (int or None, int) or None
        ``(input_size, clip_frames)`` of the model, needed only with ``pool.decode="tasks"``
        (decoding then happens before the model exists).
    progress : bool
        Draw a progress bar.
    desc : str
        Label of the progress bar.

    Returns
    -------
    MapResult

    Raises
    ------
    InputError
        When the rows lack the input columns, or none of the rows to do succeeded (the message
        gives the first error and, in parts mode, where the errors table is).
    """
    from neuromem.jobs.session import ray_session

    start = time.perf_counter()
    pool.check()
    missing = [c for c in INPUT_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(f"image rows need columns {list(INPUT_COLUMNS)}; missing {missing}")
    result = MapResult()
    writer = None
    if parts is not None:
        writer = PartWriter(parts.location, key=parts.key)
        writer.prepare()
        rows, result.n_skipped, result.n_retried = _rows_to_do(rows, writer, parts)
    if len(rows) == 0:
        result.wall_s = time.perf_counter() - start
        return result
    if pool.decode == "tasks" and decode_size is None:
        raise InputError("decode='tasks' needs the model's decode_size")
    returned: list[pa.Table] = []
    failure: BaseException | None = None
    result.started_at = time.time()
    with ray_session(address):
        result.ray_ready_at = time.time()
        try:
            returned = _run_pool(rows, recipe, pool, parts, decode_size, result, start,
                                 progress, desc)
        except KeyboardInterrupt as error:
            if parts is None:  # rows mode: nothing was kept, the caller stops too
                failure = _without_frames(error)
            result.interrupted = True  # parts mode: what was written stays and resumes
        except Exception as error:
            failure = _without_frames(error)
        if failure is not None or result.interrupted:
            # The failed pipeline's frames hold its actors (and their CPUs and GPUs) in
            # reference cycles; free them now, or a shared Ray would run the next job short.
            gc.collect()
    if failure is not None:
        raise failure
    result.wall_s = time.perf_counter() - start
    if result.interrupted:
        return result
    if parts is None:
        _collect_rows(returned, rows, result)
    elif parts.retry_errors and result.n_rows:
        _clear_retried_errors(writer)
    if result.n_rows == 0 and result.n_errors:
        first = result.errors.column("error")[0].as_py() if result.errors.num_rows else "?"
        where = f"; errors in {display(writer.location)}/_errors" if writer is not None else ""
        raise InputError(f"none of the {result.n_errors} images could be processed; "
                         f"first error: {first}{where}")
    return result


def _run_pool(rows: pd.DataFrame, recipe: ModelRecipe, pool: PoolOptions,
              parts: PartsOutput | None, decode_size, result: MapResult, start: float,
              progress: bool, desc: str) -> list[pa.Table]:
    """Build the Ray Data pipeline and drain it (inside a Ray session)."""
    import ray

    from neuromem.data.readers import load_payloads
    from neuromem.jobs.session import cluster_has_gpus

    gpus = pool.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if cluster_has_gpus() else 0.0
    block_rows = pool.batch_size
    if parts is not None:  # one block per part, in whole encoder batches
        block_rows = -(-parts.rows_per_part // pool.batch_size) * pool.batch_size
    if parts is None:  # only what reading needs travels; values come back by position
        table = pa.table({**{c: pa.array(rows[c].astype(str).tolist(), pa.string())
                             for c in INPUT_COLUMNS},
                          _ROW: pa.array(np.arange(len(rows)), pa.int64())})
    else:
        table = rows_to_arrow(rows.reset_index(drop=True))
    blocks = [table.slice(i, block_rows) for i in range(0, table.num_rows, block_rows)]
    dataset = ray.data.from_arrow(blocks).map_batches(
        load_payloads, batch_size=pool.batch_size, batch_format="pyarrow")
    if pool.decode == "tasks":
        dataset = dataset.map_batches(
            decode_task, batch_size=pool.batch_size, batch_format="pyarrow",
            fn_kwargs={"size": decode_size[0], "clip_frames": decode_size[1]})
    dataset = dataset.map_batches(
        ImageMapActor,
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_gpus=gpus,
        num_cpus=pool.cpus_per_actor,
        batch_size=block_rows,
        batch_format="pyarrow",
        zero_copy_batch=True,
        fn_constructor_kwargs={
            "recipe": recipe,
            "batch_size": pool.batch_size,
            "decode_threads": pool.decode_threads,
            "torch_threads": pool.torch_threads or max(1, int(pool.cpus_per_actor)),
            "parts": parts,
        },
    )
    return _drain(dataset, result, len(rows), start, progress, desc, parts is not None)


def _without_frames(error: BaseException) -> BaseException:
    """``error`` with the tracebacks of its whole chain dropped (they hold the pipeline)."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        stack += [current.__cause__, current.__context__]
    return error


def _rows_to_do(rows: pd.DataFrame, writer: PartWriter,
                parts: PartsOutput) -> tuple[pd.DataFrame, int, int]:
    """Rows not yet written (resume), the number skipped and the number retried."""
    written = writer.written_keys()
    failed = writer.written_keys(errors=True) - written
    done = written if parts.retry_errors else written | failed
    keys = rows[parts.key].astype(str)
    todo = rows[~keys.isin(done)]
    retried = int(keys.isin(failed).sum()) if parts.retry_errors else 0
    return todo, len(rows) - len(todo), retried


def _drain(dataset, result: MapResult, total: int, start: float, progress: bool, desc: str,
           parts_mode: bool) -> list[pa.Table]:
    """Consume the actors' output, updating the bar, the counts and the batch times."""
    returned: list[pa.Table] = []
    blocks = iter(dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    with progress_bar(total, desc=desc, unit="img", enabled=progress) as bar, closing(blocks):
        # closing(): on an error or Ctrl-C the executor stops now and frees its actors, not
        # whenever the exception's traceback is collected (a shared Ray would wait for them)
        for block in blocks:
            if result.first_result_s is None:
                result.first_result_s = time.perf_counter() - start
            for text in block.column(_TIMES).to_pylist():
                if text:
                    record = json.loads(text)
                    result.batches.extend(BatchTime(**t) for t in record["batches"])
                    if record["startup"]:
                        result.actor_starts.append(record["startup"])
            if parts_mode:
                log.debug("wrote part(s) %s", ",".join(block.column("part").to_pylist()))
                done = sum(block.column("rows").to_pylist())
                failed = sum(block.column("errors").to_pylist())
            else:
                failed = block.num_rows - block.column(_ERROR).null_count
                done = block.num_rows - failed
                returned.append(block)
            result.n_rows += done
            result.n_errors += failed
            bar.update(done + failed)
            bar.set_postfix(errors=result.n_errors, refresh=False)
    return returned


def _collect_rows(returned: list[pa.Table], rows: pd.DataFrame, result: MapResult) -> None:
    """Rows mode: order the returned rows as the input and split off the errors."""
    table = pa.concat_tables(returned).sort_by(_ROW)
    if table.num_rows != len(rows):
        raise RuntimeError(f"image map lost rows: {len(rows)} in, {table.num_rows} out")
    failed = table.column(_ERROR).is_valid().to_numpy(zero_copy_only=False)
    result.ok = ~failed
    result.values = table.drop_columns([_ROW, _ERROR, _STAGE, _TIMES])
    index = np.flatnonzero(failed)
    result.errors = pa.table({
        IMAGE_ID: pa.array(rows[IMAGE_ID].astype(str).to_numpy()[index], pa.string()),
        SOURCE: pa.array(rows[SOURCE].astype(str).to_numpy()[index], pa.string()),
        "stage": table.column(_STAGE).take(pa.array(index, pa.int64())),
        "error": table.column(_ERROR).take(pa.array(index, pa.int64())),
    }, schema=ERROR_SCHEMA)


def _clear_retried_errors(writer: PartWriter) -> None:
    """Remove from ``_errors/`` the keys that now have a row (their retry succeeded)."""
    import pyarrow.parquet as pq

    written = writer.written_keys()
    for path in writer.part_paths(errors=True):
        errors = pq.read_table(path, filesystem=writer.fs)
        keep = [i for i, key in enumerate(errors.column(writer.key).to_pylist())
                if str(key) not in written]
        if len(keep) == errors.num_rows:
            continue
        if keep:
            writer.write(take_rows(errors, keep), errors=True)
        writer.fs.delete_file(path)
