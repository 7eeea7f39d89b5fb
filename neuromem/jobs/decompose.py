"""``neuromem decompose``: memorability by brain region, from one or more score tables.

The first table is the primary one; the others (BOLD5000 measurements, CLIP-probe predictions)
are compared with it. Per table: ROI statistics (:func:`neuromem.analysis.roi_stats.roi_statistics`);
for the primary table with ``vertices``: the vertex-level correlation and, with a category or
covariates, the partial correlation in one streaming pass (on Ray as a map-reduce over the
table's files with ``ray=True`` or when Ray is already running), then sign coherence and spin
tests of both maps with the medial wall (vertices with no atlas label) left out. Writes
``results.json`` (:mod:`neuromem.analysis.results`), ``report.md``, ``report.html``,
``vertex_r.npy``, ``vertex_partial_r.npy`` and PNG figures to ``out`` (local or URI).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.analysis.correlation import N_BOOTSTRAP, SPEARMAN_CI_METHODS
from neuromem.analysis.vertexwise import Controls, GroupedVertexMoments, VertexMoments
from neuromem.errors import InputError, UnknownNameError
from neuromem.runtime.config import JobConfig
from neuromem.runtime.progress import StageTimer, progress_bar, track

log = logging.getLogger(__name__)

#: Fewest rows with a finite memorability that make a decomposition.
MIN_ROWS = 3

#: Largest set of per-category vertex moments (bytes) a partial vertex map may keep in one
#: process: about 2,000 category levels with no covariate.
MAX_MOMENTS_BYTES = 2 * 1024**3

#: Files a decomposition writes into its output folder (removed before a rerun writes afresh).
OUTPUTS = ("results.json", "report.md", "report.html", "vertex_r.npy", "vertex_partial_r.npy",
           "roi_bars.png", "roi_scatter.png", "vertex_r.png", "vertex_partial_r.png",
           "coherence.png", "coherence_partial.png")

#: A figure still to draw (a call that writes it and returns its path) and its caption.
Drawing = tuple[Callable[[], Path], str]


@dataclass(frozen=True)
class DecomposeConfig(JobConfig):
    """Everything ``neuromem decompose`` needs; fields mirror the command-line options.

    Attributes
    ----------
    tables : tuple of str
        Score tables (folder, file or URI); the first is the primary one.
    out : str
        Output folder (local path or URI).
    memorability : str
        Memorability column.
    category : str or None
        Category column; None: ``category`` when the table has it.
    covariates : str
        Comma-separated numeric columns to control for as well.
    vertices : bool
        Vertex maps (raw; partial with a category or covariates), sign coherence and spin
        tests, the medial wall left out.
    spins : int
        Random rotations of the spin test (0: none).
    seed : int
        Seed of bootstraps and spins.
    bootstrap : int
        Resamples of the Spearman BCa interval (0: none).
    spearman_ci : str
        ``auto`` (analytic from 2,000 rows, BCa below), ``analytic`` or ``bootstrap``
        (:func:`neuromem.analysis.correlation.spearman`).
    rois : str
        ROI set giving each ROI's vertices.
    ray : bool
        Run the vertex pass as Ray tasks, one per file.
    address : str or None
        Ray cluster address.
    overwrite : bool
        Replace a decomposition made with other settings in ``out`` instead of refusing.
    no_progress : bool
        No progress bars (ROI statistics, vertex pass, spin test, figures).
    """

    tables: tuple[str, ...]
    out: str
    memorability: str = "memorability"
    category: str | None = None
    covariates: str = ""
    vertices: bool = False
    spins: int = 1000
    seed: int = 0
    bootstrap: int = N_BOOTSTRAP
    spearman_ci: str = "auto"
    rois: str = "default"
    ray: bool = False
    address: str | None = None
    overwrite: bool = False
    no_progress: bool = False
    covariate_list: list[str] = field(default_factory=list, init=False, repr=False,
                                      compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", tuple(self.tables))
        object.__setattr__(self, "covariate_list",
                           [c.strip() for c in self.covariates.split(",") if c.strip()])

    def check(self) -> None:
        """Raise :class:`InputError` for values no run can use."""
        self.require_at_least(0, "spins")
        self.require_choice("spearman_ci", SPEARMAN_CI_METHODS)
        if self.bootstrap and self.bootstrap < 100:
            raise InputError(f"--bootstrap must be 0 (no interval) or at least 100 resamples, "
                             f"got {self.bootstrap}")
        if not self.tables:
            raise InputError("give at least one score table")

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        record.pop("covariate_list", None)
        return record

    def run_settings(self) -> dict[str, Any]:
        """The settings that shape the outputs (a rerun into ``out`` must repeat them)."""
        operational = ("out", "overwrite", "ray", "address", "no_progress")
        return {k: v for k, v in self.to_dict().items() if k not in operational}


@dataclass
class DecomposeSummary:
    """What a run did (printed at the end)."""

    out: str
    n_images: int
    n_rois: int
    strongest: list[tuple[str, float]]
    timing: str
    stages: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        lines = [f"decomposed {self.n_images} images over {self.n_rois} ROIs; wrote "
                 f"{self.out}/results.json and report.html"]
        if self.strongest:
            lines.append("strongest ROIs (Pearson r): " + ", ".join(
                f"{roi} {r:+.3f}" for roi, r in self.strongest))
        lines.append(self.timing)
        return "\n".join(lines)


def vertex_moments_ray(dataset, memorability: str, *, controls: Controls | None = None,
                       progress: bool = True) -> VertexMoments | GroupedVertexMoments:
    """Map: one Ray task per file computes its moments; reduce: merge on the driver (in file
    order, whatever order the tasks finish in)."""
    import ray

    from neuromem.analysis.vertexwise import merge_all, vertex_moments

    filesystem = dataset.filesystem

    @ray.remote(num_cpus=1)
    def file_moments(path: str) -> VertexMoments | GroupedVertexMoments:
        return vertex_moments(path, memorability, controls=controls, filesystem=filesystem,
                              n_threads=1)

    files = sorted(dataset.files)
    log.info("vertex pass: %d Ray tasks", len(files))
    refs = [file_moments.remote(f) for f in files]
    position = {ref.hex(): i for i, ref in enumerate(refs)}
    pending, finished, merged, total = list(refs), set(), 0, None
    with progress_bar(len(refs), desc="vertex pass (Ray)", unit="file", enabled=progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            finished.update(position[ref.hex()] for ref in done)
            bar.update(len(done))
            # fold in each file's moments as soon as every earlier file's are in, so the
            # driver holds two sets of moments, not one per file
            while merged in finished:
                part = ray.get(refs[merged])
                total = part if total is None else total.merge(part)
                refs[merged] = None  # frees the task's result in the object store
                merged += 1
    return merge_all([] if total is None else [total])  # no file: merge_all's clear error


def vertex_moments_local(dataset, memorability: str, *, controls: Controls | None = None,
                         progress: bool = True) -> VertexMoments | GroupedVertexMoments:
    """One streaming pass over the table in this process, with a bar over rows."""
    from neuromem.analysis.vertexwise import BLOCK_ROWS, moments_of_batches
    from neuromem.scoring.table import VERTICES_COLUMN, iter_batches

    extra = [] if controls is None else controls.columns
    batches = iter_batches(dataset, columns=list(dict.fromkeys([VERTICES_COLUMN, memorability,
                                                                  *extra])),
                           batch_size=BLOCK_ROWS)
    with progress_bar(dataset.count_rows(), desc="vertex pass", unit="row",
                      enabled=progress) as bar:
        return moments_of_batches(_counted(batches, bar), memorability, controls=controls)


def _counted(batches, bar):
    """The record batches, counting their rows on ``bar`` as they are read."""
    for batch in batches:
        yield batch
        bar.update(batch.num_rows)


def spin_cache_dir() -> Path:
    """Where spin rotations are kept: ``$NEUROMEM_CACHE/spins`` (default ``~/.cache/neuromem``)."""
    root = os.environ.get("NEUROMEM_CACHE") or Path.home() / ".cache" / "neuromem"
    return Path(root) / "spins"


def cached_spin_indices(n_spins: int, seed: int, *, on_spin=None) -> np.ndarray:
    """:func:`neuromem.analysis.spin.spin_indices` of the fsaverage5 sphere, computed once per
    ``(n_spins, seed)`` and kept as int16 (41 MB for 1,000 spins): reruns of an analysis, which
    use the same rotations, skip the nearest-neighbour search. A damaged cache file is
    recomputed."""
    from neuromem.analysis.spin import spin_indices
    from neuromem.cortex.surface import N_VERTICES, sphere_coords

    path = spin_cache_dir() / f"fsaverage5_{n_spins}_seed{seed}.npy"
    try:
        cached = np.load(path)
        if cached.shape == (n_spins, N_VERTICES):
            if on_spin is not None:
                for _ in range(n_spins):
                    on_spin()
            return cached.astype(np.int32)
    except (OSError, ValueError):
        pass
    indices_sv = spin_indices(sphere_coords(), n_spins, seed, on_spin=on_spin)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(temp, indices_sv.astype(np.int16))
        os.replace(temp, path)
    except OSError as error:  # a read-only home: the run still works, uncached
        log.info("spin rotations not cached (%s)", error)
    return indices_sv


def _ray_running() -> bool:
    """Whether this process is connected to Ray (without importing Ray, which takes seconds)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def run_decompose(config: DecomposeConfig) -> DecomposeSummary:
    """Compute the decomposition and write its outputs (see the module docstring)."""
    from neuromem.analysis.agreement import agreement_records, agreement_summary, roi_agreement
    from neuromem.analysis.results import predictor_names, report_blocks, results_record
    from neuromem.analysis.roi_stats import check_columns, numeric_column, roi_statistics
    from neuromem.runtime.provenance import versions
    from neuromem.runtime.storage import join_uri, remove, staged_output, write_json
    from neuromem.scoring.output import prepare_run
    from neuromem.scoring.table import VERTICES_COLUMN, open_table, read_metadata, roi_columns

    config.check()
    timer = StageTimer()
    datasets = [open_table(t) for t in config.tables]
    metadata = [read_metadata(d) for d in datasets]
    primary = datasets[0]
    names = primary.schema.names
    category = config.category or ("category" if "category" in names else None)
    notes = [] if category else ["The table has no `category` column: no category control."]
    rois = roi_columns(primary.schema)
    if not rois:
        raise UnknownNameError(f"{config.tables[0]} has no ROI columns (roi_<NAME>); columns: "
                               f"{names}")
    if config.vertices and VERTICES_COLUMN not in names:
        raise UnknownNameError(f"--vertices needs a {VERTICES_COLUMN!r} column in "
                               f"{config.tables[0]}; score the images with `neuromem score "
                               "--keep-vertices`")
    frames, frame_rois = [], []
    for i, dataset in enumerate(datasets):
        table_rois = roi_columns(dataset.schema)
        cols = [config.memorability, *([category] if category else []),
                *config.covariate_list, *table_rois]
        check_columns(dataset.schema.names, cols, what=str(config.tables[i]))
        with timer.stage(f"read table {i + 1}"):
            frame = dataset.to_table(columns=cols).to_pandas()
        usable = int(np.isfinite(numeric_column(frame, config.memorability)).sum())
        if usable < MIN_ROWS:
            raise InputError(f"{config.tables[i]}: {usable} of {len(frame)} rows have a finite "
                             f"{config.memorability!r}; a decomposition needs at least "
                             f"{MIN_ROWS} (is this the right --memorability column?)")
        frames.append(frame)
        frame_rois.append(table_rois)
    if category and frames[0][category].notna().sum() == 0:
        if config.category:
            raise InputError(f"--category {category!r} has no value in {config.tables[0]}")
        notes.append(f"The `{category}` column of the table is empty: no category control.")
        category = None
    for covariate in config.covariate_list:
        if not np.isfinite(numeric_column(frames[0], covariate)).any():
            raise InputError(f"--covariates {covariate!r} has no finite value in "
                             f"{config.tables[0]}")
    controls = _controls(config, frames[0], category) if config.vertices else None
    # every table is usable: only now make the output folder, refusing one that holds a
    # decomposition made with other settings; a rerun leaves nothing of the earlier one
    prepare_run(config.out, config.run_settings(), overwrite=config.overwrite)
    for name in OUTPUTS:
        remove(join_uri(config.out, name))

    records = []
    for i, (frame, table_rois) in enumerate(zip(frames, frame_rois, strict=True)):
        desc = "ROI statistics" + (f" of table {i + 1}" if len(datasets) > 1 else "")
        with timer.stage("ROI statistics"), progress_bar(
                len(table_rois), desc=desc, unit="ROI", enabled=not config.no_progress) as bar:
            records.append(roi_statistics(frame, table_rois, memorability=config.memorability,
                                          category=category, covariates=config.covariate_list,
                                          seed=config.seed, n_resamples=config.bootstrap,
                                          spearman_ci=config.spearman_ci, on_roi=lambda _roi, bar=bar: bar.update()))
    primary_records = records[0]
    used_ray = config.vertices and (config.ray or _ray_running())
    predictors = predictor_names(list(config.tables), metadata)

    with staged_output(config.out) as out_dir:
        vertex_drawings: list[Drawing] = []
        vertex_maps = None
        if config.vertices:
            vertex_drawings, vertex_maps = _vertex_statistics(
                config, primary, metadata[0], primary_records, notes, out_dir, used_ray, timer,
                controls)
        agreement, summary = [], {}
        if len(datasets) > 1:
            table = roi_agreement(dict(zip(predictors, records, strict=True)))
            agreement, summary = agreement_records(table), agreement_summary(table)
        n_images = int(np.isfinite(numeric_column(frames[0], config.memorability)).sum())
        results = results_record(n_images=n_images, memorability=config.memorability,
                                 category=category, seed=config.seed, records=primary_records,
                                 agreement=agreement, agreement_summary=summary,
                                 vertex_maps=vertex_maps)
        write_json(out_dir / "results.json", results)
        with timer.stage("figures and report"):
            drawings = _roi_drawings(config, frames[0], rois, primary_records, predictors[0],
                                    category, out_dir) + vertex_drawings
            figures = [(draw().name, caption) for draw, caption in track(
                drawings, desc="figures", unit="figure", enabled=not config.no_progress)]
            settings = {**config.to_dict(), "category": category,
                        "covariates": config.covariate_list}
            from neuromem.analysis.report import write_report

            blocks = report_blocks(settings, results, primary_records, metadata, predictors,
                                   notes, figures, versions(("ray",) if used_ray else ()))
            write_report(out_dir, blocks, title="neuromem decomposition")
    ranked = sorted((r for r in primary_records if r["pearson_r"] is not None),
                    key=lambda r: -abs(r["pearson_r"]))
    return DecomposeSummary(config.out, n_images, len(primary_records),
                            [(r["roi"], r["pearson_r"]) for r in ranked[:3]], timer.format(),
                            timer.to_dict())


