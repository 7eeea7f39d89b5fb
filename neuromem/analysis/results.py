"""The decomposition's outputs: the ``results.json`` record and the report's content.

``results.json`` is a contract (``neuromem finetune --reward`` reads it, see
:mod:`neuromem.generation.reward`): ``n_images`` (rows of the primary table with a finite
memorability), ``memorability_column``, ``category_column``,
``seed``, ``rois`` (one record per ROI with the keys of :data:`RESULT_KEYS`, in order; the
``partial_frac_*``/``partial_spin_*`` keys describe the partial vertex map, None without
controls), ``agreement`` (one record per ROI shared by several tables) and ``vertex_maps`` (None
without ``--vertices``; else the files of the raw and partial maps, what the partial map controls
for, and ``mask``: the vertices left out of sign coherence and spin tests, the medial wall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neuromem.analysis.report import Block

RESULT_KEYS = (
    "roi",
    "n",
    "pearson_r",
    "pearson_ci",
    "pearson_p",
    "pearson_q",
    "spearman_r",
    "spearman_ci",
    "spearman_ci_method",
    "spearman_p",
    "spearman_q",
    "partial_r",
    "partial_p",
    "partial_q",
    "partial_ci",
    "within_category",
    "frac_vertices_negative",
    "frac_vertices_positive",
    "spin_p_mean_r",
    "spin_p_coherence",
    "spin_q_mean_r",
    "spin_q_coherence",
    "partial_frac_vertices_negative",
    "partial_frac_vertices_positive",
    "partial_spin_p_mean_r",
    "partial_spin_p_coherence",
    "partial_spin_q_mean_r",
    "partial_spin_q_coherence",
)
"""Keys of each ``rois`` record in ``results.json``, in order (a fixed contract)."""


def predictor_names(tables: list[str], metadata: list[dict]) -> list[str]:
    """One name per table for the agreement columns: its encoder spec, else its folder name
    (made unique)."""
    names = []
    for path, meta in zip(tables, metadata, strict=True):
        base = (meta.get("encoder") or {}).get("spec") or Path(str(path).rstrip("/")).name
        name, k = base, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
    return names


#: How every ``*_q`` of ``results.json`` was computed.
MULTIPLE_COMPARISONS = (
    "Benjamini-Hochberg q-values, computed per statistic (Pearson, Spearman, partial, each "
    "category's within-category r, each spin test) within each hemisphere family of ROIs "
    "(bilateral, lh_, rh_): a bilateral ROI overlaps its hemisphere parts, so the three are "
    "not distinct tests of one family"
)


def results_record(*, n_images: int, memorability: str, category: str | None, seed: int,
                   records: list[dict[str, Any]], agreement: list[dict[str, Any]],
                   agreement_summary: dict[str, int] | None = None,
                   vertex_maps: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``results.json`` content (see the module docstring)."""
    return {
        "n_images": n_images,
        "memorability_column": memorability,
        "category_column": category,
        "seed": seed,
        "multiple_comparisons": MULTIPLE_COMPARISONS,
        "rois": [{key: record.get(key) for key in RESULT_KEYS} for record in records],
        "agreement": agreement,
        "agreement_summary": agreement_summary or {},
        "vertex_maps": vertex_maps,
    }


