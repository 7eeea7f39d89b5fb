"""``neuromem predict`` on real image files, good and bad."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from neuromem.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Image files in several modes that all hold the same picture, plus broken files."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    gray_hw = rng.integers(0, 256, size=(48, 40), dtype=np.uint8)
    rgb_hw3 = np.repeat(gray_hw[..., None], 3, axis=2)
    paths = {}
    paths["rgb"] = folder / "rgb.png"
    Image.fromarray(rgb_hw3).save(paths["rgb"])
    paths["gray"] = folder / "gray.png"
    Image.fromarray(gray_hw).save(paths["gray"])
    paths["rgba"] = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb_hw3, np.full_like(gray_hw, 255)])).save(paths["rgba"])
    paths["sixteen"] = folder / "sixteen.png"
    Image.fromarray(gray_hw.astype(np.uint16) * 257).save(paths["sixteen"])
    assert Image.open(paths["sixteen"]).mode.startswith("I")
    paths["cmyk"] = folder / "cmyk.jpg"
    Image.fromarray(rng.integers(0, 256, size=(30, 50, 3), dtype=np.uint8)).convert("CMYK").save(
        paths["cmyk"], quality=95)
    jpeg = io.BytesIO()
    Image.fromarray(rgb_hw3).save(jpeg, format="JPEG")
    paths["truncated"] = folder / "truncated.jpg"
    paths["truncated"].write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    paths["text"] = folder / "notes.jpg"
    paths["text"].write_text("not an image")
    paths["huge"] = folder / "huge.png"
    Image.new("1", (12_000, 9_000)).save(paths["huge"])
    paths["missing"] = folder / "missing.png"
    return paths


GOOD = ("rgb", "gray", "rgba", "sixteen", "cmyk")
BAD = ("truncated", "text", "huge", "missing")


def test_json_output_and_bad_files(files, capsys):
    argv = ["predict", *(str(files[k]) for k in GOOD + BAD), "--encoder", "clip-probe:tiny", "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["image"] for r in records] == [str(files[k]) for k in GOOD]
    assert all(r["encoder"] == "clip-probe:tiny" and r["trained"] is False for r in records)
    assert all(r["protocol"] is None for r in records)  # the CLIP probe has no protocols
    rois = {k: r["rois"] for k, r in zip(GOOD, records, strict=True)}
    assert {"FFA", "PPA", "RSC", "lh_V1"} <= set(rois["rgb"])
    assert all(np.isfinite(v) for r in rois.values() for v in r.values())
    # the same picture in other modes converts to the same pixels, hence the same responses
    for kind in ("gray", "rgba", "sixteen"):
        assert rois[kind] == pytest.approx(rois["rgb"], abs=1e-6)
    assert rois["cmyk"] != pytest.approx(rois["rgb"], abs=1e-3)
    error_lines = [line for line in captured.err.splitlines() if line.startswith("neuromem predict:")]
    assert len(error_lines) == len(BAD)
    for kind, line in zip(BAD, error_lines, strict=True):
        assert str(files[kind]) in line
    assert "untrained" in captured.err


def test_table_and_plot(files, tmp_path, capsys):
    out = tmp_path / "map.png"
    argv = ["predict", str(files["cmyk"]), "--encoder", "clip-probe:tiny", "--plot", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert "UNTRAINED" in table[0]
    assert table[1].split() == ["ROI", "cmyk.jpg"]
    ffa = next(line for line in table if line.startswith("FFA "))
    assert np.isfinite(float(ffa.split()[1]))
    with Image.open(out) as image:
        assert image.size[0] > 300 and image.size[1] > 200


def test_unwritable_plot_is_one_line_before_any_prediction(files, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for bad in (blocker / "map.png", "/proc/neuromem/map.png"):  # not a folder; read-only
        argv = ["predict", str(files["rgb"]), "--encoder", "clip-probe:tiny", "--plot", str(bad)]
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""  # nothing predicted
        assert "cannot write to" in captured.err and len(captured.err.strip().splitlines()) == 1


def test_protocol_is_chosen_and_recorded(files, capsys):
    from neuromem.commands.predict import read_image
    from neuromem.cortex.rois import load_roi_set
    from neuromem.encoders import load_encoder

    image = str(files["rgb"])
    records = {}
    for protocol in ("paper", "static", "fast"):
        argv = ["predict", image, "--encoder", "tribev2:tiny", "--protocol", protocol, "--json"]
        assert main(argv) == 0
        records[protocol] = json.loads(capsys.readouterr().out)
        assert records[protocol]["protocol"] == protocol
    assert main(["predict", image, "--encoder", "tribev2:tiny", "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["protocol"] == "paper" and default["rois"] == records["paper"]["rois"]
    # the JSON holds what the encoder with that protocol predicts for the image
    encoder = load_encoder("tribev2:tiny", protocol="static")
    with torch.no_grad():  # the uint8 image at its own size into the video processor
        vertices = encoder.forward_stills([read_image(files["rgb"])])[0].numpy()
    ffa_vertices = load_roi_set("default").indices["FFA"]
    assert records["static"]["rois"]["FFA"] == pytest.approx(
        float(vertices[ffa_vertices].mean()), abs=1e-5)
    assert records["static"]["rois"] != pytest.approx(records["paper"]["rois"], abs=1e-6)
    assert main(["predict", image, "--encoder", "tribev2:tiny", "--protocol", "fast"]) == 0
    assert "protocol fast" in capsys.readouterr().out.splitlines()[0]


def test_protocol_errors_are_one_line(files, capsys):
    image = str(files["rgb"])
    assert main(["predict", image, "--encoder", "clip-probe:tiny", "--protocol", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no still-image protocols" in err and len(err.splitlines()) == 1
    assert main(["predict", image, "--encoder", "tribev2:tiny", "--protocol", "movie"]) == 2
    assert "paper, static, fast" in capsys.readouterr().err
