"""Pure parts of the probes: ridge with per-target alphas, probe folding, NSD betas and ceiling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from neuromem.errors import InputError
from neuromem.probes import nsd_betas
from neuromem.probes.fit import fit_probe
from neuromem.probes.ridge import fit_ridge_cv, r2_columns, train_test_indices


def _linear_data(n_rows=240, n_features=12, n_targets=30, seed=0):
    rng = np.random.default_rng(seed)
    features_nd = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    weights_dt = rng.normal(size=(n_features, n_targets)).astype(np.float32)
    noise_sd_t = np.linspace(0.05, 12.0, n_targets)
    targets_nt = features_nd @ weights_dt + 3.0 + rng.normal(size=(n_rows, n_targets)) * noise_sd_t
    return features_nd, targets_nt.astype(np.float32), noise_sd_t


def test_ridge_cv_matches_sklearn_ridge_with_the_chosen_alphas():
    features_nd, targets_nt, noise_sd_t = _linear_data()
    fit = fit_ridge_cv(features_nd, targets_nt, alphas=np.logspace(-2, 5, 15), backend="numpy")
    assert fit.coef_dt.shape == (12, 30) and fit.alphas_t.shape == (30,)
    for t in range(30):
        reference = Ridge(alpha=float(fit.alphas_t[t])).fit(features_nd, targets_nt[:, t])
        np.testing.assert_allclose(fit.coef_dt[:, t], reference.coef_, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fit.intercept_t[t], reference.intercept_, rtol=1e-4, atol=1e-4)
    # noisier targets need more regularisation: the alphas are chosen per target
    assert spearmanr(noise_sd_t, fit.alphas_t).statistic > 0.8
    assert fit.alphas_t[-1] > fit.alphas_t[0]


def test_fit_probe_folds_standardisation_and_scores_held_out_rows():
    features_nd, targets_nt, noise_sd_t = _linear_data(seed=1)
    features_nd = features_nd * np.linspace(0.1, 5.0, 12) + 2.0  # unequal scales and offsets
    train_idx, test_idx = train_test_indices(len(features_nd), 0.25, seed=3)
    fit = fit_probe(features_nd, targets_nt, train_idx, test_idx, n_folds=4, backend="numpy")
    scaler = StandardScaler().fit(features_nd[train_idx])
    for t in (0, 7, 29):
        reference = Ridge(alpha=float(fit.alphas_v[t])).fit(
            scaler.transform(features_nd[train_idx]), targets_nt[train_idx, t]
        )
        expected = reference.predict(scaler.transform(features_nd[test_idx]))
        np.testing.assert_allclose(fit.predictions_tv[:, t], expected, rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(fit.predict(features_nd[test_idx])[:, t], expected, atol=1e-3)
    r2_t = r2_columns(targets_nt[test_idx], fit.predictions_tv)
    np.testing.assert_allclose(fit.test_r2_v, r2_t)
    assert fit.test_r2_v[0] > 0.99 and fit.test_r2_v[-1] < 0.5  # noise decides held-out R²


def test_r2_columns_and_split():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 3))
    pred = y + rng.normal(size=(50, 3)) * 0.5
    y[:, 2] = 1.0
    r2 = r2_columns(y, pred)
    from sklearn.metrics import r2_score

    np.testing.assert_allclose(r2[:2], [r2_score(y[:, k], pred[:, k]) for k in range(2)])
    assert np.isnan(r2[2])
    train, test = train_test_indices(50, 0.2, seed=1)
    assert len(test) == 10 and len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.r_[train, test]), np.arange(50))
    with pytest.raises(InputError, match="fraction"):
        train_test_indices(50, 1.5, seed=1)


def test_ridge_rejects_bad_input():
    with pytest.raises(InputError, match="rows"):
        fit_ridge_cv(np.zeros((20, 3)), np.zeros((19, 2)))
    with pytest.raises(InputError, match="finite"):
        fit_ridge_cv(np.full((20, 3), np.nan), np.zeros((20, 2)))
    with pytest.raises(InputError, match="positive"):
        fit_ridge_cv(np.ones((20, 3)), np.zeros((20, 2)), alphas=np.array([0.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# NSD betas in the real .mgh layout


def write_mgh(path, data_vf):
    """An fsaverage surface .mgh file: (163842, 1, 1, F) float32, as NSD ships them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(data_vf, np.float32).reshape(data_vf.shape[0], 1, 1, data_vf.shape[1])
    if data.shape[3] == 1:  # nibabel stores a single frame as (V, 1, 1), like NSD's ncsnr
        data = data[..., 0]
    nib.MGHImage(data, np.eye(4)).to_filename(str(path))


