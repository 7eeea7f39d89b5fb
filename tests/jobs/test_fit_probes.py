"""`neuromem fit-probes` end to end on real Ray: distillation targets and NSD betas (.mgh)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler

from neuromem.cli import main
from neuromem.data.decode import decode_image
from neuromem.encoders.registry import load_encoder
from neuromem.probes import nsd_betas
from neuromem.probes.features import ClipModelSpec, build_feature_encoder, image_features
from neuromem.probes.ridge import train_test_indices
from neuromem.scoring.table import vertices_to_arrow

N_VERTICES = 20484
TINY = ClipModelSpec("tiny", "", seed=0)


def _write_mgh(path, data_vf):
    """An fsaverage .mgh file, (163842, 1, 1, F) float32 (single frame: (163842, 1, 1))."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data_vf, np.float32)[:, None, None, :]
    nib.MGHImage(data[..., 0] if data.shape[3] == 1 else data, np.eye(4)).to_filename(str(path))


def _write_nsd_betas(root, subject, sessions_fv, ncsnr_v):
    folder = nsd_betas.betas_dir(root, subject)
    n = nsd_betas.N_VERTICES_FSAVERAGE
    for session, data in sessions_fv.items():
        _write_mgh(folder / f"lh.betas_session{session:02d}.mgh", data[:n])
        _write_mgh(folder / f"rh.betas_session{session:02d}.mgh", data[n:])
    _write_mgh(folder / "lh.ncsnr.mgh", ncsnr_v[:n, None])
    _write_mgh(folder / "rh.ncsnr.mgh", ncsnr_v[n:, None])


