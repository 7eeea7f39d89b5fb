"""Networks trained on memorability, on categories, or on both.

A :class:`MemNet` is a backbone (any :mod:`neuromem.networks` model with its classifier
removed) followed by a memorability head (one linear unit, regression) and/or a
category head (linear, classification). The joint objective is
``memorability_weight · MSE(memorability) + category_weight · cross-entropy(category)``;
rows without a category label (``-1``) do not enter the cross-entropy.

A checkpoint is a folder (local path or URI) with ``model.safetensors`` (the state dict) and
``config.json`` (backbone spec, task, categories, input size and normalisation, training
settings, metrics). :class:`MemorabilityModel` runs a checkpoint on the image-map engine.
"""

from __future__ import annotations

import os

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from neuromem.data.batch import DecodedBatch, to_float_pixels
from neuromem.errors import InputError, MissingWeightsError
from neuromem.networks import ModelSpec, load_model
from neuromem.runtime.storage import (
    exists,
    join_uri,
    read_bytes,
    read_json,
    write_bytes,
    write_json,
)

TASKS = ("memorability", "category", "both")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def strip_classifier(module: nn.Module) -> nn.Module:
    """The network without its classification layer, so it outputs features ``(B, D)``.

    timm models use ``reset_classifier(0)``; otherwise the last ``nn.Linear`` in module order
    is replaced by ``nn.Identity`` (torchvision's ``fc``, ``classifier.N``, ``heads.head``).
    open_clip image towers end in a projection, not a classifier, and are kept whole.
    """
    if hasattr(module, "reset_classifier"):
        module.reset_classifier(0)
        return module
    if hasattr(module, "output_dim") and hasattr(module, "proj"):  # open_clip image tower
        return module
    linears = [name for name, sub in module.named_modules() if isinstance(sub, nn.Linear)]
    if not linears:
        return module
    parent_name, _, child = linears[-1].rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, child, nn.Identity())
    return module


