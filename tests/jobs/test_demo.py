"""`neuromem demo`: sample images → tiny encoder on Ray → Parquet table, offline."""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuromem.cli import main
from neuromem.data.schema import CATEGORY_OBJECT, CATEGORY_SCENE
from neuromem.scoring.table import open_table, read_metadata, read_vertices


def test_demo_end_to_end(ray_local, tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--n-images", "24"]) == 0
    printed = capsys.readouterr().out

    truth = pd.read_csv(out / "images" / "scores.csv")
    frame = open_table(out / "scores").to_table().to_pandas().sort_values("image_id")
    assert list(frame["image_id"]) == sorted(truth["image_id"])
    assert set(frame["category"]) == {CATEGORY_OBJECT, CATEGORY_SCENE}
    expected = truth.set_index("image_id").loc[frame["image_id"], "memorability"].to_numpy()
    np.testing.assert_allclose(frame["memorability"].to_numpy(), expected)
    assert frame["roi_FFA"].dtype == np.float32 and frame["roi_FFA"].notna().all()
    vertices_nv = read_vertices(out / "scores")
    assert vertices_nv.shape == (24, 20484) and np.isfinite(vertices_nv).all()
    assert read_metadata(out / "scores")["encoder"]["trained"] is False

    assert "UNTRAINED" in printed and "neuromem score" in printed and "tribev2" in printed
    assert "neuromem decompose" in printed and str(out / "scores") in printed
    assert "roi_FFA" in printed and "scored 24 rows, 0 errors" in printed
