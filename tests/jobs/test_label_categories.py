"""`neuromem label-categories`: zero-shot CLIP (tiny random open_clip, real Ray) and CSV labels."""

from __future__ import annotations

import numpy as np
import open_clip
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from neuromem.cli import main
from neuromem.data.decode import decode_image
from neuromem.data.synthetic import write_image_folder
from neuromem.encoders.clip_probe import (
    TINY_MODEL_CONFIG,
    TINY_MODEL_NAME,
    register_open_clip_config,
)
from neuromem.errors import InputError
from neuromem.probes.zero_shot import DEFAULT_CLASSES, parse_classes
from neuromem.scoring.table import open_table, read_metadata, vertices_to_arrow, write_metadata

CLASSES = "scene=a photo of a scene|a landscape,object=a photo of an object,face=a face"


@pytest.fixture()
def table_dir(tmp_path):
    """A two-file score table of an image folder (no category yet) and the folder itself."""
    truth = write_image_folder(tmp_path / "images", n_images=6, seed=0, csv=False, image_size=80)
    ids = [*truth["image_id"], "object/missing.jpg"]
    table = pa.table({
        "image_id": ids,
        "dataset": ["folder"] * len(ids),
        "category": pa.nulls(len(ids), pa.string()),
        "roi_FFA": pa.array(np.arange(len(ids), dtype=np.float32)),
        "vertices": vertices_to_arrow(np.ones((len(ids), 20484))),
    })
    table = write_metadata(table, {"encoder": {"spec": "clip-probe:tiny"}})
    root = tmp_path / "table"
    (root / "_errors").mkdir(parents=True)
    pq.write_table(table.slice(0, 4), root / "part-0.parquet")
    pq.write_table(table.slice(4), root / "part-1.parquet")
    pq.write_table(pa.table({"image_id": ["x"], "error": ["old failure"]}), root / "_errors" / "score.parquet")
    return {"table": root, "images": tmp_path / "images", "ids": ids, "truth": truth}


def _expected_labels(image_root, ids, classes):
    """Zero-shot CLIP computed here with open_clip directly (same seeded tiny model)."""
    register_open_clip_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(TINY_MODEL_NAME, pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
    mean = torch.tensor(model.visual.image_mean).view(3, 1, 1)
    std = torch.tensor(model.visual.image_std).view(3, 1, 1)
    pixels = np.stack([decode_image((image_root / i).read_bytes(), "image", 64) for i in ids])
    images = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        image_emb = model.encode_image(images)
        image_emb = image_emb / image_emb.norm(dim=-1, keepdim=True)
        class_emb = []
        for prompts in classes.values():
            text = model.encode_text(tokenizer(list(prompts)))
            text = (text / text.norm(dim=-1, keepdim=True)).mean(0)
            class_emb.append(text / text.norm())
        logits = model.logit_scale.exp() * image_emb @ torch.stack(class_emb).T
        probs = logits.softmax(-1).numpy()
    names = list(classes)
    return [names[k] for k in probs.argmax(1)], probs.max(1)


def test_zero_shot_labels_match_open_clip(table_dir, tmp_path, ray_local):
    out = tmp_path / "labelled"
    code = main([
        "label-categories", str(table_dir["table"]), "--images", str(table_dir["images"]),
        "--out", str(out), "--clip-model", "open_clip:tiny", "--classes", CLASSES,
        "--batch-size", "4",
    ])
    assert code == 0
    labelled = open_table(out).to_table()
    original = open_table(table_dir["table"]).to_table()
    assert labelled.column("image_id").to_pylist() == table_dir["ids"]  # every row, in order
    assert labelled.column("vertices").equals(original.column("vertices"))
    assert labelled.column("roi_FFA").equals(original.column("roi_FFA"))
    labels = labelled.column("category").to_pylist()
    probs = labelled.column("category_probability").to_pylist()
    assert labels[-1] is None and probs[-1] is None  # the missing image
    expected_labels, expected_probs = _expected_labels(
        table_dir["images"], table_dir["ids"][:-1], parse_classes(CLASSES)
    )
    assert labels[:-1] == expected_labels
    np.testing.assert_allclose(probs[:-1], expected_probs, rtol=1e-4)
    metadata = read_metadata(pq.read_schema(out / "part-1.parquet"))
    assert metadata["encoder"]["spec"] == "clip-probe:tiny"
    assert metadata["annotations"][-1]["classes"]["face"] == ["a face"]
    errors = pd.read_parquet(out / "_errors" / "label-categories.parquet")
    assert errors["image_id"].tolist() == ["object/missing.jpg"]
    assert (out / "_errors" / "score.parquet").exists()  # earlier failures are kept

    # the column now holds labels: replacing them needs --overwrite
    again = ["label-categories", str(out), "--out", str(tmp_path / "again"), "--csv", "x.csv"]
    assert main(again) == 2


def test_labels_from_csv(table_dir, tmp_path):
    truth = table_dir["truth"]
    csv = tmp_path / "labels.csv"
    truth[["image_id", "category"]].iloc[:5].to_csv(csv, index=False)  # last real image unlabelled
    out = tmp_path / "from_csv"
    assert main(["label-categories", str(table_dir["table"]), "--csv", str(csv), "--out", str(out)]) == 0
    labelled = open_table(out).to_table().to_pandas()
    assert labelled["image_id"].tolist() == table_dir["ids"]
    assert labelled["category"].iloc[:5].tolist() == truth["category"].iloc[:5].tolist()
    assert labelled["category"].iloc[5:].isna().all()
    # writing over the input, or into a folder that already holds a table, is refused
    assert main(["label-categories", str(table_dir["table"]), "--csv", str(csv),
                 "--out", str(table_dir["table"])]) == 2
    assert main(["label-categories", str(table_dir["table"]), "--csv", str(csv), "--out", str(out)]) == 2


def test_parse_classes():
    assert parse_classes(None) == DEFAULT_CLASSES
    assert parse_classes("scene=a|b , object") == {
        "scene": ("a", "b"), "object": ("a photo of a object.",)
    }
    for bad in ("scene=a", "scene=a,scene=b", "=x,y=z"):
        with pytest.raises(InputError):
            parse_classes(bad)
