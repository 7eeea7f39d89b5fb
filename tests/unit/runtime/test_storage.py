"""The storage layer on local paths and file:// URIs: atomic writes, parts, JSON safety, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.errors import InputError
from neuromem.runtime import storage


@pytest.fixture(params=["path", "uri"])
def location(request, tmp_path):
    """The same folder as a local path and as a file:// URI."""
    return str(tmp_path / "out") if request.param == "path" else f"file://{tmp_path}/out"


def test_files_round_trip_through_paths_and_uris(location, tmp_path):
    target = storage.join_uri(location, "sub", "a.txt")
    storage.write_text(target, "hello")
    assert storage.read_text(target) == "hello"
    assert (tmp_path / "out" / "sub" / "a.txt").read_text() == "hello"
    assert storage.exists(target) and storage.is_dir(storage.join_uri(location, "sub"))
    assert storage.list_files(location) == ["sub/a.txt"]
    assert storage.list_files(location, (".json",)) == []
    # the rename left no temporary file behind
    assert [p.name for p in (tmp_path / "out" / "sub").iterdir()] == ["a.txt"]


def test_json_is_always_valid_json(location):
    value = {"r": np.float32(0.5), "nan": float("nan"), "inf": np.inf, "v": np.arange(3),
             "t": (1, 2), "nested": [{"x": np.int64(7)}]}
    target = storage.join_uri(location, "r.json")
    storage.write_json(target, value)
    text = storage.read_text(target)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"r": 0.5, "nan": None, "inf": None, "v": [0, 1, 2], "t": [1, 2],
                                "nested": [{"x": 7}]}
    assert storage.read_json(target)["r"] == 0.5
    assert math.isnan(float("nan")) and storage.to_jsonable(float("-inf")) is None


def test_missing_and_unwritable_locations_are_one_line_input_errors(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        storage.read_bytes(tmp_path / "nope.bin")
    with pytest.raises(InputError, match="is a folder"):
        storage.read_bytes(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for bad in (blocker / "out", "/proc/neuromem-not-writable"):
        with pytest.raises(InputError, match="cannot write to") as info:
            storage.check_writable(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="cannot open"):
        storage.resolve("nosuchscheme://bucket/key")
    storage.check_writable(tmp_path / "fresh")  # creates it, leaves nothing inside
    assert list((tmp_path / "fresh").iterdir()) == []


def test_part_writer_names_parts_by_keys_and_resumes(location, tmp_path):
    writer = storage.PartWriter(location)
    writer.prepare()
    table = pa.table({"image_id": ["b", "a"], "x": [1.0, 2.0]})
    name = writer.write(table)
    assert name == storage.part_name(["a", "b"]) == writer.write(table.take([1, 0]))  # same keys
    assert writer.write(table.slice(0, 0)) is None
    writer.write(pa.table({"image_id": ["c"], "error": ["bad"]}), errors=True)
    assert writer.written_keys() == {"a", "b"} and writer.written_keys(errors=True) == {"c"}
    stale = tmp_path / "out" / ".tmp-123-part-x.parquet"
    stale.write_bytes(b"half")
    assert writer.prepare() == 1 and not stale.exists()
    assert writer.delete_parts() == 1 and writer.written_keys() == set()


def test_raw_binary_columns_are_stored_plain(tmp_path):
    table = pa.table({"image_id": ["a"], "raw": pa.array([b"x" * 16], pa.binary(16)),
                      "x": [1.0]})
    writer = storage.PartWriter(tmp_path)
    path = tmp_path / writer.write(table)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    raw = meta.column(1)
    assert raw.compression == "UNCOMPRESSED" and not raw.has_dictionary_page
    assert raw.statistics is None or not raw.statistics.has_min_max
    assert meta.column(0).compression == "ZSTD"


def test_staged_output_publishes_a_local_folder_to_a_uri(tmp_path):
    from neuromem.runtime.storage import staged_output

    target = f"file://{tmp_path / 'remote'}"
    with staged_output(target) as folder:
        assert not str(folder).startswith(str(tmp_path))  # a staging folder, not the target
        (folder / "figures").mkdir()
        (folder / "figures" / "a.png").write_bytes(b"png")
        (folder / "results.json").write_text("{}")
    assert (tmp_path / "remote" / "figures" / "a.png").read_bytes() == b"png"
    assert (tmp_path / "remote" / "results.json").read_text() == "{}"
    with staged_output(tmp_path / "local") as folder:  # a local target is used directly
        assert folder == tmp_path / "local" and folder.is_dir()
