"""DRaFT checkpoints: what ``neuromem finetune`` writes and ``neuromem evaluate-lora`` reads.

A checkpoint is a folder holding

- ``pytorch_lora_weights.safetensors``: the LoRA in diffusers format
  (``StableDiffusionPipeline.load_lora_weights(folder)`` loads it);
- ``trainer_state.pt``: optimizer state and step, for resuming;
- ``run.json``: settings, reward weights, prompts, seed, versions and per-step history
  (:func:`run_record`).

``finetune --out OUT --name NAME`` keeps the latest checkpoints of a run in
``OUT/ray/NAME/checkpoint_*``; :func:`find_lora_checkpoint` finds the latest from ``OUT``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from neuromem.errors import InputError
from neuromem.generation.draft import LORA_WEIGHT_NAME, load_lora_into, save_lora

RUN_RECORD = "run.json"
"""File of a checkpoint recording the run: settings, reward, prompts, step, history."""

TRAINER_STATE = "trainer_state.pt"
"""File of a checkpoint with the optimizer state and the step (for resuming)."""

#: Settings of the run copied into :data:`RUN_RECORD` from the training loop's config.
RECORDED_KEYS = ("model", "encoder", "seed", "global_batch", "prompts", "rois", "trunc_layer",
                 "dtype")


def run_record(config: Mapping[str, Any], *, step: int, world_size: int,
               reward: Mapping[str, Any], settings: Mapping[str, Any],
               history: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """The ``run.json`` of a checkpoint.

    Parameters
    ----------
    config : mapping
        The training loop's config (its :data:`RECORDED_KEYS` are recorded).
    step : int
        Optimisation steps done.
    world_size : int
        Data-parallel workers.
    reward, settings : mapping
        :meth:`RewardSpec.to_dict` and :meth:`DraftSettings.to_dict` (size resolved).
    history : sequence of mapping
        One record of metrics per step done.
    """
    from neuromem.runtime.provenance import versions

    return {
        "step": step, "world_size": world_size, **{k: config[k] for k in RECORDED_KEYS},
        "reward": dict(reward), "settings": dict(settings),
        "versions": versions(("diffusers", "peft", "ray")), "history": list(history),
    }


def write_checkpoint(folder: str | Path, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     record: Mapping[str, Any]) -> None:
    """Write the LoRA, the optimizer state and ``record`` (:func:`run_record`) into ``folder``."""
    save_lora(unet, folder)
    torch.save({"optimizer": optimizer.state_dict(), "step": record["step"]},
               Path(folder, TRAINER_STATE))
    Path(folder, RUN_RECORD).write_text(json.dumps(record, indent=1))


def read_checkpoint(folder: str | Path, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> tuple[int, list[dict[str, float]]]:
    """Load a checkpoint's LoRA and optimizer state; return the step and the history so far."""
    load_lora_into(unet, folder)
    saved = torch.load(Path(folder, TRAINER_STATE), map_location=device)
    optimizer.load_state_dict(saved["optimizer"])
    return int(saved["step"]), read_run_record(folder).get("history", [])


def read_run_record(folder: str | Path) -> dict[str, Any]:
    """A local checkpoint's ``run.json`` (``{}`` when it has none)."""
    path = Path(folder, RUN_RECORD)
    return json.loads(path.read_text()) if path.exists() else {}


def find_lora_checkpoint(location: str) -> str:
    """The checkpoint folder ``--lora`` means: a checkpoint, or a ``finetune --out`` folder.

    A folder holding :data:`LORA_WEIGHT_NAME` is a checkpoint. Any other folder is searched
    (recursively) for checkpoints of one run, and the latest is taken: the highest ``step`` in
    its :data:`RUN_RECORD`, then the last folder name (``checkpoint_000009``).

    Parameters
    ----------
    location : str
        Local path (relative paths are taken from the working directory) or URI.

    Returns
    -------
    str
        The checkpoint folder: an absolute local path, or a URI.

    Raises
    ------
    InputError
        Nothing there, no checkpoint inside, or checkpoints of several runs (the message lists
        them so the user can name one).
    """
    from neuromem.runtime.storage import display, exists, is_dir, join_uri, list_files, read_json

    root = join_uri(location)
    if exists(join_uri(root, LORA_WEIGHT_NAME)):
        return root
    if not is_dir(root):
        raise InputError(f"--lora {display(location)}: no such folder; expected a checkpoint "
                         f"folder holding {LORA_WEIGHT_NAME} or a finetune --out folder")
    found = [path.rpartition("/")[0] for path in list_files(root)
             if path.rpartition("/")[2] == LORA_WEIGHT_NAME]
    if not found:
        raise InputError(f"--lora {display(location)} holds no {LORA_WEIGHT_NAME}; expected a "
                         "checkpoint folder or a finetune --out folder with checkpoints")
    runs = sorted({folder.rpartition("/")[0] for folder in found})
    if len(runs) > 1:
        raise InputError(f"--lora {display(location)} holds checkpoints of {len(runs)} runs "
                         f"({', '.join(runs)}); pass the one to evaluate")

    def step(folder: str) -> int:
        record = join_uri(root, folder, RUN_RECORD)
        return int(read_json(record).get("step", -1)) if exists(record) else -1

    return join_uri(root, max(found, key=lambda folder: (step(folder), folder)))


@contextlib.contextmanager
def local_checkpoint(location: str):
    """A local folder with the checkpoint's files (a URI is copied into a temporary folder).

    Yields
    ------
    pathlib.Path
        Holding :data:`LORA_WEIGHT_NAME` and, when the checkpoint has one, :data:`RUN_RECORD`.
    """
    import tempfile

    from neuromem.runtime.storage import exists, is_uri, join_uri, read_bytes

    if not is_uri(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="neuromem-lora-") as folder:
        for name in (LORA_WEIGHT_NAME, RUN_RECORD):
            if exists(join_uri(location, name)):
                Path(folder, name).write_bytes(read_bytes(join_uri(location, name)))
        yield Path(folder)
