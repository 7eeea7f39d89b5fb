"""``neuromem fit-probes``: CLIP linear probes of brain responses (vertices or NSD betas).

CLIP image features come from the image-map engine (:func:`neuromem.jobs.image_map.map_images`,
rows mode, :class:`neuromem.probes.features.ProbeFeatureModel`): unreadable images are listed in
``errors.parquet`` and left out. A random held-out part of the images is set aside; on the rest
one ridge regression per vertex is fitted (:func:`neuromem.probes.fit.fit_probe`). Outputs in
``out`` (local): ``probe.safetensors``, ``r2.json`` (:mod:`neuromem.probes.report`), surface maps
and ``errors.parquet``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuromem.errors import InputError
from neuromem.jobs.image_map import ModelRecipe, PoolJobConfig, map_images
from neuromem.runtime.progress import StageTimer

log = logging.getLogger(__name__)

PROBE_FILE = "probe.safetensors"
R2_FILE = "r2.json"
ERRORS_FILE = "errors.parquet"
TARGET_KINDS = ("vertices", "nsd")


@dataclass(frozen=True, kw_only=True)
class FitProbesConfig(PoolJobConfig):
    """Everything ``neuromem fit-probes`` needs; fields mirror the command-line options.

    Attributes
    ----------
    table : str or None
        Score table naming the images (with ``vertices`` for ``targets="vertices"``).
    out : str
        Output folder (local).
    targets : str
        ``vertices`` (distil an encoder) or ``nsd`` (NSD betas).
    model, pretrained, feature_norm : str
        open_clip model name (or ``tiny``), pretrained tag or weight file (``""``: random),
        ``l2`` or ``none``.
    nsd_root, subject, sessions, trials_per_session
        NSD betas (``targets="nsd"``); ``sessions`` like ``"1-3,5"``.
    alphas : str or None
        Comma-separated ridge alphas; None: :data:`neuromem.probes.ridge.DEFAULT_ALPHAS`.
    folds : int
        Cross-validation folds.
    test_fraction : float
        Share of images held out for R².
    seed : int
        Seed of the split, the folds and random tower weights.
    rois : str
        ROI set of the per-ROI R².
    targets_batch : int or None
        Vertices solved at once by the ridge (bounds memory).
    no_plots : bool
        Skip the surface maps.
    """

    out: str
    table: str | None = None
    targets: str = "vertices"
    model: str = "ViT-B-32"
    pretrained: str = "openai"
    feature_norm: str = "l2"
    nsd_root: str | None = None
    subject: int = 1
    sessions: str = "1"
    trials_per_session: int = 750
    alphas: str | None = None
    folds: int = 5
    test_fraction: float = 0.2
    seed: int = 0
    rois: str = "default"
    targets_batch: int | None = None
    no_plots: bool = False
    session_list: list[int] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sessions: list[int] = []
        try:
            for part in self.sessions.split(","):
                first, _, last = part.partition("-")
                sessions.extend(range(int(first), int(last or first) + 1))
        except ValueError:
            raise InputError(f"--sessions must look like '1-3,5', got {self.sessions!r}") from None
        object.__setattr__(self, "session_list", sessions)

    def alpha_grid(self) -> np.ndarray:
        """The ridge alphas."""
        from neuromem.probes.ridge import DEFAULT_ALPHAS

        if self.alphas is None:
            return DEFAULT_ALPHAS
        try:
            return np.array([float(v) for v in self.alphas.split(",") if v.strip()])
        except ValueError:
            raise InputError(f"--alphas must be comma-separated numbers, got "
                             f"{self.alphas!r}") from None

    def check(self) -> None:
        """Raise :class:`InputError` for values no run can use (before Ray starts)."""
        super().check()
        self.require_choice("targets", TARGET_KINDS)
        self.require_local("out")
        self.require_at_least(2, "folds")
        self.require_at_least(1, "targets_batch")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.targets == "vertices" and self.table is None:
            raise InputError("--targets vertices needs a score TABLE with a 'vertices' column")
        if self.targets == "nsd" and self.nsd_root is None:
            raise InputError("--targets nsd needs --nsd-root")
        if (self.alpha_grid() <= 0).any():
            raise InputError("--alphas must be > 0")

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        record.pop("session_list", None)
        return record


def run_fit_probes(config: FitProbesConfig) -> str:
    """Fit and write the probe and its report; returns the printed summary."""
    import torch

    from neuromem.decoding.embeddings import embeddings_of
    from neuromem.encoders.clip_probe import save_clip_probe
    from neuromem.probes.features import ClipModelSpec, ProbeFeatureModel
    from neuromem.probes.fit import fit_probe
    from neuromem.probes.report import plot_maps, r2_report
    from neuromem.probes.ridge import default_backend, train_test_indices
    from neuromem.probes.targets import nsd_targets, vertex_targets
    from neuromem.runtime.storage import check_writable, remove, write_json, write_parquet

    timer = StageTimer()
    config.check()
    pretrained = config.pretrained
    if pretrained and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())
    model = ClipModelSpec(config.model, pretrained, config.seed, config.feature_norm)
    model.validate()
    check_writable(config.out)
    out = Path(config.out)

    ceiling_v = None
    if config.targets == "vertices":
        rows, targets_nv = vertex_targets(config.table)
        source: dict[str, Any] = {"table": str(config.table)}
    else:
        rows, targets_nv, n_reps_n, ceiling_v = nsd_targets(
            config.table, config.nsd_root, config.subject, config.session_list,
            config.trials_per_session)
        source = {"nsd_root": str(config.nsd_root), "subject": config.subject,
                  "sessions": config.session_list,
                  "betas": "betas_fithrf_GLMdenoise_RR (fsaverage), z-scored per session",
                  "mean_repetitions": float(n_reps_n.mean())}

    with timer.stage("CLIP features"):
        result = map_images(rows, ModelRecipe(ProbeFeatureModel, {"model": model.to_dict()}),
                            pool=config.pool, address=config.address,
                            progress=not config.no_progress, desc="CLIP features")
    if result.errors.num_rows:
        write_parquet(out / ERRORS_FILE, result.errors)
    else:
        remove(out / ERRORS_FILE)  # an earlier run's errors are not this probe's
    ok_n = result.ok
    features_ne = embeddings_of(result.values, ok_n)
    rows, targets_nv = rows[ok_n].reset_index(drop=True), targets_nv[ok_n]
    if len(rows) < 2 * config.folds:
        raise InputError(f"only {len(rows)} images could be read; a probe with "
                         f"{config.folds}-fold cross-validation needs at least {2 * config.folds}"
                         f" (errors in {out / ERRORS_FILE})")
    train_idx, test_idx = train_test_indices(len(rows), config.test_fraction, config.seed)
    alphas = config.alpha_grid()
    backend = default_backend()
    log.info("fitting ridge probes: %d vertices, %d training images, %d-fold CV over %d alphas",
             targets_nv.shape[1], train_idx.size, config.folds, alphas.size)
    with timer.stage("ridge"):
        fit = fit_probe(features_ne, targets_nv, train_idx, test_idx, alphas=alphas,
                        n_folds=config.folds, seed=config.seed, backend=backend,
                        n_targets_batch=config.targets_batch)
    report = r2_report(fit, targets_nv[test_idx], config.rois, ceiling_v)
    training = {
        "trained": True, "targets": config.targets, **source,
        "n_train": int(train_idx.size), "n_test": int(test_idx.size),
        "n_failed": int(result.n_errors), "folds": config.folds, "seed": config.seed,
        "test_fraction": config.test_fraction, "alphas_grid": [float(a) for a in alphas],
        "ridge": "himalaya.ridge.RidgeCV(solver='svd', local_alpha=True), features z-scored on "
                 "the training images then folded into the weights",
        "himalaya_backend": backend, "summary": report["summary"],
    }
    probe_path = save_clip_probe(
        out / PROBE_FILE, torch.from_numpy(fit.weight_ve), torch.from_numpy(fit.bias_v),
        model_name=model.open_clip_name, pretrained=model.pretrained,
        feature_norm=model.feature_norm, training=training, tower_seed=model.seed,
        model_config=model.model_config)
    write_json(out / R2_FILE, {"probe": str(probe_path),
                               "encoder_spec": f"clip-probe:{probe_path.resolve()}",
                               "model": model.to_dict(), "training": training, **report})
    if not config.no_plots:
        with timer.stage("figures"):
            plot_maps(report, out, config.rois)
    return (f"fit-probes: {len(rows)} images ({train_idx.size} train, {test_idx.size} held out, "
            f"{result.n_errors} failed), median held-out vertex R² "
            f"{report['summary']['median_vertex_r2']}\n"
            f"probe: {probe_path}\nreport: {out / R2_FILE}\n{timer.format()}")
