"""Small synthetic datasets written in each real dataset's exact on-disk layout.

Used by the tests, the demo and the benchmarks, so every reader runs on real files (JPEG, PNG,
HDF5, CSV, JSON, MP4, MATLAB ``.mat``) without downloading anything.

Images come from :func:`sample_image`: *scene-like* (sky gradient, uneven horizon, textured
ground, a few buildings: wide layouts, many edges) or *object-like* (one centred saturated shape
on a plain background). Writers that know memorability draw it from :func:`sample_memorability`:
objects score higher than scenes on average, plus Gaussian noise, so a demo analysis has a real
(planted) effect to find. Every writer returns a :class:`pandas.DataFrame` with the ground truth it
wrote (ids, categories, scores), for tests to compare with what the readers list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from neuromem.data.schema import CATEGORY_OBJECT, CATEGORY_SCENE
from neuromem.errors import InputError

#: Mean and standard deviation of the planted memorability per category.
MEMORABILITY_MEAN = {CATEGORY_OBJECT: 0.82, CATEGORY_SCENE: 0.68}
MEMORABILITY_SD = 0.05

NSD_SIDE = 425
NSD_SUBJECTS = 8
BOLD5000_ROIS = ("EarlyVis", "LOC", "OPA", "PPA", "RSC")
BOLD5000_TRS = ("1", "2", "3", "4", "5", "34")


# ----------------------------------------------------------------------------------------------
# Images and scores


def sample_image(
    kind: str, rng: np.random.Generator, size: int | tuple[int, int] = 256
) -> np.ndarray:
    """Draw one synthetic image.

    Parameters
    ----------
    kind : {"scene", "object"}
        ``"scene"``: sky, horizon and textured ground spanning the frame; ``"object"``: one
        centred shape (disc, square, triangle or ellipse) on a plain background.
    rng : numpy.random.Generator
        Source of randomness (the image is a pure function of its state).
    size : int or (int, int)
        Side, or ``(height, width)``, in pixels.

    Returns
    -------
    numpy.ndarray
        uint8, shape ``(H, W, 3)``.
    """
    height, width = (size, size) if isinstance(size, int) else size
    if kind == CATEGORY_SCENE:
        image_3hw = _scene(rng, height, width)
    elif kind == CATEGORY_OBJECT:
        image_3hw = _object(rng, height, width)
    else:
        raise InputError(f"kind must be 'scene' or 'object', got {kind!r}")
    np.multiply(image_3hw, 255.0, out=image_3hw)
    np.add(image_3hw, 0.5, out=image_3hw)
    np.clip(image_3hw, 0, 255, out=image_3hw)
    return np.ascontiguousarray(image_3hw.astype(np.uint8).transpose(1, 2, 0))


def sample_memorability(categories: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Planted memorability scores in [0, 1]: category mean (objects higher) plus noise.

    Returns float64, shape ``(len(categories),)``.
    """
    means = np.array([MEMORABILITY_MEAN[c] for c in categories], dtype=np.float64)
    return np.clip(means + rng.normal(0.0, MEMORABILITY_SD, size=len(means)), 0.0, 1.0)


