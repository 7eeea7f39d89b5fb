"""ResMem assessor with the real weights, and `neuromem assess` on real Ray."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from neuromem.cli import main
from neuromem.data.synthetic import sample_image
from neuromem.errors import InputError
from neuromem.memorability import ResMemAssessor
from neuromem.scoring.table import open_table, read_metadata, vertices_to_arrow, write_metadata


@pytest.fixture(scope="module")
def resmem_model():
    """The resmem package's own model, loaded once: the reference the assessor must match."""
    import warnings

    from resmem import ResMem

    with warnings.catch_warnings():  # torchvision's notice about resnet152(pretrained=False)
        warnings.simplefilter("ignore", UserWarning)
        return ResMem(pretrained=True).eval()


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("assess_images")
    shapes = [(300, 400), (256, 256), (180, 420)]  # (H, W): squashed to 256 x 256 by ResMem
    paths = []
    for i, (kind, shape) in enumerate(zip(["scene", "object", "scene"], shapes, strict=True)):
        paths.append(root / f"im{i}.jpg")
        Image.fromarray(sample_image(kind, np.random.default_rng(i), shape)).save(paths[-1], quality=92)
    return paths


@pytest.fixture(scope="module")
def direct_scores(resmem_model, image_paths):
    """Scores from calling the resmem package directly, as its README shows (one batch)."""
    from resmem import transformer

    batch = torch.stack([transformer(Image.open(p).convert("RGB")) for p in image_paths])
    with torch.no_grad():
        return resmem_model(batch.view(-1, 3, 227, 227)).reshape(-1).numpy()


def test_assessor_matches_resmem_package(resmem_model, image_paths, direct_scores):
    assessor = ResMemAssessor("cpu", model=resmem_model)
    pixels = [np.asarray(Image.open(p).convert("RGB")) for p in image_paths]
    scores = assessor.score_pixels(pixels)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, direct_scores, atol=1e-6)
    assert np.all((scores > 0) & (scores < 1))
    assert np.ptp(scores) > 1e-4  # different images, different scores
    assert assessor.score_pixels(pixels[:1])[0] == scores[0]  # deterministic (eval mode)

    # the float-tensor path (torch resize) agrees with PIL's to within a grey level per pixel
    tensor_b3hw = torch.from_numpy(pixels[0].copy()).permute(2, 0, 1)[None].float() / 255
    assert float(assessor.score(tensor_b3hw)[0]) == pytest.approx(float(scores[0]), abs=0.01)
    with pytest.raises(InputError, match="uint8"):
        assessor.score_pixels([pixels[0].astype(np.float32)])
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        assessor.score(torch.zeros(3, 64, 64))


def test_assess_command_adds_resmem_column(tmp_path, ray_local, image_paths, direct_scores):
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a JPEG after all")
    table = pa.table({
        "image_id": ["a", "b", "c", "gone", "bad"],
        "dataset": ["mine"] * 5,
        "source": [str(p) for p in image_paths] + [str(tmp_path / "gone.jpg"), str(corrupt)],
        "roi_FFA": pa.array([0.1, 0.2, 0.3, 0.4, 0.5], pa.float32()),
        "vertices": vertices_to_arrow(np.arange(5 * 20484).reshape(5, 20484) % 7),
    })
    table = write_metadata(table, {"encoder": {"spec": "clip-probe:tiny"}})
    (tmp_path / "table").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "table" / "part-0.parquet")
    pq.write_table(table.slice(2), tmp_path / "table" / "part-1.parquet")
    out = tmp_path / "scored"
    assert main(["assess", str(tmp_path / "table"), "--out", str(out), "--batch-size", "2"]) == 0

    scored = open_table(out).to_table()  # the table without its errors/ folder
    assert scored.column("image_id").to_pylist() == ["a", "b", "c", "gone", "bad"]
    assert scored.schema.field("memorability_resmem").type == pa.float32()
    assert scored.column("vertices").equals(table.column("vertices"))  # other columns kept
    values = scored.column("memorability_resmem").to_pylist()
    assert values[3] is None and values[4] is None  # the missing and the corrupt image
    np.testing.assert_allclose(values[:3], direct_scores, atol=1e-6)
    metadata = read_metadata(pq.read_schema(out / "part-1.parquet"))
    assert metadata["encoder"]["spec"] == "clip-probe:tiny"
    assert metadata["annotations"][0]["assessor"] == "resmem"
    errors = pd.read_parquet(out / "_errors" / "assess.parquet")
    errors = errors.set_index("image_id")["error"]
    assert sorted(errors.index) == ["bad", "gone"] and "not found" in errors["gone"]
    json.dumps(metadata)  # the record stays JSON

    # scoring again into the same folder, or a table that already has the column, is refused
    assert main(["assess", str(out), "--out", str(tmp_path / "again")]) == 2
