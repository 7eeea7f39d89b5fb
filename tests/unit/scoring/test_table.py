"""The score-table format: vertex encoding, reading back, metadata, ROI columns, streaming."""

from __future__ import annotations

import json
import mmap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import neuromem
from neuromem.errors import InputError, UnknownNameError, VertexCountError
from neuromem.scoring import table as st

V = 20484


def _write_table(root, responses_nv, *, n_files=2, row_group_size=7, metadata=None):
    """Write a small score table as several files with small row groups, plus an errors/ dir."""
    root.mkdir(parents=True, exist_ok=True)
    n = len(responses_nv)
    bounds = np.linspace(0, n, n_files + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        tbl = pa.table(
            {
                "image_id": [f"img{j:03d}" for j in range(lo, hi)],
                "split": ["test" if j % 3 == 0 else "train" for j in range(lo, hi)],
                "roi_FFA": pa.array(responses_nv[lo:hi, :10].mean(1), pa.float32()),
                "roi_lh_PPA": pa.array(responses_nv[lo:hi, 10:20].mean(1), pa.float32()),
                st.VERTICES_COLUMN: st.vertices_to_arrow(responses_nv[lo:hi]),
            }
        )
        if metadata is not None:
            tbl = st.write_metadata(tbl, metadata)
        pq.write_table(tbl, root / f"part-{i:05d}.parquet", row_group_size=row_group_size)
    (root / st.ERRORS_DIR).mkdir()
    pq.write_table(
        pa.table({"image_id": ["bad"], "source": ["x"], "stage": ["decode"], "error": ["e"]}),
        root / st.ERRORS_DIR / "part-00000.parquet",
    )


@pytest.fixture(scope="module")
def responses_nv():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((40, V)) * 3).astype(np.float16)
    values[5, 7] = np.inf
    values[6, 8] = np.nan
    return values


def test_vertices_to_arrow_is_raw_little_endian_float16(responses_nv):
    arr = st.vertices_to_arrow(responses_nv[:3].astype(np.float32))
    assert arr.type == pa.binary(40968)
    assert len(arr) == 3
    assert arr[1].as_py() == responses_nv[1].astype("<f2").tobytes()


def test_vertices_to_arrow_rejects_wrong_vertex_count():
    with pytest.raises(VertexCountError, match="20484"):
        st.vertices_to_arrow(np.zeros((2, 20480), np.float16))
    with pytest.raises(VertexCountError, match="2-D"):
        st.vertices_to_arrow(np.zeros(V, np.float16))


def test_read_vertices_round_trip_exact_and_skips_errors_dir(tmp_path, responses_nv):
    _write_table(tmp_path / "t", responses_nv)
    back = neuromem.read_vertices(tmp_path / "t")
    assert back.dtype == np.float16 and back.shape == (40, V)
    # bit-exact, NaN and inf included
    np.testing.assert_array_equal(back.view(np.uint16), responses_nv.view(np.uint16))
    as32 = st.read_vertices(str(tmp_path / "t"), dtype=np.float32)
    np.testing.assert_array_equal(as32, responses_nv.astype(np.float32))


def _memory_owner(array):
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array.obj if isinstance(array, memoryview) else array


def test_large_reads_avoid_numpy_huge_page_allocation(tmp_path, responses_nv, monkeypatch):
    """Large outputs live in anonymous mmap memory (4 KiB pages), not numpy's madvised huge
    pages, which made a 58,000-row read 2-3x slower; values are the same."""
    _write_table(tmp_path / "t", responses_nv)
    small = neuromem.read_vertices(tmp_path / "t")
    assert isinstance(_memory_owner(small), np.ndarray)  # under LARGE_ARRAY_BYTES: numpy
    monkeypatch.setattr(st, "LARGE_ARRAY_BYTES", 1024)
    for back in (neuromem.read_vertices(tmp_path / "t"),
                 neuromem.read_vertices(tmp_path / "t", rows=(3, 30), dtype=np.float32)):
        assert isinstance(_memory_owner(back), mmap.mmap) and back.flags.writeable
    np.testing.assert_array_equal(back, responses_nv[3:30].astype(np.float32))
    np.testing.assert_array_equal(neuromem.read_vertices(tmp_path / "t").view(np.uint16),
                                  responses_nv.view(np.uint16))


def test_read_vertices_slice_spans_files_and_row_groups(tmp_path, responses_nv):
    _write_table(tmp_path / "t", responses_nv, n_files=3, row_group_size=4)
    np.testing.assert_array_equal(
        st.read_vertices(tmp_path / "t", rows=slice(9, 31)).view(np.uint16),
        responses_nv[9:31].view(np.uint16),
    )
    np.testing.assert_array_equal(
        st.read_vertices(tmp_path / "t", rows=(-3, None)).view(np.uint16),
        responses_nv[-3:].view(np.uint16),
    )
    assert st.read_vertices(tmp_path / "t", rows=slice(50, 60)).shape == (0, V)
    with pytest.raises(InputError, match="step"):
        st.read_vertices(tmp_path / "t", rows=slice(0, 10, 2))