def sample_categories(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` categories, half objects and half scenes (shuffled)."""
    kinds = np.array([CATEGORY_OBJECT, CATEGORY_SCENE] * (n // 2 + 1))[:n]
    return rng.permutation(kinds)


def _noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth-ish noise in [0, 1]: a coarse grid of values upsampled by pixel repetition."""
    coarse = rng.random((height // cell + 1, width // cell + 1), dtype=np.float32)
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:height, :width]


def _scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Channel-first ``(3, H, W)`` float32 scene (channel-first keeps numpy's loops long)."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    sky_top = np.array([0.2, 0.4, 0.8], np.float32) + rng.uniform(-0.15, 0.15, 3).astype(np.float32)
    sky_low = np.array([0.75, 0.85, 0.95], np.float32)
    ground_rgb = rng.choice(
        np.array([[0.25, 0.5, 0.2], [0.5, 0.4, 0.25], [0.45, 0.45, 0.45]], np.float32)
    )
    texture = 0.55 * _noise(rng, height, width, 8) + 0.45 * rng.random((height, width), np.float32)
    shade_hw = (0.6 + 0.8 * texture) * (0.7 + 0.5 * rows)
    horizon = rng.uniform(0.35, 0.65) + 0.05 * np.sin(
        2 * np.pi * (rng.uniform(1, 3) * cols + rng.uniform())
    )
    is_ground = rows > horizon
    image = np.empty((3, height, width), np.float32)
    for c in range(3):
        sky_h1 = sky_top[c] + (sky_low[c] - sky_top[c]) * rows
        image[c] = np.where(is_ground, ground_rgb[c] * shade_hw, sky_h1)
    for _ in range(rng.integers(2, 6)):  # buildings standing on the horizon
        left = int(rng.uniform(0, 0.9) * width)
        right = min(width, left + int(rng.uniform(0.05, 0.2) * width))
        base = float(np.clip(horizon[0, left : max(right, left + 1)].max(), 0.05, 0.95))
        top = int((base - rng.uniform(0.1, 0.3)) * height)
        image[:, max(top, 0) : int(base * height), left:right] = rng.uniform(0.1, 0.5, 3)[
            :, None, None
        ]
    return image


def _object(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Channel-first ``(3, H, W)`` float32 image of one centred shape on a plain background."""
    background = rng.uniform(0.7, 0.95) + rng.uniform(-0.05, 0.05, 3)
    grain_hw = 0.03 * (rng.random((height, width), np.float32) - 0.5)
    y, x = np.ogrid[:height, :width]
    cy = height * (0.5 + rng.uniform(-0.05, 0.05))
    cx = width * (0.5 + rng.uniform(-0.05, 0.05))
    radius = min(height, width) * rng.uniform(0.2, 0.35)
    dy = ((y - cy) / radius).astype(np.float32)
    dx = ((x - cx) / radius).astype(np.float32)
    shape = rng.integers(4)
    if shape == 0:
        inside = dy**2 + dx**2 <= 1.0
    elif shape == 1:
        inside = (np.abs(dy) <= 0.85) & (np.abs(dx) <= 0.85)
    elif shape == 2:
        inside = (dy <= 0.8) & (dy >= -1.0 + 2.0 * np.abs(dx))
    else:
        inside = (dy / 0.6) ** 2 + dx**2 <= 1.0
    colour = np.zeros(3, np.float32)
    colour[rng.integers(3)] = rng.uniform(0.7, 1.0)
    colour[rng.integers(3)] += rng.uniform(0.0, 0.4)
    colour = np.clip(colour, 0, 1)
    shading_hw = 1.0 - 0.25 * (dy + dx)
    image = np.empty((3, height, width), np.float32)
    for c in range(3):
        image[c] = np.where(inside, colour[c] * shading_hw, background[c] + grain_hw)
    return image


def _write_jpegs(jobs: list[tuple[str, str, int, int, int]]) -> None:
    """Write (path, kind, seed, index, side) JPEGs; the image depends only on (seed, index)."""
    for path, kind, seed, index, side in jobs:
        pixels = sample_image(kind, np.random.default_rng([seed, index]), side)
        Image.fromarray(pixels).save(path, quality=90)


def _write_images(
    paths: Sequence[Path], kinds: Sequence[str], seed: int, side: int, processes: int
) -> None:
    jobs = [
        (str(p), str(k), seed, i, side) for i, (p, k) in enumerate(zip(paths, kinds, strict=True))
    ]
    if processes <= 1 or len(jobs) < 64:
        _write_jpegs(jobs)
        return
    chunks = [jobs[i :: processes * 4] for i in range(processes * 4)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_jpegs, chunks))


# ----------------------------------------------------------------------------------------------
# LaMem


def write_lamem(
    root: str | Path,
    n_images: int = 100,
    seed: int = 0,
    *,
    n_splits: int = 5,
    image_size: int = 256,
    fractions: tuple[float, float, float] = (0.77, 0.06, 0.17),
    processes: int = 1,
) -> pd.DataFrame:
    """Write a LaMem-layout dataset: ``images/NNNNNNNN.jpg`` and ``splits/{train,val,test}_{k}.txt``.

    Each of the ``n_splits`` splits partitions all images into train/val/test with the given
    ``fractions``; split files hold ``name score`` lines like the real ones.

    Parameters
    ----------
    root : path
        Directory to create (parents too).
    n_images : int
        Number of JPEGs (``image_size`` × ``image_size``, quality 90).
    seed : int
        Seed of everything written.
    n_splits, fractions :
        Number of splits (real LaMem: 5) and train/val/test fractions.
    processes : int
        Worker processes for writing JPEGs (1 writes in this process).

    Returns
    -------
    pandas.DataFrame
        One row per image: ``image_id`` (file name), ``category``, ``memorability``, and one
        column ``split_{k}`` per split (``train``/``val``/``test``).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "splits").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:08d}.jpg" for i in range(n_images)]
    kinds = sample_categories(n_images, rng)
    scores = sample_memorability(kinds, rng)
    truth = pd.DataFrame({"image_id": names, "category": kinds, "memorability": scores})
    n_train = int(round(fractions[0] * n_images))
    n_val = int(round(fractions[1] * n_images))
    for k in range(1, n_splits + 1):
        order = rng.permutation(n_images)
        parts = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        membership = np.empty(n_images, dtype=object)
        for part, indices in parts.items():
            membership[indices] = part
            lines = "".join(f"{names[i]} {scores[i]:.10f}\n" for i in sorted(indices))
            (root / "splits" / f"{part}_{k}.txt").write_text(lines)
        truth[f"split_{k}"] = membership
    _write_images([root / "images" / n for n in names], kinds, seed, image_size, processes)
    return truth


# ----------------------------------------------------------------------------------------------
# Image folder


def write_image_folder(
    root: str | Path, n_images: int = 20, seed: int = 0, csv: bool = True, image_size: int = 96
) -> pd.DataFrame:
    """Write images in nested folders (``object/``, ``scene/sub/``) and optionally ``scores.csv``.

    File types cycle through ``.jpg``, ``.png``, ``.JPEG`` and ``.webp``. The CSV has columns
    ``image_id`` (path relative to ``root``, ``/``-separated), ``memorability``, ``category``.

    Returns
    -------
    pandas.DataFrame
        ``image_id``, ``category``, ``memorability`` of the written images.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    kinds = sample_categories(n_images, rng)
    scores = sample_memorability(kinds, rng)
    extensions = (".jpg", ".png", ".JPEG", ".webp")
    ids = []
    for i, kind in enumerate(kinds):
        folder = "object" if kind == CATEGORY_OBJECT else "scene/sub"
        image_id = f"{folder}/img_{i:04d}{extensions[i % len(extensions)]}"
        path = root / image_id
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = sample_image(kind, np.random.default_rng([seed, i]), image_size)
        Image.fromarray(pixels).save(path, **({"quality": 90} if i % 4 in (0, 2) else {}))
        ids.append(image_id)
    truth = pd.DataFrame({"image_id": ids, "category": kinds, "memorability": scores})
    if csv:
        truth.to_csv(root / "scores.csv", index=False)
    return truth


# ----------------------------------------------------------------------------------------------
# NSD


def write_nsd(root: str | Path, n_images: int = 20, seed: int = 0) -> pd.DataFrame:
    """Write an NSD-layout dataset under ``root``.

    Files (paths as in the NSD release):

    - ``nsddata/experiments/nsd/nsd_stim_info_merged.csv``: first an unnamed index column,
      then ``cocoId, cocoSplit, cropBox, loss, nsdId, flagged, BOLD5000, shared1000,
      subject1..subject8, subject1_rep0..subject8_rep2``; ``nsdId`` is 0-based.
    - ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5``: dataset ``imgBrick``, uint8,
      ``(n_images, 425, 425, 3)``, row ``nsdId``.

    Returns
    -------
    pandas.DataFrame
        The CSV's rows plus ``category`` (the kind of synthetic image drawn).
    """
    import h5py

    root = Path(root)
    csv_dir = root / "nsddata" / "experiments" / "nsd"
    brick_dir = root / "nsddata_stimuli" / "stimuli" / "nsd"
    csv_dir.mkdir(parents=True, exist_ok=True)
    brick_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = sample_categories(n_images, rng)
    with h5py.File(brick_dir / "nsd_stimuli.hdf5", "w") as handle:
        brick = handle.create_dataset(
            "imgBrick",
            shape=(n_images, NSD_SIDE, NSD_SIDE, 3),
            dtype=np.uint8,
            chunks=(1, NSD_SIDE, NSD_SIDE, 3),
        )
        for i, kind in enumerate(kinds):
            brick[i] = sample_image(kind, np.random.default_rng([seed, i]), NSD_SIDE)
    shared = np.zeros(n_images, dtype=bool)
    shared[rng.choice(n_images, size=max(1, n_images // 5), replace=False)] = True
    table = {
        "cocoId": rng.choice(581_000, size=n_images, replace=False) + 1,
        "cocoSplit": rng.choice(["train2017", "val2017"], size=n_images, p=[0.9, 0.1]),
        "cropBox": ["(0, 0, 0.1671875, 0.1671875)"] * n_images,
        "loss": np.round(rng.uniform(0, 0.2, n_images), 4),
        "nsdId": np.arange(n_images),
        "flagged": np.zeros(n_images, dtype=bool),
        "BOLD5000": rng.random(n_images) < 0.1,
        "shared1000": shared,
    }
    seen_bs = shared[:, None] | (rng.random((n_images, NSD_SUBJECTS)) < 0.4)
    for s in range(NSD_SUBJECTS):
        table[f"subject{s + 1}"] = seen_bs[:, s].astype(np.int64)
    trial = 0
    for s in range(NSD_SUBJECTS):
        for rep in range(3):
            trials = np.zeros(n_images, dtype=np.int64)
            seen = seen_bs[:, s]
            trials[seen] = trial + 1 + np.arange(int(seen.sum()))
            trial += int(seen.sum())
            table[f"subject{s + 1}_rep{rep}"] = trials
    frame = pd.DataFrame(table)
    frame.to_csv(csv_dir / "nsd_stim_info_merged.csv")  # the release keeps pandas' index column
    return frame.assign(category=kinds)


# ----------------------------------------------------------------------------------------------
# Memento10K


def write_memento(
    root: str | Path,
    n_videos: int = 6,
    seed: int = 0,
    *,
    n_frames: int = 8,
    side: int = 64,
    fps: int = 8,
) -> pd.DataFrame:
    """Write a Memento10K-layout dataset: ``videos/*.mp4`` and ``memento_{train,val,test}_data.json``.

    Each JSON file is a list of records ``{"filename", "mem_score", "alpha"}`` (``alpha``: the
    memory decay rate, negative). Videos are H.264 MP4 (``n_frames`` frames at ``fps``) of a
    scene or object whose colours change frame by frame; frame ``t`` is
    ``sample_image(kind, default_rng([seed, index, t]), side)``.

    Returns
    -------
    pandas.DataFrame
        ``filename``, ``split``, ``category``, ``mem_score``, ``alpha``.
    """
    import av

    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = sample_categories(n_videos, rng)
    scores = sample_memorability(kinds, rng)
    alphas = -rng.uniform(0.0, 0.02, n_videos)
    splits = np.array(["train", "val", "test"] * (n_videos // 3 + 1))[:n_videos]
    names = [f"{7000000 + i * 997}.mp4" for i in range(n_videos)]
    for i, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        with av.open(str(root / "videos" / name), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width = stream.height = side
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "ultrafast"}
            for t in range(n_frames):
                pixels = sample_image(kind, np.random.default_rng([seed, i, t]), side)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    truth = pd.DataFrame(
        {
            "filename": names,
            "split": splits,
            "category": kinds,
            "mem_score": scores,
            "alpha": alphas,
        }
    )
    for split in ("train", "val", "test"):
        part = truth[truth["split"] == split]
        records = [
            {"filename": r.filename, "mem_score": float(r.mem_score), "alpha": float(r.alpha)}
            for r in part.itertuples()
        ]
        (root / f"memento_{split}_data.json").write_text(json.dumps(records))
    return truth


# ----------------------------------------------------------------------------------------------
# BOLD5000


def bold5000_stimuli(n_stimuli: int) -> list[tuple[str, str]]:
    """``(file name, source)`` pairs in BOLD5000's naming, cycling COCO, ImageNet, Scene."""
    stimuli = []
    for i in range(n_stimuli):
        if i % 3 == 0:
            stimuli.append((f"COCO_train2014_{100000 + i:012d}.jpg", "COCO"))
        elif i % 3 == 1:
            stimuli.append((f"n{1440764 + i:08d}_{1000 + i}.JPEG", "ImageNet"))
        else:
            stimuli.append((f"scene{i:04d}.jpg", "Scene"))
    return stimuli


def write_bold5000(
    root: str | Path,
    n_stimuli: int = 12,
    seed: int = 0,
    *,
    subjects: Sequence[int] = (1, 2, 3, 4),
    n_repeats: int = 2,
    n_voxels: int = 7,
    image_size: int = 64,
    v73: bool = False,
) -> pd.DataFrame:
    """Write a BOLD5000-layout dataset.

    Files (as in the release):

    - ``ROIs/stim_lists/CSI0{n}_stim_lists.txt``: one presented stimulus file name per line, in
      presentation order; the first ``n_repeats - 1`` stimuli of each source are shown again
      (each extra showing listed with a ``rep_`` prefix; the reader also accepts plain repeats).
    - ``ROIs/CSI{n}/mat/CSI{n}_ROIs_TR{1,2,3,4,5,34}.mat``: variables ``LHEarlyVis``, ...,
      ``RHRSC``, float64 ``(n_presentations, n_voxels_roi)``. ``v73=True`` writes MATLAB v7.3
      (HDF5) files instead, with MATLAB's column-major (transposed) storage.
    - ``BOLD5000_Stimuli/Scene_Stimuli/Presented_Stimuli/{COCO,ImageNet,Scene}/<name>``: JPEGs.

    Returns
    -------
    pandas.DataFrame
        One row per (subject, presentation): ``subject``, ``presentation``, ``stimulus``
        (name without ``rep_``), ``category``, and for each ROI and hemisphere
        ``lh_<ROI>``/``rh_<ROI>``: the TR34 voxel mean written for that presentation.
    """
    from scipy.io import savemat

    root = Path(root)
    rng = np.random.default_rng(seed)
    stimuli = bold5000_stimuli(n_stimuli)
    names = [name for name, _ in stimuli]
    category_of = {
        name: CATEGORY_SCENE if source == "Scene" else CATEGORY_OBJECT for name, source in stimuli
    }
    categories = [category_of[name] for name in names]
    stim_root = root / "BOLD5000_Stimuli" / "Scene_Stimuli" / "Presented_Stimuli"
    for i, (name, source) in enumerate(stimuli):
        folder = stim_root / source
        folder.mkdir(parents=True, exist_ok=True)
        pixels = sample_image(categories[i], np.random.default_rng([seed, i]), image_size)
        Image.fromarray(pixels).save(folder / name, format="JPEG", quality=90)
    repeated = names[: max(0, n_repeats - 1) * 3]
    truth_rows = []
    for subject in subjects:
        order = [names[i] for i in rng.permutation(n_stimuli)] + ["rep_" + n for n in repeated]
        list_dir = root / "ROIs" / "stim_lists"
        list_dir.mkdir(parents=True, exist_ok=True)
        (list_dir / f"CSI0{subject}_stim_lists.txt").write_text("".join(n + "\n" for n in order))
        mat_dir = root / "ROIs" / f"CSI{subject}" / "mat"
        mat_dir.mkdir(parents=True, exist_ok=True)
        for tr in BOLD5000_TRS:
            variables = {}
            for hemi in ("LH", "RH"):
                for roi in BOLD5000_ROIS:
                    n_vox = n_voxels + int(rng.integers(0, 4))
                    variables[f"{hemi}{roi}"] = rng.normal(0.0, 1.0, (len(order), n_vox))
            _write_mat(mat_dir / f"CSI{subject}_ROIs_TR{tr}.mat", variables, v73, savemat)
            if tr == "34":
                for p, name in enumerate(order):
                    stimulus = name.removeprefix("rep_")
                    row = {
                        "subject": subject,
                        "presentation": p,
                        "stimulus": stimulus,
                        "category": category_of[stimulus],
                    }
                    for key, values in variables.items():
                        row[f"{key[:2].lower()}_{key[2:]}"] = float(values[p].mean())
                    truth_rows.append(row)
    return pd.DataFrame(truth_rows)


def _write_mat(path: Path, variables: dict[str, np.ndarray], v73: bool, savemat) -> None:
    if not v73:
        savemat(path, variables)
        return
    import h5py

    # MATLAB v7.3 = HDF5 with a 512-byte user block holding the MATLAB header text.
    with h5py.File(path, "w", userblock_size=512) as handle:
        for key, values in variables.items():
            dataset = handle.create_dataset(key, data=np.ascontiguousarray(values.T))
            dataset.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as handle:
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: neuromem synthetic"
        handle.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
