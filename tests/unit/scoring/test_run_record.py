"""A run's output folder (neuromem.scoring.output.prepare_run): resume, refuse, overwrite."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.errors import InputError
from neuromem.runtime.storage import remove, write_parquet
from neuromem.scoring.output import RUN_RECORD, prepare_run


def test_rerun_resumes_refuses_or_overwrites(tmp_path):
    out = f"file://{tmp_path}/run"
    settings = {"network": "timm:resnet18", "seed": 0, "roi": ["FFA"]}
    assert prepare_run(out, settings, overwrite=False) is False
    assert json.loads((tmp_path / "run" / RUN_RECORD).read_text())["settings"] == settings
    assert prepare_run(out, dict(settings), overwrite=False) is True  # same settings: resume
    write_parquet(f"{out}/result.parquet", pa.table({"x": [1, 2]}))
    assert pq.read_table(tmp_path / "run" / "result.parquet").column("x").to_pylist() == [1, 2]
    with pytest.raises(InputError) as error:
        prepare_run(out, {**settings, "seed": 1}, overwrite=False)
    message = str(error.value)
    assert "\n" not in message and "seed: 0 → 1" in message and "--overwrite" in message
    assert prepare_run(out, {**settings, "seed": 1}, overwrite=True,
                       outputs=("result.parquet",)) is False
    assert not (tmp_path / "run" / "result.parquet").exists()
    assert prepare_run(out, {**settings, "seed": 1}, overwrite=False) is True


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(InputError) as error:
        prepare_run(str(tmp_path / "file" / "run"), {}, overwrite=False)
    assert "\n" not in str(error.value) and "choose another --out" in str(error.value)


def test_remove_files_and_folders(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f.txt").write_text("x")
    (tmp_path / "g.txt").write_text("y")
    assert remove(f"file://{tmp_path}/d") and remove(tmp_path / "g.txt")
    assert not (tmp_path / "d").exists() and not (tmp_path / "g.txt").exists()
    assert remove(tmp_path / "missing") is False