class MemNet(nn.Module):
    """Backbone plus memorability and/or category heads.

    Parameters
    ----------
    backbone : nn.Module
        Maps normalised images ``(B, 3, S, S)`` to features ``(B, D)``.
    n_features : int
        ``D``.
    task : {"memorability", "category", "both"}
    n_categories : int
        Classes of the category head (ignored for ``task="memorability"``).
    """

    def __init__(self, backbone: nn.Module, n_features: int, task: str, n_categories: int = 0):
        super().__init__()
        if task not in TASKS:
            raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        if task != "memorability" and n_categories < 2:
            raise InputError(
                f"task {task!r} needs at least 2 categories; got {n_categories} (does the table "
                "have a filled 'category' column?)"
            )
        self.task = task
        self.backbone = backbone
        self.memorability_head = nn.Linear(n_features, 1) if task != "category" else None
        self.category_head = nn.Linear(n_features, n_categories) if task != "memorability" else None

    def forward(self, images_b3hw: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"memorability": (B,), "logits": (B, C)}`` (the heads the task has)."""
        features_bd = self.backbone(images_b3hw)
        outputs = {}
        if self.memorability_head is not None:
            outputs["memorability"] = self.memorability_head(features_bd)[:, 0]
        if self.category_head is not None:
            outputs["logits"] = self.category_head(features_bd)
        return outputs


def build_memnet(
    backbone_spec: str, task: str, n_categories: int, *, image_size: int | None = None, seed: int = 0
) -> tuple[MemNet, dict]:
    """A fresh :class:`MemNet` on a backbone spec, and its config (see :func:`save_memnet`)."""
    loaded = load_model(backbone_spec, image_size=image_size, seed=seed)
    backbone = strip_classifier(loaded.module)
    with torch.no_grad():
        probe = torch.zeros(2, 3, loaded.image_size, loaded.image_size)
        n_features = int(backbone.eval()(probe).flatten(1).shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        net = MemNet(backbone, n_features, task, n_categories)
    net.requires_grad_(True)
    config = {
        "backbone": backbone_spec,
        "task": task,
        "n_categories": n_categories if task != "memorability" else 0,
        "image_size": loaded.image_size,
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "n_features": n_features,
    }
    return net, config


def memnet_loss(
    outputs: dict[str, torch.Tensor],
    memorability_b: torch.Tensor,
    category_b: torch.Tensor,
    *,
    memorability_weight: float = 1.0,
    category_weight: float = 1.0,
) -> torch.Tensor:
    """Joint loss: weighted MSE of memorability plus weighted cross-entropy of categories.

    Parameters
    ----------
    outputs : dict
        :meth:`MemNet.forward`'s output.
    memorability_b : Tensor, shape (B,)
        Target scores.
    category_b : Tensor of int64, shape (B,)
        Class indices; ``-1`` where a row has no label (left out of the cross-entropy).
    """
    loss = memorability_b.new_zeros(())
    if "memorability" in outputs:
        loss = loss + memorability_weight * F.mse_loss(outputs["memorability"], memorability_b)
    if "logits" in outputs:
        labelled = category_b >= 0
        if labelled.any():
            loss = loss + category_weight * F.cross_entropy(
                outputs["logits"][labelled], category_b[labelled]
            )
    return loss


def save_memnet(folder: str | os.PathLike, net: MemNet, config: dict) -> str:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (local path or URI).

    Returns
    -------
    str
        The folder.
    """
    from safetensors.torch import save

    folder = os.fspath(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    write_bytes(join_uri(folder, WEIGHTS_FILE), save(state))
    write_json(join_uri(folder, CONFIG_FILE), config)
    return folder


def check_checkpoint(folder: str | os.PathLike) -> str:
    """``folder`` if it holds a checkpoint written by :func:`save_memnet` (local path or URI).

    Raises
    ------
    MissingWeightsError
        ``config.json`` or ``model.safetensors`` is missing.
    """
    folder = os.fspath(folder)
    if not exists(join_uri(folder, CONFIG_FILE)) or not exists(join_uri(folder, WEIGHTS_FILE)):
        raise MissingWeightsError(
            f"{folder} is not a memnet checkpoint: expected {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(written by `neuromem train-memnet`)"
        )
    return folder


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint folder."""
    return read_json(join_uri(check_checkpoint(folder), CONFIG_FILE))


def load_memnet(folder: str | os.PathLike) -> tuple[MemNet, dict]:
    """Load a checkpoint folder written by :func:`save_memnet` (evaluation mode, CPU)."""
    from safetensors.torch import load

    config = read_checkpoint_config(folder)
    backbone = ModelSpec.parse(config["backbone"])  # trained weights replace the backbone's
    net, _ = build_memnet(
        str(ModelSpec(backbone.library, backbone.name)), config["task"], config["n_categories"],
        image_size=config["image_size"],
    )
    net.load_state_dict(load(read_bytes(join_uri(os.fspath(folder), WEIGHTS_FILE))))
    return net.eval(), config


class MemorabilityModel:
    """The image-map engine's model of a trained checkpoint: predicted memorability per image.

    Parameters
    ----------
    checkpoint : str
        Checkpoint folder (local path or URI) of a network with a memorability head.
    """

    clip_frames = 0
    schema = pa.schema([("memorability", pa.float32())])

    def __init__(self, checkpoint: str) -> None:
        from neuromem.runtime.device import resolve_device

        net, config = load_memnet(checkpoint)
        if net.memorability_head is None:
            raise InputError(f"{checkpoint} was trained on categories only: no memorability head")
        self.device = resolve_device("auto")
        self.net = net.to(self.device)
        self.input_size = int(config["image_size"])
        self.mean, self.std = config["mean"], config["std"]

    @torch.inference_mode()
    def __call__(self, decoded: DecodedBatch) -> pa.Table:
        """Predicted memorability of each decoded image."""
        from neuromem.encoders.preprocessing import normalise

        images_b3hw = to_float_pixels(decoded.pixels, self.device)
        predicted = self.net(normalise(images_b3hw, self.mean, self.std))["memorability"]
        return pa.table([pa.array(predicted.float().cpu().numpy())], schema=self.schema)


def build_memorability_model(checkpoint: str) -> MemorabilityModel:
    """Model recipe of the engine: ``MemorabilityModel(checkpoint)``."""
    return MemorabilityModel(checkpoint)
