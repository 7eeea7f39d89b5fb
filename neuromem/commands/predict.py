"""Predict the ROI responses of image files with a brain encoder (table, JSON or surface maps).

Each readable image is decoded to RGB (CMYK, 16-bit, grayscale and transparent images are
converted, see :mod:`neuromem.data.decode`) and run through the encoder on its own at its own
size. Files that cannot be used (missing, not an image, truncated, too large) get one error
line each on stderr; the others are still processed, and the exit code is then 1.

An encoder that reads videos (TRIBE v2) presents each image by a still-image protocol
(``--protocol``: ``paper``, the default, ``static`` or ``fast``; see the README section "How
TRIBE v2 sees a still image"); encoders that see an image as one image (the CLIP probe) take
no protocol, and asking them for one is an error.

Output: a table with one row per ROI and one column per image, or with ``--json`` one JSON
object per line and image, ``{"image": PATH, "encoder": SPEC, "protocol": NAME or null,
"trained": BOOL, "rois": {"FFA": float, ...}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from neuromem.commands import options
from neuromem.errors import InputError
from neuromem.runtime.device import resolve_device
from neuromem.runtime.storage import check_writable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``neuromem predict``."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--encoder",
        default="tribev2",
        metavar="NAME",
        help="encoder spec: tribev2, tribev2:/folder, clip-probe:/probe.safetensors, "
        "clip-probe:tiny, ... (default: %(default)s)",
    )
    options.add_protocol(parser)
    options.add_rois(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        help="save the vertex map on the cortical surface (several images: OUT-<n>-<name>.png)",
    )
    options.add_device(parser)


def run(args: argparse.Namespace) -> int:
    """Predict, print, and plot; 1 if any image failed, else 0."""
    from neuromem.cortex.reduce import RoiReducer
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder
    from neuromem.encoders.registry import resolve_protocol

    device = resolve_device(args.device)
    protocol = resolve_protocol(args.encoder, args.protocol)  # before any weights load
    if args.plot:
        check_writable(Path(args.plot).parent)
    roi_set = load_roi_set(args.rois)
    reducer = RoiReducer(roi_set)
    encoder = load_encoder(args.encoder, device=device, protocol=protocol)
    if not encoder.trained and args.json:  # the table states it in its header
        print(
            f"note: encoder {encoder.spec!r} is untrained (seeded random weights): "
            "its numbers mean nothing",
            file=sys.stderr,
        )
    results: list[tuple[str, np.ndarray, np.ndarray]] = []
    n_failed = 0
    for name in args.images:
        try:
            pixels_hw3 = read_image(Path(name))
        except InputError as exc:
            print(f"neuromem predict: {name}: {exc}", file=sys.stderr)
            n_failed += 1
            continue
        with torch.no_grad():
            if encoder.native_inputs:  # the uint8 image into the processor, as `score` does
                responses_bv = encoder.forward_stills([pixels_hw3])
            else:
                images_b3hw = torch.tensor(pixels_hw3).permute(2, 0, 1)[None].float().div(255)
                responses_bv = encoder(images_b3hw.to(device))
            rois_br = reducer(responses_bv)
        results.append((name, responses_bv[0].cpu().numpy(), rois_br[0].cpu().numpy()))
    if args.json:
        for name, _, rois_r in results:
            rois = {roi: float(value) for roi, value in zip(reducer.names, rois_r, strict=True)}
            record = {"image": name, "encoder": encoder.spec, "protocol": encoder.protocol,
                      "trained": encoder.trained, "rois": rois}
            print(json.dumps(record))
    elif results:
        print(format_table(reducer.names, results, encoder.spec, encoder.trained, encoder.protocol))
    if args.plot and results:
        for path in plot_maps(Path(args.plot), results, roi_set, encoder.spec):
            print(f"wrote {path}", file=sys.stderr)
    return 1 if n_failed else 0


def read_image(path: Path) -> np.ndarray:
    """Decoded RGB pixels ``(H, W, 3)`` uint8 of an image file, or :class:`InputError`."""
    from neuromem.data.decode import decode_image

    if not path.is_file():
        raise InputError("no such file" if not path.exists() else "not a regular file")
    return decode_image(path.read_bytes())


def format_table(
    roi_names: list[str],
    results: list[tuple[str, np.ndarray, np.ndarray]],
    spec: str,
    trained: bool,
    protocol: str | None = None,
) -> str:
    """One row per ROI, one column per image (headed by its file name)."""
    headers = [Path(name).name for name, _, _ in results]
    widths = [max(10, len(h)) for h in headers]
    roi_width = max(3, *(len(r) for r in roi_names))
    shown = f", protocol {protocol}" if protocol else ""
    note = "" if trained else "  (UNTRAINED: seeded random weights, numbers mean nothing)"
    lines = [f"encoder: {spec}{shown}{note}"]
    lines.append("  ".join([f"{'ROI':<{roi_width}}", *(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True))]))
    for r, roi in enumerate(roi_names):
        values = (f"{rois_r[r]:>{w}.4f}" for (_, _, rois_r), w in zip(results, widths, strict=True))
        lines.append("  ".join([f"{roi:<{roi_width}}", *values]))
    return "\n".join(lines)


def plot_maps(out: Path, results, roi_set, spec: str) -> list[Path]:
    """Save each image's vertex map; one image: ``out``; several: ``out-<n>-<name>.png``."""
    from neuromem.cortex.plotting import plot_surface_map

    paths = []
    for index, (name, responses_v, _) in enumerate(results, start=1):
        path = out if len(results) == 1 else out.with_name(f"{out.stem}-{index}-{Path(name).stem}.png")
        title = f"{Path(name).name} — {spec}"
        paths.append(plot_surface_map(responses_v, path, roi_set=roi_set, title=title, symmetric=False))
    return paths