def write_nsd_betas(root, subject, sessions_fv: dict, ncsnr_v):
    """Betas ``{session: (2*163842, F)}`` (lh then rh rows) and ncsnr ``(2*163842,)``."""
    folder = nsd_betas.betas_dir(root, subject)
    n = nsd_betas.N_VERTICES_FSAVERAGE
    for session, data in sessions_fv.items():
        write_mgh(folder / f"lh.betas_session{session:02d}.mgh", data[:n])
        write_mgh(folder / f"rh.betas_session{session:02d}.mgh", data[n:])
    write_mgh(folder / "lh.ncsnr.mgh", ncsnr_v[:n, None])
    write_mgh(folder / "rh.ncsnr.mgh", ncsnr_v[n:, None])


def test_nsd_betas_average_repetitions_and_ceiling(tmp_path):
    trials = 6  # per session (750 in NSD)
    rng = np.random.default_rng(0)
    n_full = 2 * nsd_betas.N_VERTICES_FSAVERAGE
    sessions = {s: rng.normal(size=(n_full, trials)).astype(np.float32) * s for s in (1, 2)}
    ncsnr_v = rng.uniform(0, 2, n_full).astype(np.float32)
    write_nsd_betas(tmp_path, 3, sessions, ncsnr_v)
    # image 10 on trials 1, 4, 9; image 11 on 2 and 12; image 12 on 3; image 13 never (subject 3)
    stim = pd.DataFrame({
        "nsdId": [10, 11, 12, 13],
        "subject3_rep0": [1, 2, 3, 0],
        "subject3_rep1": [4, 12, 0, 0],
        "subject3_rep2": [9, 0, 0, 0],
    })
    ids, betas_mv, n_reps = nsd_betas.read_subject(
        tmp_path, 3, [1, 2], stim, trials_per_session=trials
    )
    assert ids.tolist() == [10, 11, 12] and n_reps.tolist() == [3, 2, 1]
    fs5 = np.r_[0:10242, nsd_betas.N_VERTICES_FSAVERAGE : nsd_betas.N_VERTICES_FSAVERAGE + 10242]
    zs = {s: ((d[fs5].T - d[fs5].T.mean(0)) / d[fs5].T.std(0)) for s, d in sessions.items()}
    by_trial = np.concatenate([zs[1], zs[2]])  # global trial t (0-based) -> row t
    np.testing.assert_allclose(betas_mv[0], by_trial[[0, 3, 8]].mean(0), atol=1e-5)
    np.testing.assert_allclose(betas_mv[1], by_trial[[1, 11]].mean(0), atol=1e-5)
    np.testing.assert_allclose(betas_mv[2], by_trial[2], atol=1e-5)

    raw_ids, raw_mv, _ = nsd_betas.read_subject(
        tmp_path, 3, [2], stim, zscore=False, trials_per_session=trials
    )
    assert raw_ids.tolist() == [10, 11]  # only trials 9 and 12 are in session 2
    np.testing.assert_allclose(raw_mv[1], sessions[2][fs5, 5], atol=1e-6)

    ncsnr_fs5 = nsd_betas.read_ncsnr(tmp_path, 3)
    np.testing.assert_array_equal(ncsnr_fs5, ncsnr_v[fs5])
    ceiling = nsd_betas.noise_ceiling(ncsnr_fs5, n_reps)
    expected = 100 * ncsnr_fs5.astype(float) ** 2 / (
        ncsnr_fs5.astype(float) ** 2 + (1 / 3 + 1 / 2 + 1 / 1) / 3
    )
    np.testing.assert_allclose(ceiling, expected, rtol=1e-12)
    # all images with 3 repetitions: NSD's 100 * ncsnr² / (ncsnr² + 1/3)
    np.testing.assert_allclose(
        nsd_betas.noise_ceiling(np.array([1.0]), np.array([3, 3])), [75.0]
    )


def test_nsd_betas_errors(tmp_path):
    stim = pd.DataFrame({"nsdId": [0], "subject1_rep0": [1], "subject1_rep1": [0],
                         "subject1_rep2": [0]})
    with pytest.raises(InputError, match="not found"):
        nsd_betas.read_subject(tmp_path, 1, [1], stim)
    with pytest.raises(InputError, match="subject2_rep0"):
        nsd_betas.trial_images(stim, 2)
    bad = nsd_betas.betas_dir(tmp_path, 1) / "lh.betas_session01.mgh"
    write_mgh(bad, np.zeros((500, 4)))
    with pytest.raises(InputError, match="163842"):
        nsd_betas.read_session(tmp_path, 1, 1)


def test_clip_model_spec_validation():
    from neuromem.errors import UnknownNameError
    from neuromem.probes.features import ClipModelSpec

    ClipModelSpec("tiny", "").validate()
    ClipModelSpec("ViT-B-32", "openai").validate()  # checks names only: nothing is downloaded
    with pytest.raises(UnknownNameError, match="no model"):
        ClipModelSpec("ViT-B-33", "openai").validate()
    with pytest.raises(UnknownNameError, match="pretrained tag"):
        ClipModelSpec("ViT-B-32", "opnai").validate()
