"""Time-course table: round trip through a real Parquet file, pandas view, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neuromem.errors import InputError
from neuromem.scoring.timecourse import (
    TIMECOURSE_METADATA_KEY,
    Timecourses,
    read_timecourses,
    timecourse_table,
)

ROIS = ["FFA", "PPA", "lh_V1"]


@pytest.fixture
def timecourses():
    rng = np.random.default_rng(0)
    lengths = [3, 1, 5]  # clips of 3 s, 0.4 s and 4.2 s at 1 Hz
    return Timecourses(
        image_ids=["clip_a", "clip_b", "clip_c"],
        responses=[rng.standard_normal((n, len(ROIS))).astype(np.float32) for n in lengths],
        roi_names=ROIS,
        step_seconds=1.0,
        metadata={"encoder": {"spec": "tribev2:tiny", "protocol": "paper"}},
    )


def test_parquet_round_trip(timecourses, tmp_path):
    path = tmp_path / "timecourses.parquet"
    pq.write_table(timecourse_table(timecourses), path)
    back = read_timecourses(pq.read_table(path))
    assert back.image_ids == timecourses.image_ids
    assert back.roi_names == ROIS and back.step_seconds == 1.0
    assert back.metadata == timecourses.metadata
    for got, expected in zip(back.responses, timecourses.responses, strict=True):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    # the score table's ROI columns are the means over the steps
    expected_means = np.stack([r.mean(axis=0) for r in timecourses.responses])
    np.testing.assert_allclose(back.means(), expected_means, rtol=1e-6)


def test_schema_as_documented(timecourses, tmp_path):
    path = tmp_path / "timecourses.parquet"
    pq.write_table(timecourse_table(timecourses), path)
    table = pq.read_table(path)
    assert table.column_names == ["image_id", "n_steps", "roi_FFA", "roi_PPA", "roi_lh_V1"]
    assert table.schema.field("n_steps").type == pa.int32()
    assert table.schema.field("roi_PPA").type == pa.list_(pa.float32())
    description = json.loads(table.schema.metadata[TIMECOURSE_METADATA_KEY])
    assert description["format"] == 1 and description["rois"] == ROIS
    frame = table.to_pandas()
    assert frame["n_steps"].tolist() == [3, 1, 5]
    # a reader without neuromem: the PPA course of clip_c is a plain list in its cell
    np.testing.assert_array_equal(frame.loc[2, "roi_PPA"], timecourses.responses[2][:, 1])


def test_sliced_and_concatenated_tables_decode(timecourses):
    table = pa.concat_tables([timecourse_table(timecourses).slice(1, 2),
                              timecourse_table(timecourses).slice(0, 1)])
    back = read_timecourses(table)
    assert back.image_ids == ["clip_b", "clip_c", "clip_a"]
    np.testing.assert_array_equal(back.responses[1], timecourses.responses[2])


def test_bad_inputs(timecourses):
    wrong = Timecourses(["a"], [np.zeros((2, 2), np.float32)], ROIS, 1.0)
    with pytest.raises(InputError, match=r"expected \(n_steps >= 1, 3 ROIs\)"):
        timecourse_table(wrong)
    empty = Timecourses(["a"], [np.zeros((0, 3), np.float32)], ROIS, 1.0)
    with pytest.raises(InputError, match="n_steps >= 1"):
        timecourse_table(empty)
    twice = Timecourses(["a", "a"], timecourses.responses[:2], ROIS, 1.0)
    with pytest.raises(InputError, match="unique"):
        timecourse_table(twice)
    with pytest.raises(InputError, match="not a time-course table"):
        read_timecourses(pa.table({"image_id": ["a"]}))
    table = timecourse_table(timecourses)
    with pytest.raises(InputError, match="lacks columns"):
        read_timecourses(table.drop_columns(["roi_PPA"]))
    tampered = table.set_column(1, "n_steps", pa.array([3, 2, 5], pa.int32()))
    with pytest.raises(InputError, match="n_steps values"):
        read_timecourses(tampered)
