"""Cross-evaluate brain guidance: images maximising each ROI under encoder A, measured by encoder B.

For every target ROI ``t`` the prompt is sampled with the same seeds under guidance that
maximises ``t`` as predicted by the guiding encoder A; encoder B (e.g. TRIBE v2, when A is its
CLIP proxy) measures every target ROI ``m`` on the images. ``raw[t, m]`` is B's mean response
of ROI ``m`` over the images made for target ``t``.

Normalisation (documented choice): ROIs differ in baseline and spread, so each measured ROI
(column) is z-scored across targets, ``z[t, m] = (raw[t, m] − mean_t raw[:, m]) / std_t raw[:, m]``
(population std; 0 where a column is constant). ``z[t, m] > 0`` means target ``t``'s images
drive ROI ``m`` more than the average target's do. The diagonal's rank in its row
(``1`` = target ROI ``t`` is the ROI that ``t``'s images raised most, in z units; chance
``(T + 1) / 2``) tests specificity; its rank in its column (``1`` = no other target's images
drive ROI ``t`` more) tests the seed's claim that PPA-targeted images score highest on PPA.

Output folder: ``cross_eval.json`` (matrices under both encoders, unguided baseline, ranks,
settings, versions), ``cross_eval.png`` (heatmap of ``z`` under B), ``images/<target>/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from neuromem.errors import InputError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.guide import add_guidance_arguments, add_sampling_arguments

    parser.add_argument("--model", required=True,
                        help="Stable Diffusion 1.x/2.x: local folder, cached hub id, or 'tiny'")
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--guide-encoder", required=True, help="encoder A (guides)")
    parser.add_argument("--eval-encoder", required=True, help="encoder B (measures)")
    parser.add_argument("--targets", default=None,
                        help="comma-separated ROI columns (default: the set's bilateral ROIs)")
    add_guidance_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--n", type=int, default=4, help="images per target (default 4)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")


def zscore_columns(raw_tm: np.ndarray) -> np.ndarray:
    """Z-score each column across rows (population std); constant columns give 0."""
    raw_tm = np.asarray(raw_tm, dtype=np.float64)
    std_m = raw_tm.std(axis=0)
    centred_tm = raw_tm - raw_tm.mean(axis=0)
    return np.divide(centred_tm, std_m, out=np.zeros_like(centred_tm), where=std_m > 0)


def diagonal_ranks(matrix_tt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each diagonal entry within its row and within its column (1 = largest).

    Ties count in the diagonal's favour (rank = 1 + number of strictly larger entries).

    Returns
    -------
    row_rank_t, column_rank_t : numpy.ndarray of int
    """
    matrix_tt = np.asarray(matrix_tt)
    if matrix_tt.ndim != 2 or matrix_tt.shape[0] != matrix_tt.shape[1]:
        raise InputError(f"expected a square target × measured matrix, got {matrix_tt.shape}")
    diag_t = np.diag(matrix_tt)
    row_rank_t = 1 + (matrix_tt > diag_t[:, None]).sum(axis=1)
    column_rank_t = 1 + (matrix_tt > diag_t[None, :]).sum(axis=0)
    return row_rank_t, column_rank_t


def summarise(raw_tm: np.ndarray, baseline_m: np.ndarray, targets: list[str]) -> dict:
    """Matrices and ranks of one encoder's measurements, JSON-ready."""
    z_tm = zscore_columns(raw_tm)
    row_rank_t, column_rank_t = diagonal_ranks(z_tm)
    n_targets = len(targets)
    return {
        "raw": raw_tm.tolist(),
        "gain_over_unguided": (raw_tm - baseline_m[None, :]).tolist(),
        "z": z_tm.tolist(),
        "unguided": baseline_m.tolist(),
        "diagonal_rank_in_row": dict(zip(targets, map(int, row_rank_t), strict=True)),
        "diagonal_rank_in_column": dict(zip(targets, map(int, column_rank_t), strict=True)),
        "mean_diagonal_rank_in_row": float(row_rank_t.mean()),
        "chance_rank": (n_targets + 1) / 2,
    }


