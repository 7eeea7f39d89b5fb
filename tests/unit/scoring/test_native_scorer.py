"""The scorer of encoders that read their own inputs (TRIBE v2): stills at their own size, videos
read with upstream's frame timing, time courses kept; no Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from neuromem.cortex.reduce import RoiReducer
from neuromem.cortex.rois import load_roi_set
from neuromem.data import list_rows, synthetic
from neuromem.data.batch import decode_for, decode_rows
from neuromem.data.decode import decode_image
from neuromem.data.readers import load_payloads
from neuromem.data.schema import rows_to_arrow
from neuromem.encoders import load_encoder
from neuromem.errors import InputError
from neuromem.scoring.batch import BatchScorer
from neuromem.scoring.timecourse import score_table_timecourses, timecourse_column


@pytest.fixture(scope="module")
def reducer():
    return RoiReducer(load_roi_set("default"))


@pytest.fixture(scope="module")
def tribe():
    return load_encoder("tribev2:tiny", "cpu", protocol="fast")


def loaded(dataset, root):
    return load_payloads(rows_to_arrow(list_rows(dataset, root)))


def test_stills_reach_the_processor_at_their_own_size(tmp_path, tribe, reducer):
    synthetic.write_image_folder(tmp_path, n_images=3, seed=4, image_size=72)
    rows = loaded("folder", tmp_path)
    scorer = BatchScorer(tribe, reducer, keep_vertices=True)
    assert scorer.input_size is None
    decoded = decode_for(scorer, rows)
    assert [p.shape[:2] for p in decoded.pixels] == [(72, 72)] * 3
    table = scorer(decoded)
    native = [decode_image(p, m, None) for p, m in zip(rows.column("payload").to_pylist(),
                                                          rows.column("media").to_pylist(),
                                                          strict=True)]
    with torch.no_grad():
        expected_bv = tribe.forward_stills(native)
        squared_bv = tribe.forward_stills([decode_image(b, m, 32)
                                           for b, m in zip(rows.column("payload").to_pylist(),
                                                           rows.column("media").to_pylist(),
                                                           strict=True)])
    rois = np.stack([table.column(c).to_numpy() for c in reducer.column_names], axis=1)
    np.testing.assert_allclose(rois, reducer(expected_bv).numpy(), rtol=1e-5, atol=1e-6)
    # the lossy square decode every other encoder gets would change the result
    assert not np.allclose(reducer(squared_bv).numpy(), rois, atol=1e-6)


def test_videos_are_read_as_upstream_and_keep_their_time_course(tmp_path, tribe, reducer):
    synthetic.write_memento(tmp_path, n_videos=2, seed=3, n_frames=20, side=48, fps=8)
    rows = loaded("memento10k", tmp_path)
    scorer = BatchScorer(tribe, reducer, keep_timecourse=True)
    decoded = decode_for(scorer, rows)
    table = scorer(decoded)
    payloads = rows.column("payload").to_pylist()
    with torch.no_grad():
        courses_tv = [tribe.video_timecourse(tribe.read_video(p)) for p in payloads]
    assert [len(c) for c in courses_tv] == [3, 3]  # 20 frames at 8 fps: 2.5 s, 3 fMRI steps
    stored = score_table_timecourses(
        pa.table({"image_id": decoded.rows.column("image_id"),
                  **{c: table.column(c) for c in table.column_names}}), step_seconds=1.0)
    for course_tv, course_tr in zip(courses_tv, stored.responses, strict=True):
        np.testing.assert_allclose(course_tr, reducer(course_tv).numpy(), rtol=1e-5, atol=1e-6)
    rois = np.stack([table.column(c).to_numpy() for c in reducer.column_names], axis=1)
    np.testing.assert_allclose(rois, stored.means(), rtol=1e-5, atol=1e-6)
    assert stored.roi_names == list(reducer.names)


def test_a_still_has_no_time_course_and_a_bad_video_is_a_failed_row(tmp_path, tribe, reducer):
    synthetic.write_memento(tmp_path, n_videos=2, seed=3, n_frames=8, side=48)
    rows = loaded("memento10k", tmp_path)
    broken = rows.set_column(rows.schema.get_field_index("payload"), "payload",
                             pa.array([b"\x00\x00\x00\x18ftypmp42", rows["payload"][1].as_py()]))
    decoded = decode_rows(broken, None, 1, read_video=tribe.read_video)
    assert decoded.rows.num_rows == 1 and decoded.errors.num_rows == 1
    assert timecourse_column([None, np.ones((2, 3))], 3).to_pylist()[0] is None
    with pytest.raises(InputError, match="predicts no time course"):
        BatchScorer(load_encoder("clip-probe:tiny", "cpu"), reducer, keep_timecourse=True)
