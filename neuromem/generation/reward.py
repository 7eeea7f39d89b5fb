"""The composite brain reward: a weighted sum of standardised ROI responses.

.. math::

    R(\\text{image}) = \\sum_{r} w_r \\, \\frac{a_r(\\text{image}) - \\mu_r}{\\sigma_r}

where ``a_r`` is a brain encoder's mean predicted response in ROI ``r``. It is differentiable
with respect to the pixels, so it can train a diffusion model (DRaFT) or guide sampling.

Defaults (documented choices)
-----------------------------
- ROIs: ``LOC``, ``FFA``, ``RSC``, ``PPA`` (:data:`DEFAULT_ROIS`), the four regions seed 000's
  composite reward uses: object and face responses up, scene-navigation responses down.
- Weights: each ROI's memorability correlation, sign and size unchanged (``w_r = r``), read from a
  decomposition ``results.json`` (plain Pearson ``r`` by default, or the category-partial ``r``)
  or written by hand in a YAML file. With neither, the values seed 000 reports
  (:data:`SEED000_WEIGHTS`).
- Standardisation: ``mu_r`` and ``sigma_r`` (sample standard deviation, ``ddof=1``) of the ROI
  column over a score table; without a table ``mu = 0`` and ``sigma = 1`` (raw responses).

YAML weight files look like::

    weights: {LOC: 0.05, FFA: 0.23, RSC: -0.49, PPA: -0.37}

Every output that uses a reward records :meth:`RewardSpec.to_dict`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuromem.errors import InputError, UnknownNameError

DEFAULT_ROIS: tuple[str, ...] = ("LOC", "FFA", "RSC", "PPA")

# Pearson r of each ROI's predicted response with LaMem memorability, as reported by seed 000.
SEED000_WEIGHTS: dict[str, float] = {"LOC": 0.05, "FFA": 0.23, "RSC": -0.49, "PPA": -0.37}

CORRELATIONS = {"pearson": "pearson_r", "partial": "partial_r"}


def roi_name(column: str) -> str:
    """ROI name without the table prefix: ``"roi_FFA"`` and ``"FFA"`` both give ``"FFA"``."""
    return column[4:] if column.startswith("roi_") else column


@dataclass(frozen=True)
class RewardSpec:
    """Weights and standardisation of a composite reward.

    Attributes
    ----------
    weights : dict of str to float
        ROI name (no ``roi_`` prefix) → weight ``w_r``.
    mean, std : dict of str to float
        ROI name → ``mu_r`` and ``sigma_r`` (same units as the encoder's responses).
    source : str
        Where the weights came from (a path or ``"seed000"``).
    correlation : str or None
        ``"pearson"`` or ``"partial"`` when the weights came from a ``results.json``.
    stats_source : str or None
        The score table ``mean`` and ``std`` came from; None for the defaults 0 and 1.
    """

    weights: dict[str, float]
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    source: str = "seed000"
    correlation: str | None = None
    stats_source: str | None = None

    def __post_init__(self) -> None:
        if not self.weights:
            raise InputError("a reward needs at least one ROI weight")
        for name, value in self.weights.items():
            if not math.isfinite(value):
                raise InputError(f"weight of ROI {name!r} is {value}; expected a finite number")
        object.__setattr__(self, "mean", {r: float(self.mean.get(r, 0.0)) for r in self.weights})
        object.__setattr__(self, "std", {r: float(self.std.get(r, 1.0)) for r in self.weights})
        for name in self.weights:
            if not self.std[name] > 0:
                raise InputError(f"std of ROI {name!r} is {self.std[name]}; expected > 0")

    @property
    def rois(self) -> list[str]:
        """ROI names in weight order."""
        return list(self.weights)

    def with_stats(self, mean: Mapping[str, float], std: Mapping[str, float], source: str):
        """A copy with ``mu`` and ``sigma`` replaced (see :func:`roi_stats_from_table`)."""
        return RewardSpec(
            weights=dict(self.weights),
            mean={r: float(mean[r]) for r in self.rois},
            std={r: float(std[r]) for r in self.rois},
            source=self.source,
            correlation=self.correlation,
            stats_source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record of the reward, written next to every output."""
        return {
            "formula": "sum_r w_r * (response_r - mean_r) / std_r",
            "weights": dict(self.weights),
            "mean": {r: self.mean[r] for r in self.rois},
            "std": {r: self.std[r] for r in self.rois},
            "source": self.source,
            "correlation": self.correlation,
            "stats_source": self.stats_source,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> RewardSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            weights={k: float(v) for k, v in record["weights"].items()},
            mean={k: float(v) for k, v in record.get("mean", {}).items()},
            std={k: float(v) for k, v in record.get("std", {}).items()},
            source=record.get("source", "seed000"),
            correlation=record.get("correlation"),
            stats_source=record.get("stats_source"),
        )


def weights_from_results(
    path: str | Path,
    *,
    correlation: str = "pearson",
    rois: Sequence[str] = DEFAULT_ROIS,
) -> RewardSpec:
    """Weights ``w_r = r`` from a decomposition ``results.json``.

    Parameters
    ----------
    path : str or Path
        ``results.json`` written by the decomposition job (``{"rois": [{"roi": ..., "pearson_r":
        ..., "partial_r": ...}, ...]}``; ROI names with or without the ``roi_`` prefix).
    correlation : {"pearson", "partial"}
        Plain Pearson ``r`` or the partial ``r`` controlling for category.
    rois : sequence of str
        ROIs that enter the reward.

    Returns
    -------
    RewardSpec
        With ``mu = 0``, ``sigma = 1``.

    Raises
    ------
    InputError
        If the file is not a results file, or a requested correlation is missing (``null``).
    UnknownNameError
        If ``correlation`` is unknown or an ROI is not in the file.
    """
    if correlation not in CORRELATIONS:
        raise UnknownNameError(
            f"unknown correlation {correlation!r}; expected one of {sorted(CORRELATIONS)}"
        )
    try:
        results = json.loads(Path(path).read_text(encoding="utf-8"))
        by_name = {roi_name(row["roi"]): row for row in results["rois"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"cannot read ROI correlations from {path}: expected a decomposition results.json "
            f'with a "rois" list of {{"roi", "pearson_r", "partial_r"}} records ({exc})'
        ) from exc
    key = CORRELATIONS[correlation]
    weights = {}
    for name in rois:
        if name not in by_name:
            raise UnknownNameError(
                f"ROI {name!r} is not in {path}; it has {sorted(by_name)}"
            )
        value = by_name[name].get(key)
        if value is None:
            raise InputError(
                f"{path} has no {key} for ROI {name!r} (was the decomposition run with a "
                "category column?); use correlation='pearson'"
            )
        weights[name] = float(value)
    return RewardSpec(weights=weights, source=str(path), correlation=correlation)


def weights_from_yaml(path: str | Path) -> RewardSpec:
    """Weights written by hand: a YAML file with a ``weights`` mapping ROI → number."""
    import yaml

    try:
        record = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        weights = {roi_name(str(k)): float(v) for k, v in record["weights"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(
            f"cannot read reward weights from {path}: expected YAML like "
            f"'weights: {{LOC: 0.05, FFA: 0.23, RSC: -0.49, PPA: -0.37}}' ({exc})"
        ) from exc
    return RewardSpec(weights=weights, source=str(path))


def load_reward_spec(
    path: str | Path | None = None,
    *,
    correlation: str = "pearson",
    rois: Sequence[str] = DEFAULT_ROIS,
    score_table: str | None = None,
    encoder: str | None = None,
    roi_set: str | None = None,
) -> RewardSpec:
    """The reward a command uses: weights from ``path`` (or seed 000's), stats from a table.

    Parameters
    ----------
    path : str, Path or None
        ``*.json`` (decomposition results) or ``*.yaml``/``*.yml`` (hand-written weights);
        None for :data:`SEED000_WEIGHTS`.
    correlation, rois
        See :func:`weights_from_results` (ignored for YAML files).
    score_table : str or None
        Parquet score table for ``mu`` and ``sigma`` (:func:`roi_stats_from_table`).
    encoder, roi_set : str or None
        The reward's encoder spec and ROI set; when given, the score table must have been made
        with both (:func:`check_table_made_with`), since ``mu`` and ``sigma`` of another encoder
        or other regions would standardise the responses wrongly.
    """
    if path is None:
        spec = RewardSpec(weights={r: SEED000_WEIGHTS[r] for r in DEFAULT_ROIS})
    elif str(path).endswith(".json"):
        spec = weights_from_results(path, correlation=correlation, rois=rois)
    elif str(path).endswith((".yaml", ".yml")):
        spec = weights_from_yaml(path)
    else:
        raise InputError(f"reward file {path} must end in .json (results) or .yaml (weights)")
    if score_table is not None:
        if encoder is not None or roi_set is not None:
            check_table_made_with(score_table, encoder=encoder, roi_set=roi_set)
        mean, std = roi_stats_from_table(score_table, spec.rois)
        spec = spec.with_stats(mean, std, str(score_table))
    return spec


def _canonical_spec(spec: str) -> str:
    """An encoder spec with a local weight path made absolute (``kind:/abs/path``)."""
    import os

    kind, sep, argument = spec.partition(":")
    if argument and argument != "tiny" and "://" not in argument:
        argument = os.path.realpath(os.path.expanduser(argument))
    return f"{kind}{sep}{argument}"


def check_table_made_with(source: str, *, encoder: str | None = None,
                          roi_set: str | None = None) -> None:
    """Refuse a score table made by another encoder or ROI set than the reward's.

    The table's metadata (written by ``neuromem score``) records the encoder spec and a
    fingerprint of the ROI set's vertex indices; both must match.

    Parameters
    ----------
    source : str
        Parquet score table (local path or URI).
    encoder : str or None
        Encoder spec of the reward (not checked when None).
    roi_set : str or None
        ROI set of the reward, ``"default"`` or a YAML path (not checked when None).

    Raises
    ------
    InputError
        The table has no neuromem metadata, or was made with another encoder or ROI set (the
        message names both).
    """
    from neuromem.cortex.rois import load_roi_set
    from neuromem.scoring.output import SETTINGS_KEY
    from neuromem.scoring.table import read_metadata

    try:
        settings = read_metadata(source).get(SETTINGS_KEY)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot open score table {source}: {exc}") from exc
    if not settings:
        raise InputError(
            f"score table {source} records no settings (not written by neuromem score), so "
            "its ROI means and stds cannot be checked against the reward's encoder and ROI set"
        )
    if encoder is not None and _canonical_spec(str(settings.get("encoder"))) != \
            _canonical_spec(encoder):
        raise InputError(
            f"score table {source} was made by encoder {settings.get('encoder')!r}, but the "
            f"reward uses {encoder!r}; its ROI means and stds do not apply: score the images "
            "with the reward's encoder, or drop --score-table"
        )
    if roi_set is not None:
        wanted = load_roi_set(roi_set)
        if settings.get("rois") != wanted.to_dict()["indices_sha256"]:
            raise InputError(
                f"score table {source} was made with ROI set {settings.get('rois_name')!r}, but "
                f"the reward uses ROI set {wanted.name!r} ({roi_set}); its ROI means and stds "
                "do not apply: score with the same --rois, or drop --score-table"
            )


def roi_stats_from_table(
    source: str, rois: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (``ddof=1``) of ``roi_<NAME>`` columns of a table.

    Parameters
    ----------
    source : str
        Parquet file or dataset directory (local path or URI pyarrow understands).
    rois : sequence of str
        ROI names without the prefix.

    Returns
    -------
    mean, std : dict of str to float
    """
    import numpy as np
    import pyarrow.dataset as ds

    columns = [f"roi_{r}" for r in rois]
    try:
        dataset = ds.dataset(source, format="parquet", exclude_invalid_files=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot open score table {source}: {exc}") from exc
    missing = [c for c in columns if c not in dataset.schema.names]
    if missing:
        raise UnknownNameError(
            f"score table {source} has no column(s) {missing}; its ROI columns are "
            f"{[c for c in dataset.schema.names if c.startswith('roi_')]}"
        )
    table = dataset.to_table(columns=columns)
    if table.num_rows < 2:
        raise InputError(f"score table {source} has {table.num_rows} rows; need at least 2")
    mean, std = {}, {}
    for name, column in zip(rois, columns, strict=True):
        values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
        values = values[np.isfinite(values)]
        mean[name] = float(values.mean())
        std[name] = float(values.std(ddof=1))
    return mean, std


class CompositeReward(torch.nn.Module):
    """``R(image) = sum_r w_r (a_r - mu_r) / sigma_r`` on top of any brain encoder.

    Parameters
    ----------
    encoder : callable
        A :class:`neuromem.encoders.base.BrainEncoder` (or any module mapping ``images_b3hw`` in
        ``[0, 1]`` to ``responses_bv`` ``(B, 20484)``; ``trunc_layer`` and ``surrogate_layer``
        are passed when given).
    reducer : callable
        A :class:`neuromem.cortex.reduce.RoiReducer`: ``(B, 20484)`` → ``(B, R_all)`` with
        ``column_names`` ``["roi_FFA", ...]``; must contain every ROI of ``spec``.
    spec : RewardSpec
    trunc_layer : int or None
        Depth where the encoder's gradient path stops (value unchanged).
    surrogate_layer : int or None
        Depth of the encoder's straight-through surrogate gradient (CLIP probes; value
        unchanged); see :mod:`neuromem.encoders.base`.
    """

    def __init__(
        self,
        encoder: Callable[..., torch.Tensor],
        reducer: Callable[[torch.Tensor], torch.Tensor],
        spec: RewardSpec,
        trunc_layer: int | None = None,
        surrogate_layer: int | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.reducer = reducer
        self.spec = spec
        self.gradient = {name: value for name, value in (("trunc_layer", trunc_layer),
                                                         ("surrogate_layer", surrogate_layer))
                         if value is not None}
        if surrogate_layer is not None:
            if trunc_layer is not None:
                raise InputError("give trunc_layer (stop the gradient path) or surrogate_layer "
                                 "(straight-through surrogate), not both")
            encoder.check_surrogate_layer(surrogate_layer)
        names = [roi_name(c) for c in reducer.column_names]
        missing = [r for r in spec.rois if r not in names]
        if missing:
            raise UnknownNameError(
                f"reward ROI(s) {missing} are not in the ROI set; it has {names}"
            )
        self.column_names = list(reducer.column_names)
        self.register_buffer("index_r", torch.tensor([names.index(r) for r in spec.rois]))
        self.register_buffer("weight_r", torch.tensor([spec.weights[r] for r in spec.rois]))
        self.register_buffer("mean_r", torch.tensor([spec.mean[r] for r in spec.rois]))
        self.register_buffer("std_r", torch.tensor([spec.std[r] for r in spec.rois]))

    def roi_responses(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Mean response in every ROI of the reducer, shape ``(B, R_all)``."""
        return self.reducer(self.encoder(images_b3hw, **self.gradient))

    def from_roi_responses(self, roi_responses_br: torch.Tensor) -> torch.Tensor:
        """The reward ``(B,)`` from :meth:`roi_responses` output ``(B, R_all)``."""
        selected_br = roi_responses_br[:, self.index_r]
        return ((selected_br - self.mean_r) / self.std_r * self.weight_r).sum(-1)

    def forward(self, images_b3hw: torch.Tensor) -> torch.Tensor:
        """Reward of each image, shape ``(B,)``; differentiable with respect to the pixels."""
        return self.from_roi_responses(self.roi_responses(images_b3hw))


def build_composite_reward(
    encoder: str,
    spec: RewardSpec,
    *,
    device: str | torch.device = "cpu",
    roi_set: str = "default",
    trunc_layer: int | None = None,
    surrogate_layer: int | None = None,
) -> CompositeReward:
    """Load an encoder by spec and an ROI set by name or path, and wrap them in the reward.

    Parameters
    ----------
    encoder : str
        Encoder spec for :func:`neuromem.encoders.load_encoder` (``"clip-probe:tiny"`` ...).
    spec : RewardSpec
    device : str or torch.device
    roi_set : str
        ``"default"`` or a ROI-set YAML path (:func:`neuromem.cortex.rois.load_roi_set`).
    trunc_layer, surrogate_layer : int or None
        Gradient truncation or straight-through surrogate depth of the encoder
        (:class:`CompositeReward`).

    Returns
    -------
    CompositeReward
        On ``device``, in eval mode, with frozen parameters.
    """
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder

    brain = load_encoder(encoder, device=device)
    reward = CompositeReward(brain, RoiReducer(load_roi_set(roi_set)), spec, trunc_layer,
                             surrogate_layer)
    reward = reward.to(device).eval()
    reward.requires_grad_(False)
    return reward
