"""The layer-scan figure: memorability read-out against brain similarity, every layer."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd


def plot_scan(table: pd.DataFrame, roi: str, *, cka_kind: str = "debiased") -> bytes:
    """PNG bytes of memorability ρ against similarity to ``roi`` for every layer of every network.

    Left: neural predictivity; right: CKA. One colour per network (legend: Pearson r across its
    layers, layer count); marker size grows with depth.

    Parameters
    ----------
    table : pandas.DataFrame
        ``layers.parquet`` rows: ``model`` (the network spec), ``depth_fraction``,
        ``memorability_rho_mean`` and ``predictivity_<roi>`` and/or ``cka_<roi>``.
    roi : str
        ROI on the x axis.
    cka_kind : str
        Which CKA the table holds (axis label).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measures = [c for c in (f"predictivity_{roi}", f"cka_{roi}") if c in table]
    fig = Figure(figsize=(5.5 * max(1, len(measures)), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(measures)), squeeze=False)[0]
    for ax, measure in zip(axes, measures, strict=False):
        for network, part in table.groupby("model", sort=False):
            ok = part[[measure, "memorability_rho_mean"]].dropna()
            r = (np.corrcoef(ok[measure], ok["memorability_rho_mean"])[0, 1]
                 if len(ok) > 2 else np.nan)
            ax.scatter(part[measure], part["memorability_rho_mean"],
                       s=8 + 40 * part["depth_fraction"], alpha=0.7,
                       label=f"{network} (r = {r:.2f}, {len(part)} layers)")
        kind = ("neural predictivity (Brain-Score r)" if measure.startswith("pred")
                else f"linear CKA ({cka_kind})")
        ax.set_xlabel(f"{roi}: {kind}")
        ax.set_ylabel("memorability, Spearman ρ (PLS, mean over splits)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Layers: memorability prediction vs brain similarity (marker size: depth)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=130)
    return buffer.getvalue()