def _controls(config: DecomposeConfig, frame, category: str | None) -> Controls | None:
    """What the partial vertex map controls for (None: nothing, no partial map)."""
    if category is None and not config.covariate_list:
        return None
    levels = () if category is None else tuple(sorted(
        {str(v) for v in frame[category].dropna().unique()}))
    controls = Controls(category, levels, tuple(config.covariate_list))
    size = GroupedVertexMoments.nbytes(controls.n_groups, 1 + len(controls.covariates))
    if size > MAX_MOMENTS_BYTES:
        raise InputError(
            f"the partial vertex map would keep {size / 1e9:.1f} GB of moments per Ray task: "
            f"{category!r} has {len(levels)} levels; give a coarser --category")
    return controls


def _vertex_statistics(config: DecomposeConfig, primary, metadata: dict, records: list[dict],
                       notes: list[str], out_dir, used_ray: bool, timer: StageTimer,
                       controls: Controls | None) -> tuple[list[Drawing], dict]:
    """Vertex maps (raw and, with controls, partial), sign coherence and spin tests into
    ``records``; returns the figures to draw and the ``vertex_maps`` record of
    ``results.json``."""
    from neuromem.analysis.report import plot_coherence_histograms
    from neuromem.analysis.roi_stats import add_family_q
    from neuromem.analysis.spin import spin_test
    from neuromem.analysis.vertexwise import mask_record, mask_unlabelled, roi_sign_coherence
    from neuromem.cortex.plotting import plot_surface_map
    from neuromem.cortex.rois import load_roi_set
    from neuromem.jobs.session import ray_session

    with timer.stage("vertex pass"):
        if used_ray:
            with ray_session(config.address):
                moments = vertex_moments_ray(primary, config.memorability, controls=controls,
                                             progress=not config.no_progress)
        else:
            moments = vertex_moments_local(primary, config.memorability, controls=controls,
                                           progress=not config.no_progress)
    raw = moments if controls is None else moments.pooled()
    maps = {"": raw.pearson_r()}
    np.save(out_dir / "vertex_r.npy", maps[""].astype(np.float32))
    record: dict[str, Any] = {"raw": {"file": "vertex_r.npy", "statistic": "Pearson r"}}
    if controls is not None:
        maps["partial_"] = moments.partial_r()
        np.save(out_dir / "vertex_partial_r.npy", maps["partial_"].astype(np.float32))
        record["partial"] = {
            "file": "vertex_partial_r.npy",
            "statistic": "partial Pearson r (one-hot category and covariates partialled out)",
            "category": controls.category, "levels": list(controls.levels),
            "covariates": list(controls.covariates),
            "n_rows": int(moments.n_gv[:-1].sum(0).max()),
        }
    roi_set = load_roi_set(config.rois)
    record["mask"] = mask_record(roi_set.labelled_v, roi_set.atlas)
    roi_names = [r["roi"] for r in records]
    roi_idx = {r: roi_set.indices[r] for r in roi_names if r in roi_set.indices}
    table_rois = metadata.get("rois") or {}
    table_hash = table_rois.get("indices_sha256") if isinstance(table_rois, dict) else None
    if table_hash and table_hash != roi_set.to_dict()["indices_sha256"]:
        notes.append(f"The ROI set `{config.rois}` differs from the one the table was scored "
                     f"with ({table_rois.get('name')}): vertex statistics use `{config.rois}`.")
    missing = [r for r in roi_names if r not in roi_idx]
    if missing:
        notes.append(f"No vertices known for ROIs {missing} in ROI set `{config.rois}`.")
    indices_sv = None
    if config.spins:
        with timer.stage("spin test"), progress_bar(config.spins, desc="spin test",
                                                    unit="spin",
                                                    enabled=not config.no_progress) as bar:
            indices_sv = cached_spin_indices(config.spins, config.seed, on_spin=bar.update)
    drawings: list[Drawing] = []
    for prefix, map_v in maps.items():
        masked_v = mask_unlabelled(map_v, roi_set.labelled_v)
        _add_vertex_records(records, prefix, roi_sign_coherence(masked_v, roi_idx),
                            {} if indices_sv is None else
                            spin_test(masked_v, roi_idx, indices_sv=indices_sv))
        for p_key in ("mean_r", "coherence"):
            add_family_q(records, f"{prefix}spin_p_{p_key}", f"{prefix}spin_q_{p_key}")
        what = "partial r" if prefix else "r"
        if not np.isfinite(map_v).any():
            notes.append(f"The vertex {what} map is undefined at every vertex (too few rows "
                         "or a constant memorability once the controls are partialled out): "
                         "no figure.")
            continue
        drawings.append((partial(plot_surface_map, map_v, out_dir / f"vertex_{prefix}r.png",
                                 roi_set=roi_set,
                                 title=f"vertex {what} with {config.memorability}"),
                         f"Vertex {what} with memorability (inflated fsaverage5)"))
        if roi_idx:
            drawings.append((partial(plot_coherence_histograms, masked_v, roi_idx,
                                     out_dir / f"coherence{'_partial' if prefix else ''}.png"),
                             f"Vertex {what} within each ROI (medial wall left out)"))
    return drawings, record