def _images(n_images, seed):
    """Smooth random colour images (64 x 64), different enough for distinct CLIP features."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(n_images, 4, 4, 3)).astype(np.uint8)
    return [np.asarray(Image.fromarray(c).resize((64, 64), Image.Resampling.BICUBIC)) for c in coarse]


def _features(pixels):
    encoder = build_feature_encoder(TINY)
    images_b3hw = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0
    return image_features(encoder, images_b3hw)


def _planted_map(features_ne, seed, noise=0.05):
    """Targets = a known linear map of the leading feature directions + noise, (N, 20484)."""
    rng = np.random.default_rng(seed)
    centred = features_ne - features_ne.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    scores_nk = centred @ vt[:4].T
    scores_nk /= scores_nk.std(0)
    signal_nv = scores_nk @ rng.normal(size=(4, N_VERTICES))
    return (signal_nv + noise * rng.normal(size=signal_nv.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def distil_case(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("distil")
    pixels = _images(120, seed=0)
    paths = []
    for i, image in enumerate(pixels):
        paths.append(str(root / f"img_{i:03d}.png"))
        Image.fromarray(image).save(paths[-1])
    targets_nv = _planted_map(_features(pixels), seed=1)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n then nothing an image needs")
    table = pa.table({
        "image_id": [f"img_{i:03d}" for i in range(len(pixels))] + ["missing", "corrupt"],
        "dataset": ["folder"] * (len(pixels) + 2),
        "source": paths + [str(root / "missing.png"), str(root / "corrupt.png")],
        "vertices": vertices_to_arrow(np.concatenate([targets_nv, targets_nv[:2]])),
    })
    (root / "table").mkdir()
    pq.write_table(table, root / "table" / "part-0.parquet")
    out = root / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main([
            "fit-probes", str(root / "table"), "--out", str(out), "--model", "tiny",
            "--pretrained", "", "--alphas", "0.01,0.1,1,10,100,1000", "--folds", "3",
            "--batch-size", "32", "--no-plots",
        ])
    assert code == 0
    targets_16 = targets_nv.astype(np.float16).astype(np.float32)  # as stored in the table
    return {"out": out, "pixels": pixels, "paths": paths, "targets": targets_16,
            "printed": printed.getvalue()}


def test_distilled_probe_recovers_planted_map(distil_case):
    report = json.loads((distil_case["out"] / "r2.json").read_text())
    assert report["training"]["n_train"] + report["training"]["n_test"] == 120
    assert report["training"]["n_failed"] == 2
    assert "where the time went: CLIP features" in distil_case["printed"]
    assert " ridge " in distil_case["printed"]  # the long stage without a bar is timed
    errors = pd.read_parquet(distil_case["out"] / "errors.parquet").set_index("image_id")
    assert sorted(errors.index) == ["corrupt", "missing"]
    assert "not found" in errors.loc["missing", "error"]
    r2_v = np.array(report["vertices"]["r2"], dtype=float)
    assert r2_v.shape == (N_VERTICES,)
    assert np.median(r2_v) > 0.95
    rois = {r["roi"]: r for r in report["rois"]}
    assert {"FFA", "PPA", "lh_RSC"} <= set(rois) and rois["FFA"]["r2"] > 0.95
    assert report["vertices"]["noise_ceiling"] is None  # no ceiling for predicted targets


def test_probe_file_loads_and_matches_sklearn(distil_case):
    out, pixels, targets = distil_case["out"], distil_case["pixels"], distil_case["targets"]
    report = json.loads((out / "r2.json").read_text())
    encoder = load_encoder(f"clip-probe:{out / 'probe.safetensors'}")
    assert encoder.trained and encoder.training_info["targets"] == "vertices"
    decoded = np.stack([decode_image(open(p, "rb").read(), "image", 64) for p in distil_case["paths"]])
    with torch.no_grad():
        responses_nv = encoder(torch.from_numpy(decoded).permute(0, 3, 1, 2).float() / 255).numpy()

    features_ne = _features(list(decoded))
    train, test = train_test_indices(len(pixels), 0.2, seed=0)
    scaler = StandardScaler().fit(features_ne[train])
    alphas_v = np.array(report["vertices"]["alpha"])
    for v in (0, 5000, 10241, 15000, 20483):
        ridge = Ridge(alpha=alphas_v[v]).fit(scaler.transform(features_ne[train]), targets[train, v])
        expected_n = ridge.predict(scaler.transform(features_ne))
        np.testing.assert_allclose(responses_nv[:, v], expected_n, atol=2e-3 * np.abs(expected_n).max())
        assert report["vertices"]["r2"][v] == pytest.approx(
            r2_score(targets[test, v], expected_n[test]), abs=2e-3
        )


@pytest.fixture(scope="module")
def nsd_case(tmp_path_factory, ray_local):
    from neuromem.data.synthetic import write_nsd

    root = tmp_path_factory.mktemp("nsd")
    n_images, trials = 40, 40
    write_nsd(root, n_images=n_images, seed=0)
    # subject 1 sees every image twice: once in session 1 and once in session 2 (shuffled)
    stim_path = root / nsd_betas.STIM_INFO
    stim = pd.read_csv(stim_path, index_col=0)
    rng = np.random.default_rng(5)
    order_1, order_2 = rng.permutation(n_images), rng.permutation(n_images)
    stim["subject1_rep0"] = np.argsort(order_1) + 1
    stim["subject1_rep1"] = np.argsort(order_2) + 1 + trials
    stim["subject1_rep2"] = 0
    stim.to_csv(stim_path)

    import h5py

    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as h5:
        pixels = [np.asarray(Image.fromarray(h5["imgBrick"][i]).resize((64, 64), Image.Resampling.BILINEAR))
                  for i in range(n_images)]
    signal_nv = _planted_map(_features(pixels), seed=2, noise=0.0)
    n_full = nsd_betas.N_VERTICES_FSAVERAGE
    sessions = {}
    for session, order in ((1, order_1), (2, order_2)):
        betas = rng.normal(size=(2 * n_full, trials)).astype(np.float32)
        trial_signal = signal_nv[order]  # trial t shows image order[t]
        betas[:10242] = trial_signal[:, :10242].T + 0.1 * rng.normal(size=(10242, trials))
        betas[n_full : n_full + 10242] = trial_signal[:, 10242:].T + 0.1 * rng.normal(size=(10242, trials))
        sessions[session] = betas
    ncsnr_v = rng.uniform(0.2, 3.0, 2 * n_full).astype(np.float32)
    _write_nsd_betas(root, 1, sessions, ncsnr_v)
    out = root / "out"
    code = main([
        "fit-probes", "--targets", "nsd", "--nsd-root", str(root), "--subject", "1",
        "--sessions", "1-2", "--trials-per-session", str(trials), "--out", str(out),
        "--model", "tiny", "--pretrained", "", "--alphas", "0.1,1,10,100", "--folds", "3",
        "--no-plots",
    ])
    assert code == 0
    fs5 = np.r_[0:10242, n_full : n_full + 10242]
    return {"out": out, "ncsnr": ncsnr_v[fs5]}


def test_nsd_probe_fits_real_betas_layout(nsd_case):
    report = json.loads((nsd_case["out"] / "r2.json").read_text())
    training = report["training"]
    assert training["targets"] == "nsd" and training["sessions"] == [1, 2]
    assert training["n_train"] + training["n_test"] == 40
    assert training["mean_repetitions"] == 2.0
    r2_v = np.array(report["vertices"]["r2"], dtype=float)
    assert np.median(r2_v) > 0.8  # images matched to the right trials
    ceiling_v = np.array(report["vertices"]["noise_ceiling"], dtype=float)
    ncsnr = nsd_case["ncsnr"].astype(float)
    np.testing.assert_allclose(ceiling_v, 100 * ncsnr**2 / (ncsnr**2 + 1 / 2), rtol=1e-6)
    normalised = np.array(report["vertices"]["r2_normalised"], dtype=float)
    np.testing.assert_allclose(normalised, 100 * r2_v / ceiling_v, rtol=1e-6)
    assert all(r["mean_noise_ceiling"] is not None for r in report["rois"])
    encoder = load_encoder(f"clip-probe:{nsd_case['out'] / 'probe.safetensors'}")
    assert encoder.training_info["subject"] == 1


def test_fit_probes_rejects_tables_without_targets(tmp_path):
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "dataset": ["x"], "source": ["a.png"]}), table)
    out = str(tmp_path / "o")
    assert main(["fit-probes", str(table), "--out", out, "--model", "tiny", "--pretrained", ""]) == 2
    assert main(["fit-probes", "--targets", "nsd", "--out", out, "--model", "tiny"]) == 2
    assert main(["fit-probes", str(table), "--out", out, "--model", "ViT-B-33"]) == 2
