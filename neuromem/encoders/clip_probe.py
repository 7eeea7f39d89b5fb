"""CLIP probe encoder: an open_clip image tower followed by a linear map to 20,484 vertices.

The probe is the smooth, cheap proxy of a brain encoder: ``responses_bv = W · f(x) + b`` where
``f(x)`` is the open_clip image embedding (optionally L2-normalised) of the image ``x``.

Probe file format (``.safetensors``)
------------------------------------
Written by :func:`save_clip_probe`, read by :func:`load_clip_probe`. Tensors:

- ``head.weight``: float32 ``(20484, E)``, ``E`` the tower's embedding size;
- ``head.bias``: float32 ``(20484,)``.

String metadata (safetensors header ``__metadata__``):

- ``format``: ``"neuromem.clip-probe"``; ``format_version``: ``"1"``;
- ``model_name``: open_clip model name (``"ViT-B-32"``, ``"hf-hub:org/repo"``, or a custom name);
- ``pretrained``: open_clip pretrained tag (``"openai"``), a path to a local weight file, or
  ``""`` for seeded-random tower weights (then ``tower_seed`` is used);
- ``tower_seed``: integer seed of the random tower initialisation (used only when
  ``pretrained`` is ``""``);
- ``model_config``: JSON open_clip config for a model name open_clip does not ship (registered
  with ``open_clip.add_model_config`` on load), or ``""``;
- ``embed_dim``: ``E`` as a decimal string (checked against the tensors);
- ``feature_norm``: ``"l2"`` (features divided by their L2 norm before the head) or ``"none"``;
  any feature standardisation used in fitting must be folded into ``head.weight``/``head.bias``;
- ``training``: JSON object describing the fit (dataset, ridge alphas, scores ...), free-form;
  ``"trained": false`` in it marks a probe whose numbers mean nothing (fitted to random data or
  to a random tower); the encoder's ``trained`` attribute is read from it (default true).

Fitting a probe
---------------
Fit ``head.weight``/``head.bias`` on :meth:`ClipProbeEncoder.features` of an encoder with the
same tower (e.g. ``load_encoder("clip-probe:tiny").features(images_b3hw)``, already
normalised as ``feature_norm`` says), then :func:`save_clip_probe` with that tower's
``model_name``, ``pretrained``, ``tower_seed`` and ``model_config`` (for the tiny tower:
``TINY_MODEL_NAME``, ``""``, ``TINY_SEED``, ``TINY_MODEL_CONFIG``).

Straight-through surrogate and truncation
-----------------------------------------
For a ViT tower, ``surrogate_layer=k`` returns the value of the full tower but the gradient of
the same read-out (the tower's final norm, pooling and projection, then the feature
normalisation) applied to the tokens after block ``k``:
``features = full.detach() + (shallow - shallow.detach())``. ``shallow - shallow.detach()`` is
exactly zero, so the value is bit-identical to the full pass, and the gradient is that of
``shallow`` (blocks ``1..k``). The deeper blocks run with autograd like the full pass (running
them under ``no_grad`` could select other attention kernels and change the value in the last
bits); their graph is freed when the pass ends. Towers that are not an open_clip
``VisionTransformer`` have ``n_layers = 1``.

``trunc_layer`` keeps the meaning it has for every encoder (stop the gradient path at a depth,
value unchanged). The probe reads only its last block, so no path is left below it:
``trunc_layer < n_layers`` raises :class:`InputError` pointing to ``surrogate_layer``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import open_clip
import safetensors
import safetensors.torch
import torch
from open_clip.transformer import VisionTransformer

from neuromem.encoders.base import N_VERTICES, BrainEncoder
from neuromem.encoders.preprocessing import (
    check_clips,
    check_images,
    normalise,
    resize_center_crop,
)
from neuromem.errors import InputError, MissingWeightsError

PROBE_FORMAT = "neuromem.clip-probe"
PROBE_FORMAT_VERSION = "1"
FEATURE_NORMS = ("l2", "none")

TINY_MODEL_NAME = "neuromem-tiny-clip"
# ~2.6 M parameters in all (0.8 M in the image tower), 64-pixel input: for tests and CI only.
TINY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_SEED = 0


class ClipProbeEncoder(BrainEncoder):
    """open_clip image tower + linear head to the 20,484 fsaverage5 vertices.

    Parameters
    ----------
    visual : torch.nn.Module
        open_clip image tower (``model.visual``).
    head : torch.nn.Linear
        ``E → 20484`` map.
    spec : str
        The spec the encoder was loaded from.
    model_name, pretrained : str
        open_clip model name and pretrained tag/path (``""`` for random weights).
    feature_norm : {"l2", "none"}
        Normalisation of the embedding before the head.
    trained : bool
        Whether the head was fitted to brain data.
    files : list of Path
        Weight files read (probe file, local tower file).
    training : dict
        Free-form description of the fit.
    """

    kind = "clip-probe"
    has_surrogate = True

    def __init__(
        self,
        visual: torch.nn.Module,
        head: torch.nn.Linear,
        *,
        spec: str,
        model_name: str,
        pretrained: str,
        feature_norm: str,
        trained: bool,
        files: list[Path],
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise InputError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        if head.out_features != N_VERTICES:
            raise InputError(f"probe head must have {N_VERTICES} outputs, got {head.out_features}")
        self.visual = visual
        self.head = head
        self.spec = spec
        self.model_name = model_name
        self.pretrained = pretrained
        self.feature_norm = feature_norm
        self.trained = trained
        self.training_info = dict(training or {})
        self._files = list(files)
        cfg = open_clip.get_model_preprocess_cfg(visual)
        size = cfg["size"]
        self.input_size = int(size if isinstance(size, int) else size[0])
        self.image_mean = tuple(float(v) for v in cfg["mean"])
        self.image_std = tuple(float(v) for v in cfg["std"])
        self.n_layers = len(visual.transformer.resblocks) if _is_vit(visual) else 1
        self.clip_frames = 1

    def config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "embed_dim": self.head.in_features,
            "feature_norm": self.feature_norm,
            "input_size": self.input_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "n_layers": self.n_layers,
            "training": self.training_info,
        }

    def weight_files(self) -> list[Path]:
        return list(self._files)

    def check_trunc_layer(self, trunc_layer: int | None) -> int:
        """Only the full depth: the probe reads its last block, no gradient path is left below."""
        depth = super().check_trunc_layer(trunc_layer)
        if depth < self.n_layers:
            raise InputError(
                f"trunc_layer={trunc_layer} leaves the CLIP probe no gradient path (it reads "
                "only its last block); use surrogate_layer (--surrogate-layer) for the "
                "straight-through gradient of a shallower block"
            )
        return depth

    def features(self, images_b3hw: torch.Tensor, trunc_layer: int | None = None, *,
                 surrogate_layer: int | None = None) -> torch.Tensor:
        """Normalised image embeddings ``(B, E)`` that the head reads (surrogate applied)."""
        check_images(images_b3hw)
        self.check_trunc_layer(trunc_layer)
        depth = self.check_surrogate_layer(surrogate_layer) or self.n_layers
        pixels = normalise(
            resize_center_crop(images_b3hw, self.input_size), self.image_mean, self.image_std
        )
        if not _is_vit(self.visual):
            return self._normalise_features(self.visual(pixels))
        tokens, shallow_tokens = self._vit_tokens(pixels, depth)
        full = self._normalise_features(self._readout(tokens))
        if depth == self.n_layers:
            return full
        shallow = self._normalise_features(self._readout(shallow_tokens))
        return full.detach() + (shallow - shallow.detach())

    def forward(self, images_b3hw: torch.Tensor, trunc_layer: int | None = None, *,
                surrogate_layer: int | None = None) -> torch.Tensor:
        return self.head(self.features(images_b3hw, trunc_layer,
                                       surrogate_layer=surrogate_layer))

    def forward_clips(
        self, clips_bt3hw: torch.Tensor, trunc_layer: int | None = None, *,
        surrogate_layer: int | None = None,
    ) -> torch.Tensor:
        """Mean over frames of the per-frame responses, shape ``(B, 20484)``."""
        check_clips(clips_bt3hw)
        n_clips, n_frames = clips_bt3hw.shape[:2]
        frames_n3hw = clips_bt3hw.reshape(n_clips * n_frames, *clips_bt3hw.shape[2:])
        responses_nv = self(frames_n3hw, trunc_layer, surrogate_layer=surrogate_layer)
        return responses_nv.reshape(n_clips, n_frames, -1).mean(dim=1)

    def _vit_tokens(
        self, pixels_b3hw: torch.Tensor, depth: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens after the last block and after block ``depth``, both ``(B, L, D)``."""
        transformer = self.visual.transformer
        x = self.visual._embeds(pixels_b3hw)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        shallow = x
        for index, block in enumerate(transformer.resblocks, start=1):
            x = block(x)
            if index == depth:
                shallow = x
        if not transformer.batch_first:
            x, shallow = x.transpose(0, 1), shallow.transpose(0, 1)
        return x, shallow

    def _readout(self, tokens_bld: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.visual._pool(tokens_bld)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def _normalise_features(self, features_be: torch.Tensor) -> torch.Tensor:
        if self.feature_norm == "l2":
            return torch.nn.functional.normalize(features_be, dim=-1)
        return features_be


def _is_vit(visual: torch.nn.Module) -> bool:
    return isinstance(visual, VisionTransformer)


_REGISTERED_CONFIGS: dict[str, str] = {}


def register_open_clip_config(model_name: str, model_config: dict[str, Any]) -> None:
    """Make a custom open_clip config available under ``model_name`` (idempotent).

    Raises :class:`InputError` when the name is already registered with a different config.
    """
    text = json.dumps(model_config, sort_keys=True)
    known = _REGISTERED_CONFIGS.get(model_name)
    if known == text:
        return
    if known is not None or model_name in open_clip.list_models():
        if open_clip.get_model_config(model_name) == model_config:
            _REGISTERED_CONFIGS[model_name] = text
            return
        raise InputError(f"open_clip model {model_name!r} already exists with another config")
    # open_clip reads the file into its registry at once and skips it once gone on later rescans
    with tempfile.TemporaryDirectory(prefix="neuromem-open-clip-") as folder:
        path = Path(folder) / f"{model_name}.json"
        path.write_text(text)
        open_clip.add_model_config(path)
    _REGISTERED_CONFIGS[model_name] = text


def build_clip_model(
    model_name: str, pretrained: str = "", *, seed: int = TINY_SEED
) -> tuple[torch.nn.Module, list[Path]]:
    """Build a whole open_clip model (image and text towers) and the local weight files it read.

    Parameters
    ----------
    model_name : str
        open_clip model name, or ``"hf-hub:org/repo"``.
    pretrained : str
        open_clip tag, local weight file, or ``""`` for random weights drawn with ``seed``.
    seed : int
        Seed of the random initialisation (only used when ``pretrained`` is ``""``).

    Raises
    ------
    MissingWeightsError
        The pretrained weights are neither cached nor downloadable (offline).
    """
    local = Path(pretrained) if pretrained and Path(pretrained).is_file() else None
    with torch.random.fork_rng(devices=[]), _quiet_root_logger():
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained or None)
        except RuntimeError as exc:
            message = str(exc)
            if "download" not in message.lower() and "not a known tag" not in message:
                raise
            raise MissingWeightsError(
                f"open_clip weights for model {model_name!r}, pretrained {pretrained!r} are not "
                f"available offline ({message}). Download them once with network access "
                f"(open_clip.create_model({model_name!r}, pretrained={pretrained!r}) fills the "
                "Hugging Face cache) or pass a local weight file as `pretrained`."
            ) from exc
    return model, [local] if local is not None else []


