"""The decompose job end to end on small score tables written in the scoring format."""

from __future__ import annotations

import json

import numpy as np
import pingouin as pg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.analysis import vertex_pearson
from neuromem.analysis.results import RESULT_KEYS
from neuromem.cli import main
from neuromem.cortex.rois import load_roi_set
from neuromem.jobs import decompose as decompose_job
from neuromem.scoring.table import build_metadata, vertices_to_arrow, write_metadata

ROIS = ["FFA", "RSC", "V1"]


def _write(root, *, seed, trained, n=90, rsc_sign=-1.0, via_category=False):
    """A score table: RSC vertices anti-correlated with memorability, FFA vertices correlated
    (``via_category``: only through the category, which drives both)."""
    rng = np.random.default_rng(seed)
    roi_set = load_roi_set("default")
    memorability = rng.uniform(0.4, 0.9, n)
    category = rng.choice(["object", "scene"], n)
    responses = rng.standard_normal((n, 20484)).astype(np.float32)
    z = (memorability - memorability.mean()) / memorability.std()
    if via_category:
        z = np.where(category == "scene", 1.0, -1.0)
        memorability += 0.2 * z
    responses[:, roi_set.indices["RSC"]] += rsc_sign * 2 * z[:, None]
    responses[:, roi_set.indices["FFA"]] += 2 * z[:, None]
    responses = responses.astype(np.float16)
    meta = build_metadata(
        encoder={"spec": f"clip-probe:tiny#{seed}", "weights_sha256": "0" * 64, "trained": trained},
        atlas=roi_set.atlas,
        rois=roi_set.to_dict(),
        command="test",
    )
    root.mkdir()
    for i, rows in enumerate(np.array_split(np.arange(n), 2)):
        x = responses[rows].astype(np.float64)
        cols = {
            "image_id": [f"im{j}" for j in rows],
            "memorability": memorability[rows],
            "category": category[rows],
            "age": rng.normal(size=len(rows)),
            **{f"roi_{r}": pa.array(x[:, roi_set.indices[r]].mean(1), pa.float32()) for r in ROIS},
            "vertices": vertices_to_arrow(responses[rows]),
        }
        pq.write_table(
            write_metadata(pa.table(cols), meta), root / f"part-{i}.parquet", row_group_size=16
        )
    return memorability, responses


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    base = tmp_path_factory.mktemp("decompose")
    primary = _write(base / "tribe", seed=0, trained=False)
    _write(base / "other", seed=1, trained=True, rsc_sign=1.0)
    return base, primary


