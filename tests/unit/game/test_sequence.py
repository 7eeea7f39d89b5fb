"""Study files and server-side sequences: every constraint of the LaMem protocol holds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import yaml
from PIL import Image

from neuromem.errors import InputError
from neuromem.game.sequence import build_sequence, choose_targets
from neuromem.game.study import load_study, make_study

SEQUENCE = {"length": 40, "targets": 8, "target_lag": [9, 14], "vigilance": 4,
            "vigilance_lag": [1, 3]}


def _images(folder, n_pairs=10, n_fillers=30):
    rng = np.random.default_rng(0)
    images = []
    for kind, count in (("base", n_pairs), ("lora", n_pairs), ("filler", n_fillers)):
        for k in range(count):
            path = folder / kind / f"{k:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            image = {"image_id": f"{kind}/{k:02d}", "path": path}
            if kind != "filler":
                image.update(condition=kind, pair=f"p{k:02d}")
            images.append(image)
    return images


@pytest.fixture()
def study(tmp_path):
    return make_study(tmp_path / "study.yaml", name="t", images=_images(tmp_path),
                      sequence=SEQUENCE)


def test_sequences_follow_the_protocol(study):
    rng = np.random.default_rng(1)
    for _ in range(20):
        targets = choose_targets(study.target_ids, {}, 8, rng, {i.image_id: i.pair
                                                                for i in study.images})
        trials = build_sequence(study, targets, rng)
        assert [t.position for t in trials] == list(range(40))
        shown = Counter(t.image_id for t in trials)
        kinds = {t.image_id: t.kind for t in trials}
        assert sorted(i for i, k in kinds.items() if k == "target") == sorted(targets)
        for trial in trials:
            if trial.kind in ("target", "vigilance"):
                assert shown[trial.image_id] == 2
            else:
                assert shown[trial.image_id] == 1
            if trial.repeat:
                low, high = SEQUENCE["target_lag"] if trial.kind == "target" else \
                    SEQUENCE["vigilance_lag"]
                assert low <= trial.lag <= high
                first = trials[trial.position - trial.lag]
                assert first.image_id == trial.image_id and not first.repeat
        assert sum(t.kind == "vigilance" and t.repeat for t in trials) == 4
        pairs = [study.by_id[i].pair for i in shown]
        paired = [p for p in pairs if p is not None]
        assert len(paired) == len(set(paired))  # never both twins of a pair, in any role


def test_targets_are_counterbalanced_across_participants(study):
    rng = np.random.default_rng(2)
    counts: Counter = Counter()
    pair_of = {i.image_id: i.pair for i in study.images}
    for _ in range(25):  # 25 participants x 8 targets over 20 measured images
        for image_id in choose_targets(study.target_ids, counts, 8, rng, pair_of):
            counts[image_id] += 1
    assert set(counts) == set(study.target_ids)
    # 200 / 20 = 10 each; one twin per participant can force a spread of 2
    assert max(counts.values()) - min(counts.values()) <= 2


def test_bad_study_files_fail_with_one_clear_line(study, tmp_path):
    raw = yaml.safe_load((tmp_path / "study.yaml").read_text())
    cases = [
        ({**raw, "images": raw["images"] + [raw["images"][0]]}, "appears twice"),
        ({**raw, "images": raw["images"] + [{"image_id": "x", "path": "nope.png"}]}, "not found"),
        ({**raw, "images": raw["images"] + [{"image_id": "y", "path": "study.yaml"}]},
         "is not one of"),
        ({**raw, "sequence": {**SEQUENCE, "length": 10}}, "cannot hold"),
        ({**raw, "sequence": {**SEQUENCE, "length": 60, "targets": 11}},
         "only 10 can be drawn"),
        ({**raw, "sequence": {**SEQUENCE, "target_lag": [5, 2]}}, "target_lag"),
        ({**raw, "timing": {"image_ms": 600, "flash": 1}}, "unknown 'timing' keys"),
        ({"name": "x"}, "needs 'name' and a list of 'images'"),
        # 10 pairs and 14 fillers: 24 showable images, 28 needed (both twins would be needed)
        ({**raw, "images": raw["images"][:34], "sequence": {**SEQUENCE, "length": 40}},
         "can show 24"),
    ]
    for document, message in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(document))
        with pytest.raises(InputError, match=message):
            load_study(path)
    assert load_study(tmp_path / "study.yaml").timing.image_ms == 600  # the defaults


@pytest.mark.parametrize("n_fillers", [21, 22])
def test_a_study_loads_exactly_when_its_sequences_can_be_built(tmp_path, n_fillers):
    """A participant sees 44 - 8 targets - 4 vigilance = 32 distinct images, at most one of each
    of the 10 pairs: 21 fillers are too few (31), 22 are enough, and then every draw builds."""
    images = _images(tmp_path, n_fillers=n_fillers)
    sequence = {**SEQUENCE, "length": 44}
    if n_fillers == 21:
        with pytest.raises(InputError, match="can show 31"):
            make_study(tmp_path / "study.yaml", name="t", images=images, sequence=sequence)
        return
    study = make_study(tmp_path / "study.yaml", name="t", images=images, sequence=sequence)
    pair_of = {i.image_id: i.pair for i in study.images}
    rng = np.random.default_rng(0)
    for _ in range(5):
        trials = build_sequence(study, choose_targets(study.target_ids, {}, 8, rng, pair_of), rng)
        assert len({t.image_id for t in trials}) == 32
        paired = {t.image_id for t in trials if pair_of[t.image_id]}
        assert len({pair_of[i] for i in paired}) == len(paired)  # never both twins