def _add_vertex_records(records: list[dict], prefix: str, coherence: dict, spins: dict) -> None:
    """Sign coherence and spin p of one vertex map into the ROI records (keys ``prefix...``)."""

    def value(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    for rec in records:
        roi = rec["roi"]
        if roi in coherence:
            rec[f"{prefix}frac_vertices_negative"] = value(coherence[roi][0])
            rec[f"{prefix}frac_vertices_positive"] = value(coherence[roi][1])
        if roi in spins:
            rec[f"{prefix}spin_p_mean_r"] = value(spins[roi].p_mean_r)
            rec[f"{prefix}spin_p_coherence"] = value(spins[roi].p_coherence)


def _roi_drawings(config: DecomposeConfig, frame, rois: list[str], records: list[dict],
                 predictor: str, category: str | None, out_dir) -> list[Drawing]:
    from neuromem.analysis.report import plot_roi_bars, plot_roi_scatter

    return [(partial(plot_roi_bars, records, out_dir / "roi_bars.png",
                     title=f"{predictor}: ROI r with {config.memorability}"),
             "ROI correlations with memorability (95 % CI; diamonds: partial r)"),
            (partial(plot_roi_scatter, frame, rois, config.memorability,
                     out_dir / "roi_scatter.png", category=category, seed=config.seed),
             "ROI response against memorability")]
