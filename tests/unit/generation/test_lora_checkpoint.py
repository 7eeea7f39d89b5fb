"""Finding the checkpoint ``evaluate-lora --lora`` names: a checkpoint, a run, relative paths, URIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuromem.errors import InputError
from neuromem.generation.checkpoints import RUN_RECORD, find_lora_checkpoint, local_checkpoint
from neuromem.generation.draft import LORA_WEIGHT_NAME


def checkpoint(folder: Path, step: int | None) -> Path:
    folder.mkdir(parents=True)
    (folder / LORA_WEIGHT_NAME).write_bytes(f"weights {step}".encode())
    if step is not None:
        (folder / RUN_RECORD).write_text(json.dumps({"step": step}))
    return folder


@pytest.fixture
def out(tmp_path) -> Path:
    """A ``finetune --out`` folder: Ray Train's run folder with three checkpoints."""
    run = tmp_path / "out" / "ray" / "draft"
    (run / "checkpoint_manager_snapshot.json").parent.mkdir(parents=True)
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    checkpoint(run / "checkpoint_000002", 3)
    checkpoint(run / "checkpoint_000010", 11)  # later step: numeric, not by name
    checkpoint(run / "checkpoint_000009", 10)
    return tmp_path / "out"


def test_the_out_folder_gives_its_latest_checkpoint(out):
    latest = out / "ray" / "draft" / "checkpoint_000010"
    assert find_lora_checkpoint(str(out)) == str(latest)
    assert find_lora_checkpoint(str(out / "ray" / "draft")) == str(latest)
    assert find_lora_checkpoint(str(latest.parent / "checkpoint_000002")) == str(
        latest.parent / "checkpoint_000002")  # a checkpoint is taken as it is


def test_relative_paths_and_uris(out, monkeypatch):
    monkeypatch.chdir(out.parent)
    latest = out / "ray" / "draft" / "checkpoint_000010"
    assert find_lora_checkpoint("out") == str(latest)
    assert find_lora_checkpoint("out/ray/draft/checkpoint_000002") == str(
        latest.parent / "checkpoint_000002")
    uri = find_lora_checkpoint(f"file://{out}")
    assert uri == f"file://{latest}"
    with local_checkpoint(uri) as folder:
        assert folder != latest
        assert (folder / LORA_WEIGHT_NAME).read_bytes() == b"weights 11"
        assert json.loads((folder / RUN_RECORD).read_text()) == {"step": 11}
    assert not folder.exists()
    with local_checkpoint(str(latest)) as folder:
        assert folder == latest


def test_unclear_folders_are_refused(out, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        find_lora_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=f"holds no {LORA_WEIGHT_NAME}"):
        find_lora_checkpoint(str(tmp_path / "empty"))
    checkpoint(out / "ray" / "other" / "checkpoint_000000", 1)
    with pytest.raises(InputError, match="checkpoints of 2 runs"):
        find_lora_checkpoint(str(out))
