"""The raw-array table codec (arrays_to_arrow / arrays_from_arrow): layer features, pixels, vertices."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.errors import InputError
from neuromem.runtime.storage import parquet_write_options
from neuromem.scoring.table import (
    arrays_from_arrow,
    arrays_to_arrow,
    decode_vertices,
    vertices_to_arrow,
)


def test_raw_arrays_roundtrip_through_parquet_chunks_and_slices(tmp_path):
    values = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    column = pa.chunked_array([arrays_to_arrow(values[:2], "<f4"),
                               arrays_to_arrow(values[2:], "<f4")])
    assert column.type == pa.binary(28)
    np.testing.assert_array_equal(arrays_from_arrow(column, 7, "<f4"), values)
    np.testing.assert_array_equal(
        arrays_from_arrow(column.combine_chunks().slice(1, 3), 7, "<f4"), values[1:4])
    table = pa.table({"x": column})
    pq.write_table(table, tmp_path / "x.parquet", **parquet_write_options(table.schema))
    back = pq.read_table(tmp_path / "x.parquet").column("x")
    np.testing.assert_array_equal(arrays_from_arrow(back, 7, "<f4"), values)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    decoded = arrays_from_arrow(arrays_to_arrow(pixels, np.uint8), 48, np.uint8)
    np.testing.assert_array_equal(decoded.reshape(3, 4, 4, 3), pixels)


def test_raw_arrays_refuse_wrong_widths_and_nulls():
    column = arrays_to_arrow(np.zeros((2, 3), np.float32), "<f4")
    with pytest.raises(InputError, match="fixed_size_binary\\[16\\]"):
        arrays_from_arrow(column, 4, "<f4")
    nulls = pa.array([b"\0" * 12, None], pa.binary(12))
    with pytest.raises(InputError, match="1 null rows"):
        arrays_from_arrow(nulls, 3, "<f4")


def test_vertices_use_the_same_codec():
    responses_bv = np.random.default_rng(2).standard_normal((3, 20484)).astype(np.float16)
    assert vertices_to_arrow(responses_bv).equals(arrays_to_arrow(responses_bv, "<f2"))
    np.testing.assert_array_equal(decode_vertices(vertices_to_arrow(responses_bv)), responses_bv)
