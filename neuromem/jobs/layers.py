"""``neuromem layers``: every layer of image networks against memorability and the brain (Ray).

1. **Checks** (before Ray starts): settings, network specs, the image table, the brain targets
   and ROIs, the ceiling file, the output folder (a rerun with other settings refuses).
2. **Extraction**, per network: the layers are discovered on the driver (one dummy forward
   pass), then the image-map engine runs :class:`~neuromem.representations.features.LayerFeatureModel`
   in parts mode into ``OUT/features/<network>/`` (one raw float32 column per layer; unreadable
   images in its ``_errors/``; a rerun resumes).
3. **Analysis**: one Ray task per layer (:func:`neuromem.representations.scan.analyse_layer`)
   and, with ``compare``, per layer shared by two networks
   (:func:`~neuromem.representations.scan.compare_layer`), on the images every network has.
4. **Outputs**: ``OUT/layers.parquet``, ``OUT/layers.png`` (with a memorability read-out),
   ``OUT/compare.parquet`` (with ``compare``) and ``OUT/run.json`` (settings, conventions,
   versions, what each extraction did).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from neuromem.data.schema import BASE_COLUMNS
from neuromem.errors import InputError
from neuromem.jobs.image_map import (
    ModelRecipe,
    PartsOutput,
    PoolJobConfig,
    map_images,
)
from neuromem.representations.cka import CKA_KINDS
from neuromem.representations.features import (
    build_layer_features,
    discover,
    feature_ids,
    feature_settings,
    network_slug,
    read_layer,
    write_manifest,
)
from neuromem.representations.layers import Pooling
from neuromem.representations.readout import NORMALISATION
from neuromem.representations.targets import (
    TARGET_KINDS,
    BrainTargets,
    ScanTargets,
    read_brain_targets,
    read_image_rows,
    roi_names,
    scan_targets,
)
from neuromem.runtime.progress import StageTimer, progress_bar
from neuromem.runtime.provenance import command_line, utc_now, versions
from neuromem.runtime.storage import ERRORS_DIR, PartWriter, join_uri, write_bytes, write_json
from neuromem.scoring.output import (
    RUN_RECORD,
    SETTINGS_KEY,
    MetadataStamp,
    prepare_output,
    prepare_run,
)

#: Fewest images with brain responses and features for an analysis.
MIN_IMAGES = 10
#: Files of a run (replaced by ``--overwrite``).
OUTPUTS = ("features", "layers.parquet", "layers.png", "compare.parquet")


@dataclass(frozen=True)
class LayersConfig(PoolJobConfig):
    """Everything ``neuromem layers`` needs; fields mirror the command-line options.

    Attributes
    ----------
    table : str
        Score table (or Parquet of dataset rows) with ``image_id`` and ``source``; its
        ``memorability`` (and LaMem's ``splits``) feed the read-out.
    network : tuple of str
        Network specs ``LIBRARY:NAME[@WEIGHTS]``.
    out : str
        Output folder (local path or URI).
    brain : str or None
        Score table of the brain targets (default: ``table``), rows matched by ``image_id``.
    targets : {"auto", "vertices", "rois"}
        Brain targets per ROI.
    roi : tuple of str or None
        ROIs to compare with (with or without ``roi_``); None: every bilateral ROI.
    rois : str
        ROI set of vertex targets.
    max_vertices : int
        Most vertices per ROI.
    ceiling : str or None
        JSON ``{ROI: ceiling}``: also ceiling-normalised predictivity.
    lamem_root : str or None
        LaMem folder whose split files define the read-out splits.
    include : str or None
        Regular expression: keep only matching layer names.
    grid, max_features : int
        Pooling (:class:`~neuromem.representations.layers.Pooling`).
    image_size : int or None
        Input side in pixels (None: each network's).
    limit : int or None
        First ``limit`` images only.
    compare : bool
        Also compare every pair of networks layer by layer.
    figure_roi : str or None
        ROI of the figure's x axis (default: LOC if present, else the first).
    cka : {"debiased", "biased"}
        CKA estimator.
    seed : int
        Seed of random weights, projections, splits and vertex subsamples.
    overwrite : bool
        Replace an earlier run in ``out``.
    actors ... decode_threads
        Actor pool of the extraction (:class:`~neuromem.jobs.image_map.PoolOptions`).
    address : str or None
        Ray cluster address.
    no_progress : bool
        No progress bars.
    """

    table: str
    network: tuple[str, ...]
    out: str
    brain: str | None = None
    targets: str = "auto"
    roi: tuple[str, ...] | None = None
    rois: str = "default"
    max_vertices: int = 256
    ceiling: str | None = None
    lamem_root: str | None = None
    include: str | None = None
    grid: int = 2
    max_features: int = 4096
    image_size: int | None = None
    limit: int | None = None
    compare: bool = False
    figure_roi: str | None = None
    cka: str = "debiased"
    seed: int = 0
    overwrite: bool = False
    batch_size: int = field(default=32, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "network", tuple(self.network or ()))
        if self.roi is not None:
            object.__setattr__(self, "roi", tuple(roi_names(list(self.roi))))
        if self.figure_roi is not None:
            object.__setattr__(self, "figure_roi", roi_names([self.figure_roi])[0])

    def check(self) -> None:
        """Raise :class:`InputError` for values the job cannot run with."""
        if not self.network:
            raise InputError("give at least one --network LIBRARY:NAME[@WEIGHTS]")
        if len(set(self.network)) != len(self.network):
            raise InputError("each --network may be given once")
        if self.compare and len(self.network) < 2:
            raise InputError("--compare needs at least two --network")
        self.require_choice("targets", TARGET_KINDS)
        self.require_choice("cka", CKA_KINDS)
        self.require_at_least(1, "grid", "max_features", "max_vertices", "image_size", "limit")
        super().check()
        Pooling(self.grid, self.max_features, self.seed)

    @property
    def pooling(self) -> Pooling:
        return Pooling(self.grid, self.max_features, self.seed)

    def run_settings(self) -> dict[str, Any]:
        """The settings that shape the outputs (a rerun into ``out`` must repeat them).

        The networks are not among them: a rerun may add networks (their features are
        extracted; those already extracted are resumed).
        """
        shaping = ("table", "brain", "targets", "roi", "rois", "max_vertices", "ceiling",
                   "lamem_root", "include", "grid", "max_features", "image_size", "limit",
                   "cka", "seed")
        return {name: self.to_dict()[name] for name in shaping}


@dataclass
class ExtractionSummary:
    """What the extraction of one network did."""

    network: str
    folder: str
    layers: int
    rows: int = 0
    errors: int = 0
    skipped: int = 0
    errors_total: int = 0
    wall_s: float = 0.0
    steady: dict = field(default_factory=dict)


@dataclass
class LayersSummary:
    """What a run did (printed at the end, recorded in ``run.json``)."""

    out: str
    networks: int
    layers: int
    images: int
    targets: int
    extractions: list[ExtractionSummary]
    outputs: list[str]
    seconds: dict[str, float]
    timing: str = ""

    def format(self) -> str:
        """Human-readable summary lines."""
        lines = [f"{self.layers} layers of {self.networks} network(s) on {self.images} images "
                 f"against {self.targets} brain targets"]
        for e in self.extractions:
            rate = e.steady.get("rows_per_s")
            lines.append(f"  {e.network}: {e.layers} layers, {e.rows} images extracted, "
                         f"{e.skipped} already done, {e.errors} errors in {e.wall_s:.1f} s"
                         + (f" (steady {rate:.1f} images/s)" if rate else ""))
            if e.errors_total:
                lines.append(f"    errors: {join_uri(e.folder, ERRORS_DIR)}")
        lines += [f"wrote {path}" for path in self.outputs]
        lines.append(self.timing)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Prepared:
    rows: pd.DataFrame
    brain: BrainTargets
    folders: dict[str, str]
    figure_roi: str


def prepare(config: LayersConfig) -> _Prepared:
    """Everything checkable before Ray starts and before any network is built."""
    from neuromem.networks import check_network

    config.check()
    for spec in config.network:
        check_network(spec)
    rows = read_image_rows(config.table, lamem_root=config.lamem_root, limit=config.limit)
    brain = read_brain_targets(
        config.brain or config.table, kind=config.targets,
        rois=None if config.roi is None else list(config.roi), roi_set=config.rois,
        max_vertices=config.max_vertices, ceiling=config.ceiling, seed=config.seed)
    brain = brain.restrict(rows["image_id"].astype(str).tolist())
    if len(brain.image_ids) < MIN_IMAGES:
        raise InputError(f"only {len(brain.image_ids)} images of the brain table are in "
                         f"--table; at least {MIN_IMAGES} are needed")
    figure_roi = config.figure_roi or ("LOC" if "LOC" in brain.targets else next(iter(brain.targets)))
    if figure_roi not in brain.targets:
        raise InputError(f"--figure-roi {figure_roi} is not among the ROIs compared "
                         f"({', '.join(brain.targets)})")
    prepare_run(config.out, config.run_settings(), overwrite=config.overwrite, outputs=OUTPUTS)
    folders = {}
    for spec in config.network:
        folders[spec] = join_uri(config.out, "features", network_slug(spec))
        settings = feature_settings(spec, image_size=config.image_size, pooling=config.pooling,
                                    include=config.include)
        prepare_output(PartWriter(folders[spec]), settings, overwrite=config.overwrite)
    return _Prepared(rows, brain, folders, figure_roi)


def extract(config: LayersConfig, spec: str, folder: str, rows: pd.DataFrame,
            argv: list[str] | None) -> tuple[list[dict[str, Any]], ExtractionSummary]:
    """Discover the layers of one network and extract them for ``rows`` (parts mode, resumes)."""
    start = time.perf_counter()
    settings = feature_settings(spec, image_size=config.image_size, pooling=config.pooling,
                                include=config.include)
    layers = discover(spec, image_size=config.image_size, pooling=config.pooling,
                      include=config.include)
    write_manifest(folder, settings, layers)
    metadata = {SETTINGS_KEY: settings, "command": command_line(argv), "created": utc_now(),
                "neuromem_layers": [layer["name"] for layer in layers]}
    result = map_images(
        rows[list(BASE_COLUMNS)],
        ModelRecipe(build_layer_features, {
            "spec": spec, "image_size": config.image_size, "grid": config.grid,
            "max_features": config.max_features, "seed": config.seed, "layers": layers}),
        pool=config.pool,
        parts=PartsOutput(folder, metadata=MetadataStamp(metadata)),
        decode_size=(config.image_size, 0) if config.decode == "tasks" else None,
        progress=not config.no_progress,
        desc=f"extracting {spec}",
    )
    errors_total = len(PartWriter(folder).written_keys(errors=True))
    return layers, ExtractionSummary(spec, folder, len(layers), result.n_rows, result.n_errors,
                                     result.n_skipped, errors_total,
                                     time.perf_counter() - start, result.steady.to_dict())


class _RoiCounter:
    """Inside a task: tells the driver's bar, through ``relay``, that one more ROI is done."""

    def __init__(self, relay) -> None:
        self.relay, self.last = relay, None

    def __call__(self, roi: str) -> None:
        if self.relay is not None:
            self.last = self.relay.advance.remote(1)

    def flush(self) -> None:
        """Wait until the relay has counted every ROI (an actor runs one caller's calls in
        order), so the count is complete when the task returns."""
        if self.last is not None:
            import ray

            ray.get(self.last)


def analyse_task(folder: str, layer: dict[str, Any], targets: ScanTargets,
                 cka_kind: str, relay=None) -> dict[str, Any]:
    """Ray task: read one layer and analyse it (each ROI done advances ``relay``)."""
    from neuromem.representations.scan import analyse_layer

    ids, x_nf = read_layer(folder, layer["name"], layer["n_features"])
    counter = _RoiCounter(relay)
    result = analyse_layer(ids, x_nf, layer, targets, cka_kind=cka_kind, on_roi=counter)
    counter.flush()
    return result


def compare_task(folder_a: str, folder_b: str, layer: dict[str, Any], targets: ScanTargets,
                 cka_kind: str, relay=None) -> dict[str, Any]:
    """Ray task: read one layer of two networks and compare them (each ROI advances ``relay``)."""
    from neuromem.representations.scan import compare_layer

    ids_a, x_a = read_layer(folder_a, layer["name"], layer["n_features"])
    ids_b, x_b = read_layer(folder_b, layer["name"], layer["n_features"])
    counter = _RoiCounter(relay)
    result = compare_layer(ids_a, x_a, ids_b, x_b, layer, targets, cka_kind=cka_kind,
                           on_roi=counter)
    counter.flush()
    return result


#: Seconds between two reads of the ROIs done while layer tasks run.
POLL_S = 0.5


def _run_tasks(submit, jobs: list[tuple[tuple, dict[str, Any]]], *, n_rois: int, desc: str,
               progress: bool) -> list[dict[str, Any]]:
    """Run one Ray task per job and return their records in job order, with a bar over
    (layer, ROI) pairs that moves as each ROI of each layer is done.

    ``submit(*args, relay)`` starts the task of a job ``(args, record)``; its result is merged
    into ``record``. The bar counts ``n_rois + 1`` units per task: one per ROI (relayed from the
    task by a :class:`~neuromem.jobs.progress.ProgressRelay`; a task returns once the relay has
    counted its ROIs) and one when the task returns.
    """
    import ray

    from neuromem.jobs.progress import start_relay

    relay = start_relay() if progress else None
    futures = [submit(*args, relay) for args, _ in jobs]
    position = {ref: i for i, ref in enumerate(futures)}
    results: list[dict[str, Any] | None] = [None] * len(futures)
    pending, finished = list(futures), 0
    with progress_bar(len(futures) * (n_rois + 1), desc=desc, unit="ROI",
                      enabled=progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1,
                                     timeout=POLL_S if relay is not None else None)
            for ref in done:
                results[position[ref]] = {**jobs[position[ref]][1], **ray.get(ref)}
            finished += len(done)
            if relay is not None:
                rois_done, _, _ = ray.get(relay.read.remote())
                bar.set_postfix_str(f"{finished}/{len(futures)} layers", refresh=False)
                bar.update(rois_done + finished - bar.n)
    return results


def run_layers(config: LayersConfig, argv: list[str] | None = None) -> LayersSummary:
    """Run the layer scan (see the module docstring) and return its summary.

    Raises
    ------
    InputError
        Bad settings, unknown networks or ROIs, an output folder holding another run, or no
        image extracted.
    """
    import ray

    from neuromem.jobs.session import ray_session

    timer = StageTimer()
    with timer.stage("checks"):
        prepared = prepare(config)
    rows = prepared.rows
    extractions, manifests = [], {}
    with ray_session(config.address):
        with timer.stage("extraction"):
            for spec in config.network:
                layers, summary = extract(config, spec, prepared.folders[spec], rows, argv)
                manifests[spec] = layers
                extractions.append(summary)
        with timer.stage("analysis"):
            have = set(rows["image_id"].astype(str))
            for folder in prepared.folders.values():
                have &= set(feature_ids(folder))
            kept = rows[rows["image_id"].astype(str).isin(have)].reset_index(drop=True)
            targets = scan_targets(kept, prepared.brain, config.seed)
            if len(targets.brain.image_ids) < MIN_IMAGES:
                raise InputError(f"only {len(targets.brain.image_ids)} images have features and "
                                 f"brain responses; at least {MIN_IMAGES} are needed")
            targets_ref = ray.put(targets)
            task = ray.remote(num_cpus=1)(analyse_task)
            jobs = [((prepared.folders[spec], layer, targets_ref, config.cka), {"model": spec})
                    for spec, layers in manifests.items() for layer in layers]
            n_rois = len(targets.brain.targets)
            desc = (f"analysing {len(jobs)} layers × {n_rois} ROIs "
                    f"({targets.brain.n_targets} targets)")
            table = pd.DataFrame.from_records(
                _run_tasks(task.remote, jobs, n_rois=n_rois, desc=desc,
                           progress=not config.no_progress))
            compare = None
            if config.compare:
                compare = _compare(config, manifests, prepared.folders, targets_ref, n_rois)
    outputs = _write_outputs(config, table, compare, prepared.figure_roi,
                             targets.memorability is not None)
    summary = LayersSummary(config.out, len(config.network), len(table), len(kept),
                            targets.brain.n_targets, extractions, outputs, timer.to_dict(),
                            timer.format())
    write_json(join_uri(config.out, RUN_RECORD), {
        SETTINGS_KEY: config.run_settings(), "config": config.to_dict(),
        "conventions": {"cka": config.cka, "predictivity": NORMALISATION},
        "command": command_line(argv), "finished": utc_now(), "versions": versions(("ray",)),
        "summary": summary.to_dict()})
    return summary


def _compare(config: LayersConfig, manifests: dict, folders: dict[str, str],
             targets_ref, n_rois: int) -> pd.DataFrame:
    """Layer-by-layer comparison of every pair of networks (shared layer names)."""
    import ray

    task = ray.remote(num_cpus=1)(compare_task)
    specs = list(manifests)
    jobs = []
    for i, spec_a in enumerate(specs):
        for spec_b in specs[i + 1:]:
            shared = {layer["name"] for layer in manifests[spec_b]}
            jobs += [((folders[spec_a], folders[spec_b], layer, targets_ref, config.cka),
                      {"model_a": spec_a, "model_b": spec_b})
                     for layer in manifests[spec_a] if layer["name"] in shared]
    if not jobs:
        raise InputError("--compare needs at least two networks that share layer names")
    return pd.DataFrame.from_records(
        _run_tasks(task.remote, jobs, n_rois=n_rois, desc=f"comparing {len(jobs)} layers",
                   progress=not config.no_progress))


def _write_outputs(config: LayersConfig, table: pd.DataFrame, compare: pd.DataFrame | None,
                   figure_roi: str, has_memorability: bool) -> list[str]:
    """Write the tables and the figure; remove a figure or comparison an earlier run left."""
    from neuromem.representations.plotting import plot_scan
    from neuromem.runtime.storage import remove, write_parquet

    written = []
    path = join_uri(config.out, "layers.parquet")
    write_parquet(path, pa.Table.from_pandas(table, preserve_index=False))
    written.append(path)
    figure = join_uri(config.out, "layers.png")
    if has_memorability:
        write_bytes(figure, plot_scan(table, figure_roi, cka_kind=config.cka))
        written.append(figure)
    else:
        remove(figure)
    path = join_uri(config.out, "compare.parquet")
    if compare is not None:
        write_parquet(path, pa.Table.from_pandas(compare, preserve_index=False))
        written.append(path)
    else:
        remove(path)
    return written

