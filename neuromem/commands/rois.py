"""List the regions of interest: vertices per hemisphere and the atlas areas behind each."""

from __future__ import annotations

import argparse
import json

from neuromem.cortex.rois import load_roi_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem rois``."""
    parser.add_argument(
        "--rois",
        default="default",
        metavar="SET",
        help="'default' (HCP-MMP1 groups) or the path to a YAML ROI set (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Print the ROIs of a set, one per line (or as JSON)."""
    roi_set = load_roi_set(args.rois)
    rows = []
    for roi in roi_set.names:
        n_left, n_right = roi_set.vertex_counts(roi)
        rows.append(
            {
                "roi": roi,
                "column": f"roi_{roi}",
                "hemisphere": roi_set.hemisphere(roi),
                "n_left": n_left,
                "n_right": n_right,
                "areas": list(roi_set.definitions[roi]),
            }
        )
    if args.json:
        header = {k: v for k, v in roi_set.to_dict().items() if k != "rois"}
        print(json.dumps({**header, "rois": rows}, indent=2))
        return 0
    print(f"ROI set {roi_set.name!r}: {len(roi_set)} ROIs on atlas {roi_set.atlas!r}")
    print(f"atlas: {roi_set.atlas_source}")
    width = max(len(row["roi"]) for row in rows)
    print(f"{'ROI':<{width}}  {'left':>5}  {'right':>5}  areas")
    for row in rows:
        areas = ", ".join(row["areas"])
        print(f"{row['roi']:<{width}}  {row['n_left']:>5}  {row['n_right']:>5}  {areas}")
    return 0
