"""Figures and the Markdown/HTML report of a memorability decomposition.

The report is a list of blocks (heading, paragraph, table, figure) rendered twice, as Markdown
and as a self-contained HTML page that links the same PNG files.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SCATTER_MAX_POINTS = 2000
"""Points drawn per scatter plot (a seeded subsample of larger tables)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_roi_bars(records: Sequence[Mapping], out_png: str | Path, *, title: str = "") -> Path:
    """Bars of each ROI's Pearson r with its 95 % CI, sorted from most positive to most negative.

    Parameters
    ----------
    records : sequence of mapping
        ``rois`` records of ``results.json`` (``roi``, ``pearson_r``, ``pearson_ci``, and
        ``partial_r`` drawn as a dot when present).
    out_png : str or Path
        Output file.
    """
    plt = _pyplot()
    rows = [r for r in records if r["pearson_r"] is not None]
    rows.sort(key=lambda r: -r["pearson_r"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(rows) + 1.5), 4.0))
    x = np.arange(len(rows))
    r = np.array([row["pearson_r"] for row in rows], dtype=float)
    ci = np.array(
        [[np.nan if v is None else v for v in row["pearson_ci"]] for row in rows], dtype=float
    ).reshape(-1, 2)
    ax.bar(x, r, color=np.where(r >= 0, "#c0392b", "#2e6fba"), label="Pearson r")
    ax.errorbar(x, r, yerr=np.abs(ci.T - r), fmt="none", ecolor="black", capsize=3, lw=1)
    partial = np.array(
        [np.nan if row.get("partial_r") is None else row["partial_r"] for row in rows], dtype=float
    )
    if np.isfinite(partial).any():
        ax.plot(x, partial, "D", color="#f1c40f", mec="black", ms=5, label="partial r")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [row["roi"] for row in rows], rotation=60, ha="right")
    ax.set_ylabel("correlation with memorability")
    ax.set_title(title, fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
    return out_png


def plot_roi_scatter(
    frame: pd.DataFrame,
    roi_columns: Sequence[str],
    memorability: str,
    out_png: str | Path,
    *,
    category: str | None = None,
    seed: int = 0,
) -> Path:
    """One scatter plot per ROI of its score against memorability (coloured by category).

    At most :data:`SCATTER_MAX_POINTS` rows (a seeded random subset) are drawn.
    """
    plt = _pyplot()
    if len(frame) > SCATTER_MAX_POINTS:
        frame = frame.sample(SCATTER_MAX_POINTS, random_state=seed)
    n = len(roi_columns)
    n_cols = min(4, max(1, n))
    n_rows = int(np.ceil(n / n_cols))
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.2 * n_cols, 2.8 * n_rows), squeeze=False, sharey=True
    )
    groups = (
        [("all", frame)]
        if category is None
        else [(str(k), g) for k, g in frame.groupby(category, dropna=False)]
    )
    for ax, column in zip(axes.flat, roi_columns, strict=False):
        for label, group in groups:
            ax.scatter(group[column], group[memorability], s=4, alpha=0.5, label=label)
        ax.set_title(column.removeprefix("roi_"), fontsize=9)
        ax.set_xlabel("ROI response", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(memorability, fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if category is not None:
        axes.flat[0].legend(fontsize=6, markerscale=2, frameon=False)
    # fixed margins: tight_layout over dozens of panels costs seconds and changes nothing here
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.04, top=0.98, wspace=0.08, hspace=0.45)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_coherence_histograms(
    r_v: np.ndarray, roi_indices: Mapping[str, np.ndarray], out_png: str | Path
) -> Path:
    """Histogram of vertex r within each ROI, with the fractions below and above zero.

    One panel per ROI, four per row, on one x range. The margins are fixed in inches rather
    than found by ``tight_layout``, and each histogram is one filled outline rather than 30
    bars: with the 39 default ROIs this cuts the figure's cost from 3.5 to 1.5 s on 2 cores
    (figures are a third of a ``decompose --vertices`` run at LaMem size).
    """
    plt = _pyplot()
    names = list(roi_indices)
    n_cols = min(4, max(1, len(names)))
    n_rows = int(np.ceil(len(names) / n_cols))
    width_in, height_in = 3.0 * n_cols, 2.4 * n_rows
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width_in, height_in), squeeze=False)
    fig.subplots_adjust(left=0.55 / width_in, right=1 - 0.15 / width_in,
                        bottom=0.5 / height_in, top=1 - 0.3 / height_in, wspace=0.35, hspace=0.6)
    finite_all = r_v[np.isfinite(r_v)]
    lim = float(np.max(np.abs(finite_all))) if finite_all.size else 1.0
    bins = np.linspace(-lim, lim, 31)
    for ax, roi in zip(axes.flat, names, strict=False):
        values = r_v[np.asarray(roi_indices[roi])]
        values = values[np.isfinite(values)]
        ax.stairs(np.histogram(values, bins=bins)[0], bins, fill=True, color="#7f8c8d")
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlim(-lim, lim)
        if values.size:
            ax.set_title(
                f"{roi}: {np.mean(values < 0):.0%} < 0, {np.mean(values > 0):.0%} > 0", fontsize=8
            )
        ax.set_xlabel("vertex r", fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


@dataclass(frozen=True)
class Block:
    """One piece of the report: ``kind`` is ``"h1"``, ``"h2"``, ``"p"``, ``"table"`` or ``"img"``.

    ``content`` is the text, a :class:`pandas.DataFrame` for tables, or the PNG's file name
    (relative to the report) for images; ``caption`` labels images.
    """

    kind: str
    content: object
    caption: str = ""


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return str(value)


def render_markdown(blocks: Sequence[Block]) -> str:
    """The report as Markdown."""
    out = []
    for block in blocks:
        if block.kind == "h1":
            out.append(f"# {block.content}")
        elif block.kind == "h2":
            out.append(f"## {block.content}")
        elif block.kind == "p":
            out.append(str(block.content))
        elif block.kind == "table":
            table: pd.DataFrame = block.content
            out.append("| " + " | ".join(map(str, table.columns)) + " |")
            out.append("|" + "---|" * len(table.columns))
            out.extend(
                "| " + " | ".join(_cell(v) for v in row) + " |"
                for row in table.itertuples(index=False)
            )
        elif block.kind == "img":
            out.append(f"![{block.caption}]({block.content})")
        out.append("")
    return "\n".join(out)


def render_html(blocks: Sequence[Block], *, title: str) -> str:
    """The report as a standalone HTML page."""
    body = []
    for block in blocks:
        if block.kind in ("h1", "h2"):
            body.append(f"<{block.kind}>{html.escape(str(block.content))}</{block.kind}>")
        elif block.kind == "p":
            body.append(f"<p>{html.escape(str(block.content))}</p>")
        elif block.kind == "table":
            table: pd.DataFrame = block.content
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
                for row in table.itertuples(index=False)
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif block.kind == "img":
            src, cap = html.escape(str(block.content)), html.escape(block.caption)
            body.append(
                f'<figure><img src="{src}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
        "table{border-collapse:collapse;font-size:0.85em;}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right;}"
        "img{max-width:100%;}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(out_dir: str | Path, blocks: Sequence[Block], *, title: str) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    md = out_dir / "report.md"
    md.write_text(render_markdown(blocks), encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(render_html(blocks, title=title), encoding="utf-8")
    return md, page