def build_image_tower(
    model_name: str, pretrained: str = "", *, seed: int = TINY_SEED
) -> tuple[torch.nn.Module, list[Path]]:
    """The image tower of :func:`build_clip_model`'s model, and the weight files it read."""
    model, files = build_clip_model(model_name, pretrained, seed=seed)
    return model.visual, files


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip logs every build step (and random init as a warning) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def save_clip_probe(
    path: str | Path,
    weight_ve: torch.Tensor,
    bias_v: torch.Tensor,
    *,
    model_name: str,
    pretrained: str,
    feature_norm: str,
    training: dict[str, Any],
    tower_seed: int = TINY_SEED,
    model_config: dict[str, Any] | None = None,
) -> Path:
    """Write a probe file in the format described in this module's docstring.

    Parameters
    ----------
    path : str or Path
        Output ``.safetensors`` file.
    weight_ve : torch.Tensor
        Head weights, shape ``(20484, E)``.
    bias_v : torch.Tensor
        Head bias, shape ``(20484,)``.
    model_name, pretrained, feature_norm, training, tower_seed, model_config
        See the module docstring.

    Returns
    -------
    Path
        The file written.
    """
    if weight_ve.ndim != 2 or weight_ve.shape[0] != N_VERTICES:
        raise InputError(f"weight_ve must have shape ({N_VERTICES}, E), got {tuple(weight_ve.shape)}")
    if tuple(bias_v.shape) != (N_VERTICES,):
        raise InputError(f"bias_v must have shape ({N_VERTICES},), got {tuple(bias_v.shape)}")
    if feature_norm not in FEATURE_NORMS:
        raise InputError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
    path = Path(path)
    tensors = {
        "head.weight": weight_ve.detach().to("cpu", torch.float32).contiguous(),
        "head.bias": bias_v.detach().to("cpu", torch.float32).contiguous(),
    }
    metadata = {
        "format": PROBE_FORMAT,
        "format_version": PROBE_FORMAT_VERSION,
        "model_name": model_name,
        "pretrained": str(pretrained or ""),
        "tower_seed": str(int(tower_seed)),
        "model_config": json.dumps(model_config) if model_config else "",
        "embed_dim": str(weight_ve.shape[1]),
        "feature_norm": feature_norm,
        "training": json.dumps(training),
    }
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


