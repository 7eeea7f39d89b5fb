"""TRIBE v2 encoder: V-JEPA2 video backbone + the TRIBE v2 fMRI head, images or clips in.

Weights
-------
``config.yaml`` and ``best.ckpt`` in the layout of the ``facebook/tribev2`` release (read as is):

- ``best.ckpt``: a PyTorch Lightning checkpoint, a dict with ``state_dict`` (head parameters,
  keys prefixed ``model.``) and ``model_build_args`` (``feature_dims``: modality →
  ``(n_layer_groups, dim)`` or None, ``n_outputs``, ``n_output_timesteps``);
- ``config.yaml``: the experiment config; read here: ``brain_model_config`` (head
  architecture), ``data.video_feature.image.model_name`` (backbone: hub id or local folder),
  the layer selection (``data.layers_to_use`` / ``data.n_layers_to_use`` /
  ``data.video_feature.image.layers``, ``data.layer_aggregation``,
  ``data.video_feature.image.cache_n_layers``), the feature rate ``data.frequency`` and the
  fMRI rate ``data.neuro.frequency``.

Backbone layers
---------------
The head reads ``L`` *layer groups*: each group is the mean, over some backbone hidden states
(index 0 = patch embeddings, ``i`` = output of block ``i``), of the token-averaged states,
selected from relative depths as upstream does (``group_mean``: with depths ``[0.5, 0.75, 1]``
and 41 hidden states, the groups are states 20-29 and 30-40).

Stills and clips
----------------
A still image is shown as a static clip of ``clip_frames = 2`` identical frames: V-JEPA2 embeds
time in tubelets of 2 frames, so 2 frames is the smallest clip it encodes, and a static image
has no motion for more frames to capture; more frames only add tokens with the same content at
other temporal positions, at a cost linear in the frame count (``clip_frames`` can be raised).
A clip of any length is encoded once (an odd last frame is dropped by the tubelet embedding).
Its features are then held constant for ``present_seconds = 3`` s (NSD shows each image for
3 s) at the feature rate (2 Hz → 6 steps); the head's outputs, pooled to the fMRI rate (1 Hz →
3 steps), are averaged. Upstream trained the head against fMRI shifted by 5 s (``neuro.offset``),
so output step ``t`` is already the haemodynamic response to the stimulus at ``t``: no further
shift is applied, and averaging the steps of the presentation gives the response to the still.

Gradient truncation
-------------------
``trunc_layer=k``: hidden states deeper than ``k`` enter the head *detached*: their values are
unchanged but carry no gradient, so the gradient reaches the pixels only through blocks
``1..k``. The deeper blocks still run with autograd like the untruncated pass (under ``no_grad``
the attention kernels may differ and change the value in the last bits); their graph is freed
when the pass ends. ``k`` below the shallowest state the head reads leaves no gradient path and
raises :class:`InputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import VJEPA2Config, VJEPA2Model

from neuromem.encoders.base import N_VERTICES, BrainEncoder
from neuromem.encoders.preprocessing import (
    check_clips,
    check_images,
    normalise,
    resize_center_crop,
)
from neuromem.encoders.tribe_head import FmriHead, HeadConfig
from neuromem.errors import InputError, MissingWeightsError

HUB_REPO = "facebook/tribev2"
WEIGHT_FILES = ("config.yaml", "best.ckpt")
DEFAULT_BACKBONE = "facebook/vjepa2-vitg-fpc64-256"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STILL_FRAMES = 2
PRESENT_SECONDS = 3.0
TINY_SEED = 0

# A tiny model with the released layout (3 modalities, low-rank head, shared subject row),
# written in the config.yaml / model_build_args format: for tests and CI only.
TINY_BACKBONE_CONFIG: dict[str, Any] = {
    "crop_size": 32, "patch_size": 16, "frames_per_clip": 4, "tubelet_size": 2,
    "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "mlp_ratio": 2.0,
    "pred_hidden_size": 16, "pred_num_hidden_layers": 1, "pred_num_attention_heads": 2,
    "pred_num_mask_tokens": 2,
}
TINY_CONFIG: dict[str, Any] = {
    "data": {
        "frequency": 2,
        "layers_to_use": [0.5, 0.75, 1.0],
        "layer_aggregation": "group_mean",
        "features_to_use": ["text", "audio", "video"],
        "video_feature": {"image": {"model_name": "tiny"}},
        "neuro": {"frequency": 1, "offset": 5},
    },
    "brain_model_config": {
        "name": "FmriEncoder",
        "hidden": 96,
        "low_rank_head": 16,
        "combiner": None,
        "extractor_aggregation": "cat",
        "layer_aggregation": "cat",
        "encoder": {"depth": 2, "heads": 3},
        "subject_layers": {"subject_dropout": 0.1},
        "max_seq_len": 64,
    },
}
TINY_BUILD_ARGS: dict[str, Any] = {
    "feature_dims": {"text": (2, 16), "audio": (2, 16), "video": (2, 32)},
    "n_outputs": N_VERTICES,
    "n_output_timesteps": 100,
}


@dataclass(frozen=True)
class FeatureSpec:
    """How backbone hidden states become the head's video features.

    Attributes
    ----------
    backbone : str
        Backbone hub id or local folder.
    layer_groups : tuple of tuple of int
        Hidden-state indices averaged into each of the ``L`` groups.
    feature_frequency, output_frequency : float
        Head input rate and fMRI output rate, Hz.
    """

    backbone: str
    layer_groups: tuple[tuple[int, ...], ...]
    feature_frequency: float
    output_frequency: float


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML loader that reads python tuples as lists and other python objects as None."""


_ConfigLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node)
)
_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
_ConfigLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a TRIBE v2 ``config.yaml`` (nested or dotted keys) into a nested dict."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.load(fh, Loader=_ConfigLoader) or {}
    if not isinstance(raw, dict):
        raise InputError(f"{str(path)!r} is not a TRIBE v2 config: expected a YAML mapping")
    return _nest(raw)


def _nest(raw: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        value = _nest(value) if isinstance(value, dict) else value
        *parents, leaf = str(key).split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return nested


def _get(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def layer_groups(
    n_states: int,
    depths: Sequence[float],
    aggregation: str | None,
    cache_n_layers: int | None = None,
) -> tuple[tuple[int, ...], ...]:
    """Hidden-state indices of each layer group, following upstream's layer selection.

    Parameters
    ----------
    n_states : int
        Hidden states of the backbone (blocks + 1 for the patch embeddings).
    depths : sequence of float
        Relative depths in ``[0, 1]``.
    aggregation : {"group_mean", "mean", None}
        ``group_mean``: consecutive ranges between the selected depths (the last one inclusive);
        ``mean``: one group of the selected states; None: one group per selected state.
    cache_n_layers : int or None
        Upstream first keeps this many evenly spaced states (when fewer than ``n_states``).
    """
    available = list(range(n_states))
    if cache_n_layers is not None and cache_n_layers < n_states:
        available = [int(round(x)) for x in np.linspace(0, n_states - 1, cache_n_layers)]
    n_available = len(available)
    picks = sorted({int(depth * (n_available - 1)) for depth in depths})
    if len(picks) == 1:
        groups = [[picks[0]]]
    elif aggregation == "mean":
        groups = [picks]
    elif aggregation == "group_mean":
        ends = [*picks[1:-1], picks[-1] + 1]
        groups = [list(range(start, end)) for start, end in zip(picks[:-1], ends, strict=True)]
    elif aggregation is None:
        groups = [[pick] for pick in picks]
    else:
        raise InputError(f"unsupported layer aggregation {aggregation!r}")
    return tuple(tuple(available[i] for i in group) for group in groups)


_UNSUPPORTED_HEAD_OPTIONS = {
    "linear_baseline": False, "subject_embedding": False, "temporal_smoothing": None,
    "extractor_aggregation": "cat", "layer_aggregation": "cat",
}
_REQUIRED_ENCODER_OPTIONS = {
    "cross_attend": False, "causal": False, "use_scalenorm": True, "use_rmsnorm": False,
    "rel_pos_bias": False, "alibi_pos_bias": False, "rotary_pos_emb": True,
    "rotary_xpos": False, "residual_attn": False, "scale_residual": True,
}


def head_config(
    config: dict[str, Any], build_args: dict[str, Any], n_subject_rows: int
) -> HeadConfig:
    """The head architecture from ``config.yaml``'s ``brain_model_config`` and build args."""
    brain = _get(config, "brain_model_config", {}) or {}
    for key, expected in _UNSUPPORTED_HEAD_OPTIONS.items():
        if brain.get(key, expected) != expected:
            raise InputError(f"TRIBE v2 head option {key}={brain[key]!r} is not supported")
    encoder = brain.get("encoder", {}) or {}
    for key, expected in _REQUIRED_ENCODER_OPTIONS.items():
        if encoder.get(key, expected) != expected:
            raise InputError(f"TRIBE v2 transformer option {key}={encoder[key]!r} is not supported")
    projector = brain.get("projector", {}) or {}
    if projector.get("name", "Mlp") != "Mlp":
        raise InputError(f"TRIBE v2 projector {projector['name']!r} is not supported")
    has_combiner = "combiner" not in brain or brain["combiner"] is not None
    combiner = brain.get("combiner") or {}
    subject = brain.get("subject_layers", {}) or {}
    feature_dims = {
        modality: (tuple(int(v) for v in dims) if dims is not None else None)
        for modality, dims in build_args["feature_dims"].items()
    }
    return HeadConfig(
        feature_dims=feature_dims,
        n_outputs=int(build_args["n_outputs"]),
        hidden=int(brain.get("hidden", 256)),
        depth=int(encoder.get("depth", 12)),
        heads=int(encoder.get("heads", 8)),
        ff_mult=int(encoder.get("ff_mult", 4)),
        max_seq_len=int(brain.get("max_seq_len", 1024)),
        low_rank_head=brain.get("low_rank_head"),
        combiner=has_combiner,
        projector_hidden_sizes=tuple(projector.get("hidden_sizes") or ()),
        combiner_hidden_sizes=tuple(combiner.get("hidden_sizes") or ()),
        projector_norm=projector.get("norm_layer", "layer"),
        combiner_norm=combiner.get("norm_layer", "layer"),
        n_subject_rows=n_subject_rows,
        average_row=n_subject_rows - 1 if subject.get("subject_dropout") else None,
        subject_bias=bool(subject.get("bias", True)),
        time_pos_embedding=bool(brain.get("time_pos_embedding", True)),
    )


def feature_spec(config: dict[str, Any], n_backbone_layers: int) -> FeatureSpec:
    """Backbone name, layer groups and rates from ``config.yaml``."""
    image = _get(config, "data.video_feature.image", {}) or {}
    n_depths = _get(config, "data.n_layers_to_use")
    if n_depths is not None:
        depths = np.linspace(0, 1, int(n_depths)).tolist()
    else:
        depths = _get(config, "data.layers_to_use") or image.get("layers", 2 / 3)
    depths = depths if isinstance(depths, list) else [depths]
    groups = layer_groups(
        n_backbone_layers + 1,
        [float(d) for d in depths],
        _get(config, "data.layer_aggregation", "group_mean"),
        image.get("cache_n_layers"),
    )
    return FeatureSpec(
        backbone=str(image.get("model_name", DEFAULT_BACKBONE)),
        layer_groups=groups,
        feature_frequency=float(
            _get(config, "data.frequency") or _get(config, "data.video_feature.frequency", 2)
        ),
        output_frequency=float(_get(config, "data.neuro.frequency", 1)),
    )


class TribeV2Encoder(BrainEncoder):
    """V-JEPA2 backbone + TRIBE v2 head (see the module docstring).

    Parameters
    ----------
    backbone : VJEPA2Model
        The video backbone (only its encoder is kept).
    head : FmriHead
        The fMRI head with loaded weights.
    features : FeatureSpec
        Layer groups and rates.
    spec : str
        The spec the encoder was loaded from.
    trained : bool
        Whether the weights are trained.
    files : list of Path
        Weight files read.
    clip_frames : int
        Frames of the static clip a still becomes.
    present_seconds : float
        Duration for which a still (or a clip's features) is presented to the head.
    """

    kind = "tribev2"

    def __init__(
        self,
        backbone: VJEPA2Model,
        head: FmriHead,
        features: FeatureSpec,
        *,
        spec: str,
        trained: bool,
        files: list[Path],
        clip_frames: int = STILL_FRAMES,
        present_seconds: float = PRESENT_SECONDS,
    ) -> None:
        super().__init__()
        dims = head.config.feature_dims.get("video")
        backbone_config = backbone.config
        if dims is None or dims != (len(features.layer_groups), backbone_config.hidden_size):
            raise InputError(
                f"TRIBE v2 head expects video features {dims}, the backbone gives "
                f"({len(features.layer_groups)} layer groups, {backbone_config.hidden_size})"
            )
        if head.config.n_outputs != N_VERTICES:
            raise InputError(f"TRIBE v2 head has {head.config.n_outputs} outputs, not {N_VERTICES}")
        self.backbone = backbone.encoder
        self.backbone_config = backbone_config
        self.head = head
        self.features_spec = features
        self.spec = spec
        self.trained = trained
        self._files = list(files)
        self.n_layers = backbone_config.num_hidden_layers
        self.input_size = int(backbone_config.crop_size)
        self.resize_size = int(self.input_size * 256 / 224)
        self.clip_frames = int(clip_frames)
        self.present_seconds = float(present_seconds)
        self.n_steps = max(1, round(present_seconds * features.feature_frequency))
        self.n_output_steps = max(1, round(present_seconds * features.output_frequency))

    def config(self) -> dict[str, Any]:
        return {
            "backbone": self.features_spec.backbone,
            "backbone_layers": self.n_layers,
            "backbone_hidden": self.backbone_config.hidden_size,
            "layer_groups": [list(g) for g in self.features_spec.layer_groups],
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "clip_frames": self.clip_frames,
            "present_seconds": self.present_seconds,
            "feature_steps": self.n_steps,
            "output_steps": self.n_output_steps,
            "head": {
                "hidden": self.head.config.hidden,
                "depth": self.head.config.depth,
                "heads": self.head.config.heads,
                "low_rank_head": self.head.config.low_rank_head,
                "feature_dims": {k: list(v) if v else None
                                 for k, v in self.head.config.feature_dims.items()},
                "average_row": self.head.config.average_row,
            },
        }

    def weight_files(self) -> list[Path]:
        return list(self._files)

    def forward(self, images_b3hw: torch.Tensor, trunc_layer: int | None = None) -> torch.Tensor:
        """Responses to stills, each shown as a static clip of ``clip_frames`` frames."""
        check_images(images_b3hw)
        clips_bt3hw = images_b3hw[:, None].expand(-1, self.clip_frames, -1, -1, -1)
        return self.forward_clips(clips_bt3hw, trunc_layer)

    def forward_clips(
        self, clips_bt3hw: torch.Tensor, trunc_layer: int | None = None
    ) -> torch.Tensor:
        check_clips(clips_bt3hw)
        video_bld = self.layer_features(clips_bt3hw, trunc_layer)
        video_bldt = video_bld[..., None].expand(-1, -1, -1, self.n_steps)
        responses_bvt = self.head({"video": video_bldt}, self.n_output_steps)
        return responses_bvt.mean(dim=-1).float()

    def layer_features(
        self, clips_bt3hw: torch.Tensor, trunc_layer: int | None = None
    ) -> torch.Tensor:
        """Token-averaged backbone features per layer group, ``(B, L, D)`` (truncation applied)."""
        depth = self.check_trunc_layer(trunc_layer)
        wanted = {i for group in self.features_spec.layer_groups for i in group}
        if depth < min(wanted):
            raise InputError(
                f"trunc_layer={depth} leaves no gradient path: the head reads backbone states "
                f"{min(wanted)}..{max(wanted)}; use trunc_layer >= {min(wanted)}"
            )
        n_clips, n_frames = clips_bt3hw.shape[:2]
        frames_n3hw = clips_bt3hw.reshape(n_clips * n_frames, *clips_bt3hw.shape[2:])
        frames_n3hw = normalise(
            resize_center_crop(frames_n3hw, self.input_size, self.resize_size),
            IMAGENET_MEAN,
            IMAGENET_STD,
        )
        pixels_bt3hw = frames_n3hw.reshape(n_clips, n_frames, *frames_n3hw.shape[1:])
        hidden = self.backbone.embeddings(pixels_bt3hw)
        pooled = {0: hidden.mean(dim=1)} if 0 in wanted else {}
        for index, block in enumerate(self.backbone.layer, start=1):
            if index > max(wanted):
                break
            hidden = block(hidden, None)[0]
            if index in wanted:
                pooled[index] = hidden.mean(dim=1) if index <= depth else hidden.mean(dim=1).detach()
        groups = [
            torch.stack([pooled[i] for i in group]).mean(dim=0)
            for group in self.features_spec.layer_groups
        ]
        return torch.stack(groups, dim=1)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Head state dict (``model.`` prefix removed) and ``model_build_args`` of a ``best.ckpt``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"cannot read TRIBE v2 checkpoint {str(path)!r}: {exc}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_build_args" not in ckpt:
        raise InputError(
            f"{str(path)!r} is not a TRIBE v2 checkpoint: expected keys state_dict, model_build_args"
        )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    return state, ckpt["model_build_args"]


def build_head(config: dict[str, Any], state: dict[str, torch.Tensor], build_args: dict[str, Any]) -> FmriHead:
    """Build the head described by ``config``/``build_args`` and load ``state`` (strict)."""
    if "predictor.weights" not in state:
        raise InputError("TRIBE v2 checkpoint has no predictor.weights")
    head = FmriHead(head_config(config, build_args, int(state["predictor.weights"].shape[0])))
    missing, unexpected = head.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"TRIBE v2 checkpoint does not match its config: missing {missing}, unexpected {unexpected}"
        )
    return head


def load_backbone(name: str) -> tuple[VJEPA2Model, list[Path]]:
    """``VJEPA2Model`` from a local folder or hub id, with the weight files it read."""
    try:
        model = VJEPA2Model.from_pretrained(name)
    except OSError as exc:
        raise MissingWeightsError(
            f"V-JEPA2 backbone {name!r} not found locally or offline (looked for config.json and "
            f"model*.safetensors). Download it once with network access "
            f"(`huggingface-cli download {name}`) or point the config's "
            f"data.video_feature.image.model_name at a local folder. ({exc})"
        ) from exc
    folder = Path(name) if Path(name).is_dir() else _hub_snapshot(name)
    return model.eval(), sorted(folder.glob("*.safetensors"))


def _hub_snapshot(repo: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, "config.json")).parent