def test_read_vertices_filters_and_uri(tmp_path, responses_nv):
    _write_table(tmp_path / "t", responses_nv)
    test_rows = [j for j in range(40) if j % 3 == 0]
    expected = responses_nv[test_rows].view(np.uint16)
    got = st.read_vertices(tmp_path / "t", filters=[("split", "=", "test")])
    np.testing.assert_array_equal(got.view(np.uint16), expected)
    got = st.read_vertices(
        f"file://{tmp_path / 't'}", filters=pc.field("split") == "test", rows=(1, 4)
    )
    np.testing.assert_array_equal(got.view(np.uint16), expected[1:4])
    got = st.read_vertices(str(tmp_path / "t"), filesystem=pafs.LocalFileSystem(), rows=(0, 2))
    np.testing.assert_array_equal(got.view(np.uint16), responses_nv[:2].view(np.uint16))


def test_decode_vertices_handles_sliced_chunks_and_nulls(responses_nv):
    arr = st.vertices_to_arrow(responses_nv[:6])
    chunked = pa.chunked_array([arr.slice(1, 2), arr.slice(4, 2)])
    got = st.decode_vertices(chunked)
    np.testing.assert_array_equal(got.view(np.uint16), responses_nv[[1, 2, 4, 5]].view(np.uint16))
    with_null = pa.concat_arrays([arr.slice(0, 1), pa.nulls(1, st.VERTICES_TYPE)])
    got = st.decode_vertices(with_null, dtype=np.float32)
    assert np.isnan(got[1]).all() and np.array_equal(got[0], responses_nv[0].astype(np.float32))


def test_read_vertices_errors(tmp_path, responses_nv):
    with pytest.raises(InputError, match="cannot open score table"):
        st.read_vertices(tmp_path / "missing")
    pq.write_table(pa.table({"roi_V1": [1.0]}), tmp_path / "noverts.parquet")
    with pytest.raises(UnknownNameError, match="--vertices"):
        st.read_vertices(tmp_path / "noverts.parquet")
    pq.write_table(
        pa.table({"vertices": pa.array([b"\0" * 10], pa.binary(10))}), tmp_path / "bad.parquet"
    )
    with pytest.raises(InputError, match="fixed_size_binary"):
        st.read_vertices(tmp_path / "bad.parquet")


def test_metadata_round_trip_keeps_other_keys(tmp_path, responses_nv):
    meta = st.build_metadata(
        encoder={"spec": "clip-probe:tiny", "weights_sha256": "ab" * 32, "trained": False},
        atlas="HCP-MMP1",
        rois={"FFA": {"labels": ["FFC"]}},
        command=["neuromem", "score", "x y"],
    )
    assert meta["command"] == "neuromem score 'x y'"
    assert meta["neuromem_version"] == neuromem.__version__
    assert pd.Timestamp(meta["created"]).tzinfo is not None
    df = pd.DataFrame({"roi_V1": [1.0, 2.0]})
    tbl = st.write_metadata(pa.Table.from_pandas(df), meta)
    assert b"pandas" in tbl.schema.metadata
    _write_table(tmp_path / "t", responses_nv, metadata=meta)
    assert st.read_metadata(tmp_path / "t") == json.loads(json.dumps(meta))
    assert st.read_metadata(pq.read_schema(next((tmp_path / "t").glob("*.parquet")))) == meta
    assert st.read_metadata(pa.schema([("a", pa.int8())])) == {}
    with pytest.raises(InputError, match="JSON"):
        st.write_metadata(pa.schema([("a", pa.int8())]), {"x": object()})


def test_roi_columns_from_every_container(responses_nv):
    names = ["image_id", "roi_FFA", "memorability", "roi_lh_PPA", "vertices"]
    df = pd.DataFrame({n: [0] for n in names})
    assert st.roi_columns(df) == ["roi_FFA", "roi_lh_PPA"]
    assert st.roi_columns(pa.Table.from_pandas(df)) == ["roi_FFA", "roi_lh_PPA"]
    assert st.roi_columns(pa.Table.from_pandas(df).schema) == ["roi_FFA", "roi_lh_PPA"]
    assert st.roi_columns(names) == ["roi_FFA", "roi_lh_PPA"]


def test_iter_batches_streams_in_file_order(tmp_path, responses_nv):
    _write_table(tmp_path / "t", responses_nv, n_files=2, row_group_size=6)
    batches = list(st.iter_batches(tmp_path / "t", columns=["image_id", "vertices"], batch_size=5))
    assert all(b.num_rows <= 5 for b in batches) and len(batches) > 2
    ids = [i for b in batches for i in b.column("image_id").to_pylist()]
    assert ids == [f"img{j:03d}" for j in range(40)]
    stacked = np.concatenate([st.decode_vertices(b.column("vertices")) for b in batches])
    np.testing.assert_array_equal(stacked.view(np.uint16), responses_nv.view(np.uint16))
    assert len(st.table_files(tmp_path / "t")) == 2
    with pytest.raises(UnknownNameError, match="memorability"):
        next(st.iter_batches(tmp_path / "t", columns=["memorability"]))