def load_clip_probe(path: str | Path, spec: str | None = None) -> ClipProbeEncoder:
    """Load a probe file written by :func:`save_clip_probe` (and its image tower).

    Raises
    ------
    MissingWeightsError
        The file, or the tower weights it names, cannot be found.
    InputError
        The file is not a neuromem CLIP probe or its shapes disagree with the tower.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"CLIP probe file {str(path)!r} not found; expected a .safetensors file written by "
            "neuromem.encoders.clip_probe.save_clip_probe (e.g. by `neuromem` probe fitting)."
        )
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except safetensors.SafetensorError as exc:
        raise InputError(f"{str(path)!r} is not a safetensors file: {exc}") from exc
    if meta.get("format") != PROBE_FORMAT or set(tensors) != {"head.weight", "head.bias"}:
        raise InputError(
            f"{str(path)!r} is not a neuromem CLIP probe: expected metadata format={PROBE_FORMAT!r} "
            "and tensors head.weight, head.bias"
        )
    if meta.get("model_config"):
        register_open_clip_config(meta["model_name"], json.loads(meta["model_config"]))
    visual, tower_files = build_image_tower(
        meta["model_name"], meta.get("pretrained", ""), seed=int(meta.get("tower_seed", TINY_SEED))
    )
    weight_ve = tensors["head.weight"]
    embed_dim = int(meta["embed_dim"])
    if weight_ve.shape[1] != embed_dim or visual.output_dim != embed_dim:
        raise InputError(
            f"probe {str(path)!r}: head expects {weight_ve.shape[1]} features, metadata says "
            f"{embed_dim}, tower {meta['model_name']!r} gives {visual.output_dim}"
        )
    head = torch.nn.Linear(embed_dim, N_VERTICES)
    head.load_state_dict({"weight": weight_ve, "bias": tensors["head.bias"]})
    training = json.loads(meta.get("training") or "{}")
    return ClipProbeEncoder(
        visual,
        head,
        spec=spec or f"clip-probe:{path}",
        model_name=meta["model_name"],
        pretrained=meta.get("pretrained", ""),
        feature_norm=meta["feature_norm"],
        trained=bool(training.get("trained", True)),
        files=[path, *tower_files],
        training=training,
    )


def build_tiny_clip_probe(seed: int = TINY_SEED, spec: str = "clip-probe:tiny") -> ClipProbeEncoder:
    """The offline test probe: tiny ViT tower and linear head, both seeded-random, untrained."""
    register_open_clip_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)
    visual, _ = build_image_tower(TINY_MODEL_NAME, "", seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    embed_dim = visual.output_dim
    head = torch.nn.Linear(embed_dim, N_VERTICES)
    with torch.no_grad():
        head.weight.copy_(torch.randn(N_VERTICES, embed_dim, generator=generator) / embed_dim**0.5)
        head.bias.copy_(0.1 * torch.randn(N_VERTICES, generator=generator))
    return ClipProbeEncoder(
        visual,
        head,
        spec=spec,
        model_name=TINY_MODEL_NAME,
        pretrained="",
        feature_norm="l2",
        trained=False,
        files=[],
        training={"trained": False, "seed": seed},
    )