def report_blocks(
    settings: dict[str, Any], results: dict[str, Any], records: list[dict[str, Any]],
    metadata: list[dict], predictors: list[str], notes: list[str],
    figures: list[tuple[str, str]], versions: dict[str, str],
) -> list[Block]:
    """The blocks of ``report.md`` / ``report.html``.

    ``settings`` holds ``tables``, ``memorability``, ``category``, ``covariates``, ``seed``,
    ``bootstrap``, ``spins`` and ``vertices`` as the command ran; ``records`` are the primary
    table's ROI records (:func:`neuromem.analysis.roi_stats.roi_statistics` plus the vertex
    statistics); ``figures`` are ``(file name, caption)`` pairs.
    """
    category, covariates = settings['category'], settings['covariates']
    encoder = metadata[0].get("encoder") or {}
    blocks = [Block("h1", "Memorability decomposition")]
    if encoder.get("trained") is False:
        blocks.append(
            Block(
                "p",
                "WARNING: the encoder that made the primary table was NOT "
                "trained (random weights): these numbers say nothing about "
                "the brain.",
            )
        )
    blocks.append(
        Block(
            "p",
            (
                f"Primary table: {settings['tables'][0]} (encoder {encoder.get('spec', 'unknown')}, weights "
                f"sha256 {str(encoder.get('weights_sha256', 'unknown'))[:12]}). n = {results['n_images']} "
                f"images; memorability column `{settings['memorability']}`; category control: "
                f"{'`' + category + '`' if category else 'none'}; covariates: {', '.join(covariates) or 'none'}; "
                f"seed {settings['seed']}; Spearman CI: {_spearman_ci_text(settings, records)}; "
                f"spin test: {settings['spins'] if settings['vertices'] else 0} rotations."
            ),
        )
    )
    blocks.append(Block("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items())))
    blocks.extend(Block("p", note) for note in notes)
    vertex_maps = results.get("vertex_maps")
    if vertex_maps:
        mask = vertex_maps["mask"]
        text = (f"Vertex statistics: {mask['n_excluded']} vertices with no {mask['atlas']} label "
                f"(the medial wall; {mask['n_excluded_left']} left, {mask['n_excluded_right']} "
                "right) are left out of sign coherence and spin tests (listed in results.json).")
        if "partial" in vertex_maps:
            part = vertex_maps["partial"]
            controls = ([f"category `{part['category']}` (one-hot)"] if part["category"] else []
                        ) + [f"`{c}`" for c in part["covariates"]]
            text += (f" The partial vertex map ({part['file']}) controls for "
                     f"{' and '.join(controls)}; its sign coherence and spin tests are the "
                     "`partial` columns.")
        blocks.append(Block("p", text))
    blocks.append(Block("h2", "Regions"))
    blocks.append(Block("p", f"q: {MULTIPLE_COMPARISONS}."))
    rows = []
    for rec in sorted(
        records, key=lambda r: -np.inf if r["pearson_r"] is None else -r["pearson_r"]
    ):
        rows.append(
            {
                "ROI": rec["roi"],
                "n": rec["n"],
                "dropped": rec["n_dropped"],
                "r": rec["pearson_r"],
                "r 95% CI": "–"
                if rec["pearson_ci"][0] is None
                else f"[{rec['pearson_ci'][0]:.3f}, {rec['pearson_ci'][1]:.3f}]",
                "p": rec["pearson_p"],
                "q": rec["pearson_q"],
                "ρ": rec["spearman_r"],
                "ρ q": rec["spearman_q"],
                "partial r": rec["partial_r"],
                "partial q": rec["partial_q"],
                "frac r<0": rec["frac_vertices_negative"],
                "frac r>0": rec["frac_vertices_positive"],
                "spin p (mean)": rec["spin_p_mean_r"],
                "spin p (coherence)": rec["spin_p_coherence"],
                "spin q (mean)": rec["spin_q_mean_r"],
                "partial frac r<0": rec.get("partial_frac_vertices_negative"),
                "partial frac r>0": rec.get("partial_frac_vertices_positive"),
                "partial spin p (mean)": rec.get("partial_spin_p_mean_r"),
                "partial spin p (coherence)": rec.get("partial_spin_p_coherence"),
                "note": rec["reason"] or "",
            }
        )
    blocks.append(Block("table", pd.DataFrame(rows)))
    if category:
        within = pd.DataFrame(
            [
                {
                    "ROI": rec["roi"],
                    **{
                        f"{level} {key}": value[key]
                        for level, value in rec["within_category"].items()
                        for key in ("n", "r", "q")
                    },
                }
                for rec in records
            ]
        )
        blocks.append(Block("h2", "Within each category (Pearson r)"))
        blocks.append(Block("table", within))
    if results["agreement"]:
        blocks.append(Block("h2", "Agreement between predictors (Pearson r)"))
        counts = results["agreement_summary"]
        blocks.append(Block("p", (
            "Signs are compared only where every predictor's 95 % interval excludes 0: "
            f"{counts.get('agree', 0)} ROIs agree, {counts.get('disagree', 0)} disagree, "
            f"{counts.get('inconclusive', 0)} have an interval spanning 0, "
            f"{counts.get('all inconclusive', 0)} are inconclusive for every predictor.")))
        blocks.append(
            Block(
                "table",
                pd.DataFrame(
                    [
                        {"ROI": a["roi"], **a["r"], "status": a["status"]}
                        for a in results["agreement"]
                    ]
                ),
            )
        )
        for name, path, meta in zip(predictors, settings['tables'], metadata, strict=True):
            if (meta.get("encoder") or {}).get("trained") is False:
                blocks.append(Block("p", f"Note: {name} ({path}) comes from an untrained encoder."))
    blocks.append(Block("h2", "Figures"))
    blocks.extend(Block("img", name, caption) for name, caption in figures)
    return blocks


def _spearman_ci_text(settings: dict[str, Any], records: list[dict[str, Any]]) -> str:
    methods = sorted({r.get("spearman_ci_method") for r in records} - {None})
    names = {"analytic": "analytic (Fisher z, Bonett-Wright SE)"}
    used = ", ".join(names.get(m, m.replace("_", " ")) for m in methods) or "none"
    return f"{used} (--spearman-ci {settings.get('spearman_ci', 'auto')})"