def plot_heatmap(z_tm: np.ndarray, row_rank_t: np.ndarray, targets: list[str], title: str,
                 path: Path) -> None:
    """Heatmap of the z-scored matrix, diagonal cells outlined and labelled with their row rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.2 + 0.55 * len(targets)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    limit = max(1e-9, float(np.abs(z_tm).max()))
    image = ax.imshow(z_tm, cmap="RdBu_r", vmin=-limit, vmax=limit)
    labels = [t.removeprefix("roi_") for t in targets]
    ax.set_xticks(range(len(targets)), labels, rotation=90)
    ax.set_yticks(range(len(targets)), labels)
    ax.set_xlabel("measured ROI")
    ax.set_ylabel("target ROI (guided)")
    for i, rank in enumerate(row_rank_t):
        ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, lw=2, ec="black"))
        colour = "white" if abs(z_tm[i, i]) > 0.6 * limit else "black"
        ax.text(i, i, f"#{rank}", ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(image, ax=ax, label="z across targets")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import HEMI_PREFIXES, load_roi_set
    from neuromem.encoders import load_encoder
    from neuromem.generation.guidance import BrainGuidance, generate
    from neuromem.generation.objective import RoiObjective, score_rois
    from neuromem.generation.pipeline import load_pipeline
    from pipelines.guide import (
        DTYPES,
        guidance_config,
        quantise,
        resolve_device,
        save_png,
        versions,
        write_json,
    )

    if args.guide_encoder == args.eval_encoder:
        log.warning("guide and eval encoder are the same (%s): this is not a cross-evaluation",
                    args.guide_encoder)
    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    roi_set = load_roi_set(args.rois)
    reducer = RoiReducer(roi_set)
    if args.targets:
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    else:
        targets = [f"roi_{name}" for name in roi_set.names
                   if not name.startswith(tuple(HEMI_PREFIXES.values()))]
    if len(targets) < 2:
        raise InputError(f"cross-evaluation needs at least 2 target ROIs, got {targets}")
    objectives = {t: RoiObjective(reducer, {t: 1.0}) for t in targets}  # validates the names
    columns_t = [reducer.column_names.index(t) for t in targets]

    device = resolve_device(args.device)
    config = guidance_config(args)
    pipe = load_pipeline(args.model, device=device, dtype=DTYPES[args.dtype],
                         scheduler=args.scheduler)
    encoders = {"guide": load_encoder(args.guide_encoder, device=device),
                "eval": load_encoder(args.eval_encoder, device=device)}
    seeds = list(range(args.seed, args.seed + args.n))
    prompts = [args.prompt] * args.n
    common = dict(steps=args.steps, cfg_scale=args.cfg_scale,
                  negative_prompt=args.negative_prompt, height=args.size, width=args.size)

    def measure(images_b3hw) -> dict[str, np.ndarray]:
        return {role: score_rois(enc, reducer, images_b3hw)[:, columns_t].mean(axis=0)
                for role, enc in encoders.items()}

    baseline = measure(quantise(generate(pipe, prompts, seeds, **common).images_b3hw))
    raw = {role: np.zeros((len(targets), len(targets))) for role in encoders}
    for i, target in enumerate(targets):
        guidance = BrainGuidance(pipe, encoders["guide"], objectives[target], config)
        images = quantise(generate(pipe, prompts, seeds, guidance=guidance, **common).images_b3hw)
        for seed, image in zip(seeds, images, strict=True):
            save_png(image, args.out / "images" / target / f"seed_{seed}.png")
        for role, response_t in measure(images).items():
            raw[role][i] = response_t
        log.info("target %s done (%d/%d)", target, i + 1, len(targets))

    results = {role: summarise(raw[role], baseline[role], targets) for role in encoders}
    write_json({
        "command": "cross-eval",
        "command_line": sys.argv,
        "settings": {
            "model": args.model, "prompt": args.prompt, "targets": targets, "rois": args.rois,
            "guide_encoder": encoders["guide"].metadata(),
            "eval_encoder": encoders["eval"].metadata(), "guidance": config.to_dict(),
            "seeds": seeds, "steps": args.steps, "cfg_scale": args.cfg_scale,
            "scheduler": args.scheduler, "size": args.size, "device": device,
            "dtype": args.dtype,
        },
        "versions": versions(),
        "normalisation": "each measured ROI (column) z-scored across targets, population std",
        "rows": "target ROI", "columns": "measured ROI", "targets": targets,
        "eval_encoder": results["eval"],
        "guide_encoder": results["guide"],
    }, args.out / "cross_eval.json")
    row_rank_t, _ = diagonal_ranks(np.asarray(results["eval"]["z"]))
    plot_heatmap(np.asarray(results["eval"]["z"]), row_rank_t, targets,
                 f"guided by {args.guide_encoder}, measured by {args.eval_encoder}",
                 args.out / "cross_eval.png")
    log.info("mean diagonal rank %.2f (chance %.2f); wrote %s",
             results["eval"]["mean_diagonal_rank_in_row"], results["eval"]["chance_rank"],
             args.out)
    return 0


if __name__ == "__main__":
    from neuromem.cli import run_module

    raise SystemExit(run_module(__name__))
