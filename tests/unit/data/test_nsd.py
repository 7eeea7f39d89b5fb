"""NSD listing on its release layout; payloads are the HDF5 brick's exact pixels."""

from __future__ import annotations

import numpy as np
import pytest

from neuromem.data import list_rows, load_payloads, synthetic
from neuromem.data.decode import decode_image
from neuromem.data.schema import rows_to_arrow
from neuromem.errors import InputError


@pytest.fixture(scope="module")
def nsd_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    return root, synthetic.write_nsd(root, n_images=10, seed=6)


def test_nsd_listing(nsd_root):
    root, truth = nsd_root
    rows = list_rows("nsd", root)
    assert len(rows) == 10
    assert rows["image_id"].tolist() == [f"nsd-{i:05d}" for i in range(1, 11)]  # 1-based
    assert rows["nsdId"].tolist() == list(range(10))
    np.testing.assert_array_equal(rows["cocoId"], truth["cocoId"])
    assert rows["memorability"].isna().all() and rows["split"].isna().all()
    assert rows["source"][3].endswith("nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5#3")
    assert rows["shared1000"].dtype == bool and rows["subject8"].dtype == bool
    assert {"subject1_rep0", "subject8_rep2", "cocoSplit"} <= set(rows.columns)

    shared = list_rows("nsd", root, split="shared1000")
    assert shared["nsdId"].tolist() == truth.index[truth["shared1000"]].tolist()
    seen = list_rows("nsd", root, split="subject3")
    assert seen["nsdId"].tolist() == truth.index[truth["subject3"] == 1].tolist()
    assert (seen["split"] == "subject3").all()
    with pytest.raises(InputError, match="shared1000"):
        list_rows("nsd", root, split="subject9")


def test_nsd_payloads_are_exact_brick_rows(nsd_root):
    root, truth = nsd_root
    rows = list_rows("nsd", root)
    rows = rows[rows["image_id"] != "nsd-00002"].iloc[::-1]  # unsorted brick indices
    loaded = load_payloads(rows_to_arrow(rows)).to_pandas()
    assert len(loaded) == 9 and "nsd-00002" not in set(loaded["image_id"])
    assert (loaded["media"] == "array:425x425x3").all()
    for row in loaded.itertuples():
        kind = truth["category"][row.nsdId]
        written = synthetic.sample_image(kind, np.random.default_rng([6, row.nsdId]), 425)
        np.testing.assert_array_equal(decode_image(row.payload, row.media), written)