def _hub_files(repo: str, filenames: Sequence[str]) -> list[Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return [Path(hf_hub_download(repo, name)) for name in filenames]
    except (LocalEntryNotFoundError, EntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise MissingWeightsError(
            f"TRIBE v2 weights not available offline: looked for {', '.join(filenames)} in the "
            f"Hugging Face cache for {repo!r}. Download them once with network access "
            f"(`huggingface-cli download {repo}`; the licence is CC-BY-NC) or use "
            f"'tribev2:/local/folder' with a folder holding {' and '.join(filenames)}. ({exc})"
        ) from exc


def load_tribev2_files(
    config_path: Path, ckpt_path: Path, spec: str, backbone: VJEPA2Model | None = None
) -> TribeV2Encoder:
    """Encoder from a ``config.yaml`` and ``best.ckpt`` (backbone named in the config)."""
    config = read_config(config_path)
    state, build_args = load_checkpoint(ckpt_path)
    head = build_head(config, state, build_args)
    files = [ckpt_path]
    if backbone is None:
        name = str(_get(config, "data.video_feature.image.model_name", DEFAULT_BACKBONE))
        backbone, backbone_files = load_backbone(name)
        files += backbone_files
    features = feature_spec(config, backbone.config.num_hidden_layers)
    return TribeV2Encoder(backbone, head, features, spec=spec, trained=True, files=files)


def load_tribev2_folder(folder: str | Path, spec: str | None = None) -> TribeV2Encoder:
    """Encoder from a local folder holding ``config.yaml`` and ``best.ckpt``."""
    folder = Path(folder)
    paths = [folder / name for name in WEIGHT_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingWeightsError(
            f"TRIBE v2 folder {str(folder)!r} lacks {', '.join(missing)}; expected "
            f"{' and '.join(WEIGHT_FILES)} as released in {HUB_REPO!r}."
        )
    return load_tribev2_files(*paths, spec=spec or f"tribev2:{folder}")


def load_tribev2_hub(repo: str = HUB_REPO, spec: str = "tribev2") -> TribeV2Encoder:
    """Encoder from the hub (the local Hugging Face cache when offline)."""
    config_path, ckpt_path = _hub_files(repo, WEIGHT_FILES)
    return load_tribev2_files(config_path, ckpt_path, spec=spec)


def build_tiny_backbone(seed: int = TINY_SEED) -> VJEPA2Model:
    """Seeded-random tiny V-JEPA2 (``TINY_BACKBONE_CONFIG``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VJEPA2Model(VJEPA2Config(**TINY_BACKBONE_CONFIG)).eval()


def build_tiny_head(seed: int = TINY_SEED) -> FmriHead:
    """Seeded-random head in the ``TINY_CONFIG`` / ``TINY_BUILD_ARGS`` layout (1 subject row)."""
    head = FmriHead(head_config(TINY_CONFIG, TINY_BUILD_ARGS, n_subject_rows=1))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in head.named_parameters():
            if name.endswith(".g") or name.endswith("residual_scale"):
                continue
            fan_in = param.shape[-2] if name == "predictor.weights" else param.shape[-1]
            param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)
    return head.eval()


def build_tiny_tribev2(seed: int = TINY_SEED, spec: str = "tribev2:tiny") -> TribeV2Encoder:
    """The offline test encoder: tiny V-JEPA2 + tiny head, seeded-random, untrained."""
    backbone = build_tiny_backbone(seed)
    features = feature_spec(TINY_CONFIG, backbone.config.num_hidden_layers)
    return TribeV2Encoder(
        backbone, build_tiny_head(seed), features, spec=spec, trained=False, files=[]
    )