def test_decompose_end_to_end(tables):
    base, (memorability, responses) = tables
    out = base / "out"
    code = main(
        [
            "decompose",
            str(base / "tribe"),
            str(base / "other"),
            "--out",
            str(out),
            "--covariates",
            "age",
            "--vertices",
            "--spins",
            "30",
            "--seed",
            "5",
            "--bootstrap",
            "100",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == [
        "n_images",
        "memorability_column",
        "category_column",
        "seed",
        "multiple_comparisons",
        "rois",
        "agreement",
        "agreement_summary",
        "vertex_maps",
    ]
    assert "hemisphere family" in results["multiple_comparisons"]
    assert results["n_images"] == 90 and results["category_column"] == "category"
    assert results["seed"] == 5
    by_roi = {r["roi"]: r for r in results["rois"]}
    assert list(by_roi) == ROIS and all(tuple(r) == RESULT_KEYS for r in results["rois"])
    # what the reward of `neuromem finetune` reads from each record
    assert {"roi", "pearson_r", "partial_r", "n"} <= set(RESULT_KEYS)
    rsc, ffa = by_roi["RSC"], by_roi["FFA"]
    assert rsc["pearson_r"] < -0.5 and ffa["pearson_r"] > 0.5
    assert rsc["frac_vertices_negative"] > 0.95 and ffa["frac_vertices_positive"] > 0.95
    assert 0 < rsc["spin_p_mean_r"] <= 1 and 0 < rsc["spin_p_coherence"] <= 1
    assert set(rsc["within_category"]) == {"object", "scene"}
    assert rsc["partial_r"] < -0.5 and len(rsc["partial_ci"]) == 2
    # vertex r matches a direct computation
    r_v = np.load(out / "vertex_r.npy")
    v = load_roi_set("default").indices["RSC"][0]
    assert r_v[v] == pytest.approx(
        np.corrcoef(responses[:, v].astype(float), memorability)[0, 1], abs=1e-6
    )
    # the medial wall (no atlas label) is recorded and left out; both maps get coherence and spins
    maps = results["vertex_maps"]
    labelled_v = load_roi_set("default").labelled_v
    assert maps["mask"]["excluded_vertices"] == np.flatnonzero(~labelled_v).tolist()
    assert maps["mask"]["n_excluded"] == 1712 and maps["mask"]["atlas"] == "glasser"
    assert maps["partial"]["covariates"] == ["age"] and maps["partial"]["levels"] == [
        "object", "scene"]
    assert rsc["partial_frac_vertices_negative"] > 0.95
    assert 0 < rsc["partial_spin_p_coherence"] <= 1 and rsc["partial_spin_q_mean_r"] is not None
    partial_v = np.load(out / "vertex_partial_r.npy")
    frame = pq.read_table(base / "tribe", columns=["memorability", "category", "age"]).to_pandas()
    frame["x"] = responses[:, v].astype(float)
    frame["scene"] = (frame.pop("category") == "scene").astype(float)
    expected = pg.partial_corr(frame, "x", "memorability", covar=["scene", "age"])["r"].iloc[0]
    assert partial_v[v] == pytest.approx(expected, abs=1e-5)
    assert "1712 vertices with no glasser label" in (out / "report.md").read_text()
    agreement = {a["roi"]: a for a in results["agreement"]}
    assert agreement["FFA"]["signs_agree"] is True and agreement["RSC"]["signs_agree"] is False
    assert agreement["RSC"]["status"] == "disagree" and results["agreement_summary"]["agree"] >= 1
    assert 0 < rsc["spin_q_mean_r"] <= 1 and rsc["spearman_q"] is not None
    assert rsc["spearman_ci_method"] == "bca_bootstrap_100"  # n = 90 < 2,000: the bootstrap
    assert set(agreement["RSC"]["r"]) == {"clip-probe:tiny#0", "clip-probe:tiny#1"}
    report = (out / "report.md").read_text()
    assert "NOT trained" in report and "n = 90" in report and "seed 5" in report
    for png in ["roi_bars.png", "roi_scatter.png", "vertex_r.png", "coherence.png",
                "vertex_partial_r.png", "coherence_partial.png"]:
        assert (out / png).stat().st_size > 1000 and f"({png})" in report
        assert f'src="{png}"' in (out / "report.html").read_text()


def test_category_confound_is_coherent_raw_and_not_partial(tmp_path):
    """Planted: RSC follows memorability only through the category; the raw vertex map of RSC
    is coherent, the partial one (category controlled) is not."""
    _write(tmp_path / "confound", seed=3, trained=True, n=120, via_category=True)
    out = tmp_path / "out"
    assert main(["decompose", str(tmp_path / "confound"), "--out", str(out), "--vertices",
                 "--spins", "20", "--bootstrap", "0", "--no-progress"]) == 0
    rsc = {r["roi"]: r for r in json.loads((out / "results.json").read_text())["rois"]}["RSC"]
    assert rsc["frac_vertices_negative"] > 0.95
    assert max(rsc["partial_frac_vertices_negative"], rsc["partial_frac_vertices_positive"]) < 0.7
    assert rsc["spin_p_coherence"] < rsc["partial_spin_p_coherence"]


def test_decompose_ray_map_reduce_matches_local(tables, ray_local, capsys):
    base, _ = tables
    out = base / "out_ray"
    assert (
        main(
            [
                "decompose",
                str(base / "tribe"),
                "--out",
                str(out),
                "--vertices",
                "--spins",
                "0",
                "--bootstrap",
                "0",
                "--ray",
            ]
        )
        == 0
    )
    local = vertex_pearson(base / "tribe", n_threads=1)
    np.testing.assert_allclose(np.load(out / "vertex_r.npy"), local, atol=1e-7)
    results = json.loads((out / "results.json").read_text())
    assert results["agreement"] == [] and results["rois"][0]["spin_p_mean_r"] is None
    assert "ray" in (out / "report.md").read_text()
    assert "vertex pass (Ray): 100%" in capsys.readouterr().err.replace("\r", "\n")  # 2 files


def test_decompose_errors(tables, capsys):
    base, _ = tables
    out = str(base / "bad")
    assert main(["decompose", str(base / "tribe"), "--out", out, "--memorability", "mem"]) == 2
    assert "mem" in capsys.readouterr().err
    assert main(["decompose", str(base / "tribe"), "--out", out, "--covariates", "age,zzz"]) == 2
    assert "zzz" in capsys.readouterr().err
    assert main(["decompose", str(base / "missing"), "--out", out]) == 2
    assert "cannot open score table" in capsys.readouterr().err


def test_no_usable_rows_bad_options_and_unwritable_out_are_one_line(tables, tmp_path, capsys):
    base, _ = tables
    empty = tmp_path / "empty"
    empty.mkdir()
    for part in sorted((base / "tribe").glob("*.parquet")):
        table = pq.read_table(part)
        nulls = pa.nulls(table.num_rows, pa.float64())
        table = table.set_column(table.schema.get_field_index("memorability"), "memorability",
                                 nulls)
        pq.write_table(table.replace_schema_metadata(pq.read_schema(part).metadata),
                       empty / part.name)
    out = tmp_path / "out"
    assert main(["decompose", str(empty), "--out", str(out), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "0 of 90 rows have a finite 'memorability'" in err and len(err.splitlines()) == 1
    assert not out.exists()  # no report of empty rows, no empty output folder
    assert main(["decompose", str(base / "tribe"), "--out", str(out), "--memorability",
                 "category"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'category' must be numeric" in err and len(err.splitlines()) == 1
    assert main(["decompose", str(base / "tribe"), str(empty), "--out", str(out)]) == 2
    assert "0 of 90 rows" in capsys.readouterr().err and not out.exists()  # before any statistics

    assert main(["decompose", str(base / "tribe"), "--out", str(out), "--bootstrap", "1"]) == 2
    assert "--bootstrap must be 0" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["decompose", str(base / "tribe"), "--out", str(blocker / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to" in err and len(err.splitlines()) == 1


def test_a_rerun_with_other_settings_refuses_and_overwrite_leaves_nothing_stale(
        tables, tmp_path, capsys):
    base, _ = tables
    out = tmp_path / "out"
    first = ["decompose", str(base / "tribe"), "--out", str(out), "--vertices", "--spins", "4",
             "--bootstrap", "0", "--no-progress"]
    assert main(first) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert {"vertex_r.npy", "vertex_partial_r.npy", "coherence.png"} <= set(before)
    capsys.readouterr()

    other = ["decompose", str(base / "tribe"), "--out", str(out), "--bootstrap", "0",
             "--seed", "5", "--no-progress"]
    assert main(other) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a run made with other settings" in err and "--overwrite" in err
    assert "vertices" in err and "seed" in err and len(err.splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched

    assert main(first) == 0  # the same settings again: a fresh decomposition, same files
    assert {p.name for p in out.iterdir()} == set(before)

    assert main([*other, "--overwrite"]) == 0
    left = {p.name for p in out.iterdir()}
    assert not {p for p in left if p.startswith(("vertex_", "coherence"))}, left  # none stale
    assert json.loads((out / "results.json").read_text())["seed"] == 5


def test_decompose_writes_to_a_uri(tables, tmp_path):
    base, _ = tables
    target = tmp_path / "remote"
    code = main(["decompose", f"file://{base / 'tribe'}", "--out", f"file://{target}",
                 "--bootstrap", "0"])
    assert code == 0
    results = json.loads((target / "results.json").read_text())
    assert results["n_images"] == 90
    assert {"report.md", "report.html", "roi_bars.png"} <= {p.name for p in target.iterdir()}


def test_long_stages_show_progress_with_rate_and_eta(tables, tmp_path, capsys, monkeypatch):
    base, _ = tables
    monkeypatch.setattr(decompose_job, "_ray_running", lambda: False)  # the local vertex pass
    argv = ["decompose", str(base / "tribe"), "--out", str(tmp_path / "a"), "--vertices",
            "--spins", "4", "--bootstrap", "100"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    bars = {line.split(":")[0].strip(): line for line in err.replace("\r", "\n").splitlines()
            if "100%" in line}
    assert {"ROI statistics", "vertex pass", "spin test", "figures"} <= set(bars), err
    assert "3/3" in bars["ROI statistics"] and "90/90" in bars["vertex pass"]
    assert "4/4" in bars["spin test"]
    figures = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert f"{len(figures)}/{len(figures)}" in bars["figures"], figures  # every figure counted
    assert all("<" in line and ("/s" in line or "s/" in line) for line in bars.values())  # rate, ETA
    assert main([*argv[:3], str(tmp_path / "b"), *argv[4:], "--no-progress"]) == 0
    assert "100%" not in capsys.readouterr().err


def test_n_images_counts_the_rows_with_a_memorability(tables, tmp_path):
    base, _ = tables
    partial = tmp_path / "partial"
    partial.mkdir()
    for k, part in enumerate(sorted((base / "tribe").glob("*.parquet"))):
        table = pq.read_table(part)
        values = table.column("memorability").to_numpy().copy()
        if k == 0:
            values[:30] = np.nan  # 30 of the 90 rows have no memorability
        table = table.set_column(table.schema.get_field_index("memorability"), "memorability",
                                 pa.array(values))
        pq.write_table(table.replace_schema_metadata(pq.read_schema(part).metadata),
                       partial / part.name)
    out = tmp_path / "out"
    assert main(["decompose", str(partial), "--out", str(out), "--bootstrap", "0"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_images"] == 60 and all(r["n"] == 60 for r in results["rois"])


def _with_column(source, dest, column, values) -> None:
    """Copy the score table ``source`` to ``dest`` with ``column`` replaced by
    ``values(table)`` in every part (metadata kept)."""
    dest.mkdir(exist_ok=True)
    for part in sorted(source.glob("*.parquet")):
        table = pq.read_table(part)
        table = table.set_column(table.schema.get_field_index(column), column, values(table))
        pq.write_table(table.replace_schema_metadata(pq.read_schema(part).metadata),
                       dest / part.name)


def test_an_empty_category_column_is_no_control(tables, tmp_path, capsys):
    """LaMem has no categories: its score tables carry an all-null ``category`` column. The
    job runs without a category control (raw vertex map only, a note says why) instead of
    failing on a partial map with no rows; naming that column explicitly is an error."""
    base, _ = tables
    nocat = tmp_path / "nocat"
    _with_column(base / "tribe", nocat, "category", lambda t: pa.nulls(t.num_rows, pa.string()))
    out = tmp_path / "out"
    assert main(["decompose", str(nocat), "--out", str(out), "--vertices", "--spins", "0",
                 "--bootstrap", "0", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "partial" not in results["vertex_maps"] and (out / "vertex_r.png").exists()
    assert not (out / "vertex_partial_r.npy").exists()
    assert np.isfinite(np.load(out / "vertex_r.npy")).any()
    assert "`category` column of the table is empty" in (out / "report.md").read_text()
    assert main(["decompose", str(nocat), "--out", str(tmp_path / "explicit"), "--category",
                 "category", "--bootstrap", "0"]) == 2
    assert "--category 'category' has no value" in capsys.readouterr().err
    assert not (tmp_path / "explicit").exists()
    # an empty covariate is an error too
    _with_column(nocat, nocat, "age", lambda t: pa.nulls(t.num_rows, pa.float64()))
    assert main(["decompose", str(nocat), "--out", str(tmp_path / "explicit"), "--covariates",
                 "age", "--bootstrap", "0"]) == 2
    assert "--covariates 'age' has no finite value" in capsys.readouterr().err


def test_a_partial_map_undefined_everywhere_is_a_note_not_a_figure(tables, tmp_path, capsys,
                                                                   monkeypatch):
    """One category level per image leaves no within-category variance: the partial map is NaN
    at every vertex; the run still writes the raw map and says why the partial one is absent."""
    base, _ = tables
    unique = tmp_path / "unique"
    _with_column(base / "tribe", unique, "category", lambda t: t.column("image_id"))
    out = tmp_path / "out"
    assert main(["decompose", str(unique), "--out", str(out), "--vertices", "--spins", "0",
                 "--bootstrap", "0", "--no-progress"]) == 0
    assert np.isnan(np.load(out / "vertex_partial_r.npy")).all()
    assert (out / "vertex_r.png").exists() and not (out / "vertex_partial_r.png").exists()
    assert "vertex partial r map is undefined at every vertex" in (out / "report.md").read_text()
    # too many levels for the moments to fit the memory bound: refused before any output
    from neuromem.analysis.vertexwise import GroupedVertexMoments

    monkeypatch.setattr(decompose_job, "MAX_MOMENTS_BYTES", GroupedVertexMoments.nbytes(89, 1))
    assert main(["decompose", str(unique), "--out", str(tmp_path / "big"), "--vertices",
                 "--bootstrap", "0"]) == 2
    assert "'category' has 90 levels" in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
