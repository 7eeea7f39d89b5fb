"""TRIBE v2 encoder: V-JEPA2 video backbone + the TRIBE v2 fMRI head, as upstream runs them.

Weights
-------
``config.yaml`` and ``best.ckpt`` in the layout of the ``facebook/tribev2`` release (read as is):

- ``best.ckpt``: a PyTorch Lightning checkpoint, a dict with ``state_dict`` (head parameters,
  keys prefixed ``model.``) and ``model_build_args`` (``feature_dims``: modality →
  ``(n_layer_groups, dim)`` or None, ``n_outputs``, ``n_output_timesteps``);
- ``config.yaml``: the experiment config; read here: ``brain_model_config`` (head
  architecture), ``data.video_feature`` (backbone ``image.model_name``, ``clip_duration``,
  ``num_frames``, ``image.token_aggregation``), the layer selection (``data.layers_to_use`` /
  ``data.n_layers_to_use`` / ``data.video_feature.image.layers``, ``data.layer_aggregation``,
  ``data.video_feature.image.cache_n_layers``), the feature rate ``data.frequency``, the fMRI
  rate ``data.neuro.frequency`` and the segment length ``data.duration_trs``.

Video features (upstream's ``HuggingFaceVideo`` with the released settings)
---------------------------------------------------------------------------
At every step of the feature rate (2 Hz) a clip of ``num_frames`` (64) frames spread over the
preceding ``clip_duration`` (4 s) goes through the V-JEPA2 encoder; which frames, see
:mod:`neuromem.encoders.tribe_video`. The frames are preprocessed as transformers'
V-JEPA2 video processor does (:class:`~neuromem.encoders.preprocessing.VideoPreprocessing`,
settings read from the processor saved with the backbone). Upstream's guard against NaNs on
uniform frames (neuralset's ``_fix_pixel_values``) replaces NaNs in ``pixel_values``; the
V-JEPA2 processor returns ``pixel_values_videos`` and normalises with a fixed mean and std, so
upstream never applies it and uniform (grey) frames give finite values here as there. Each
hidden state (index 0 = patch embeddings, ``i`` = output of block ``i``) is token-aggregated
(``token_aggregation``, mean), then the head's ``L`` *layer groups* are the means of the states
between the selected relative depths (``group_mean``: with depths ``[0.5, 0.75, 1]`` and 41
hidden states, states 20-29 and 30-40).

The head, as upstream's inference runs it
-----------------------------------------
Upstream (``TribeModel.predict``) cuts the stimulus timeline into segments of
``duration_trs`` fMRI steps (100 s), fills each with the feature steps of the stimulus and
zeros after its end, runs the head on every segment and keeps the fMRI steps the stimulus
overlaps (``ceil(D)`` for ``D`` s). The head was trained on fMRI shifted by 5 s
(``neuro.offset``), so output step ``t`` is already the haemodynamic response to the stimulus
at ``t``. The head runs in the head's dtype here (upstream's demo casts it to float16).

Stills, clips and files
-----------------------
- :meth:`TribeV2Encoder.forward`: still images, presented by the encoder's protocol
  (``paper``, ``static``, ``fast``; :mod:`neuromem.encoders.tribe_protocols`).
- :meth:`TribeV2Encoder.forward_timecourse` / :meth:`~TribeV2Encoder.forward_clips`: clips of
  consecutive frames at a given frame rate → the response time course / its mean over the
  presentation.
- :meth:`TribeV2Encoder.read_video` + :meth:`~TribeV2Encoder.video_timecourse`: a video file,
  with upstream's frame timing and uint8 preprocessing.

Identical windows are computed once; windows made only of the grey frame are computed once per
encoder instance (and device, dtype and autocast setting); each frame is preprocessed once.

Gradient truncation
-------------------
``trunc_layer=k``: hidden states deeper than ``k`` enter the head *detached*: their values are
unchanged but carry no gradient, so the gradient reaches the pixels only through blocks
``1..k``. The deeper blocks run with autograd like the untruncated pass (under ``no_grad``
the attention kernels may differ and change the value in the last bits), but each one from a
detached copy of its input, so only one deep block's graph exists at a time. ``k`` below the
shallowest state the head reads leaves no gradient path and raises :class:`InputError`.
``gradient_checkpointing=True`` also recomputes blocks ``1..k`` during the backward pass instead
of keeping their activations.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.checkpoint import checkpoint
from transformers import VJEPA2Config, VJEPA2Model

from neuromem.encoders.base import N_VERTICES, BrainEncoder
from neuromem.encoders.preprocessing import VideoPreprocessing, check_clips, check_images
from neuromem.encoders.tribe_head import FmriHead, HeadConfig
from neuromem.encoders.tribe_protocols import (
    DEFAULT_PROTOCOL,
    GREY,
    PROTOCOLS,
    StillProtocol,
)
from neuromem.encoders.tribe_video import (
    VideoWindows,
    output_steps,
    read_video_windows,
    window_frame_indices,
)
from neuromem.errors import InputError, MissingWeightsError

HUB_REPO = "facebook/tribev2"
WEIGHT_FILES = ("config.yaml", "best.ckpt")
DEFAULT_BACKBONE = "facebook/vjepa2-vitg-fpc64-256"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Frames V-JEPA2 reads per window (upstream's default for the ``vjepa2`` family).
VJEPA2_FRAMES = 64
#: Upstream's segment length when the config does not give one (``Data.duration_trs``).
DEFAULT_SEGMENT_TRS = 40
#: Clips whose frame rate is not given are taken to span this long (Memento10K, BOLD Moments).
CLIP_SECONDS = 3.0
#: Frames a scorer decodes per clip: 3 s at the 16 frames/s the 64-frame, 4-s windows sample.
CLIP_FRAMES = 48
TOKEN_AGGREGATIONS = ("mean", "sum", "max", "first", "last")
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
        "duration_trs": 16,
        "layers_to_use": [0.5, 0.75, 1.0],
        "layer_aggregation": "group_mean",
        "features_to_use": ["text", "audio", "video"],
        "video_feature": {"clip_duration": 4, "image": {"model_name": "tiny"}},
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
    "n_output_timesteps": 16,
}

# The released layout: V-JEPA2 ViT-g (facebook/vjepa2-vitg-fpc64-256) and the facebook/tribev2
# head (upstream tribev2/grids/defaults.py; text LLaMA-3.2-3B and audio Wav2Vec-BERT widths),
# for measurements with random weights.
RELEASED_BACKBONE_CONFIG: dict[str, Any] = {
    "crop_size": 256, "patch_size": 16, "frames_per_clip": 64, "tubelet_size": 2,
    "hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22,
    "mlp_ratio": 48 / 11,
}
RELEASED_CONFIG: dict[str, Any] = {
    "data": {
        "frequency": 2,
        "duration_trs": 100,
        "layers_to_use": [0.5, 0.75, 1.0],
        "layer_aggregation": "group_mean",
        "video_feature": {"clip_duration": 4, "image": {"model_name": DEFAULT_BACKBONE}},
        "neuro": {"frequency": 1, "offset": 5},
    },
    "brain_model_config": {"hidden": 1152, "low_rank_head": 2048, "combiner": None,
                           "encoder": {"depth": 8}, "subject_layers": {"subject_dropout": 0.1}},
}
RELEASED_BUILD_ARGS: dict[str, Any] = {
    "feature_dims": {"text": (2, 3072), "audio": (2, 1024), "video": (2, 1408)},
    "n_outputs": N_VERTICES,
    "n_output_timesteps": 100,
}


@dataclass(frozen=True)
class FeatureSpec:
    """How backbone hidden states become the head's video features, and the head's timing.

    Attributes
    ----------
    backbone : str
        Backbone hub id or local folder.
    layer_groups : tuple of tuple of int
        Hidden-state indices averaged into each of the ``L`` groups.
    feature_frequency, output_frequency : float
        Head input rate and fMRI output rate, Hz.
    clip_duration : float or None
        Span of a feature window, s (None: one feature step).
    num_frames : int
        Frames per feature window.
    token_aggregation : str
        How a hidden state's tokens become one vector (``mean``, ``sum``, ``max``, ``first``,
        ``last``).
    segment_trs : int
        fMRI steps per head segment (upstream's ``duration_trs``).
    """

    backbone: str
    layer_groups: tuple[tuple[int, ...], ...]
    feature_frequency: float
    output_frequency: float
    clip_duration: float | None = 4.0
    num_frames: int = VJEPA2_FRAMES
    token_aggregation: str = "mean"
    segment_trs: int = DEFAULT_SEGMENT_TRS

    @property
    def segment_steps(self) -> int:
        """Feature steps per head segment."""
        return round(self.segment_trs * self.feature_frequency / self.output_frequency)


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


def feature_spec(
    config: dict[str, Any], n_backbone_layers: int, n_output_timesteps: int | None = None
) -> FeatureSpec:
    """Backbone name, layer groups, window settings and rates from ``config.yaml``.

    Parameters
    ----------
    config : dict
        The nested config (:func:`read_config`).
    n_backbone_layers : int
        Blocks of the backbone.
    n_output_timesteps : int or None
        The checkpoint's ``n_output_timesteps``: the segment length when the config has no
        ``data.duration_trs``.
    """
    video = _get(config, "data.video_feature", {}) or {}
    image = video.get("image", {}) or {}
    if video.get("max_imsize") is not None:
        raise InputError("TRIBE v2 video option max_imsize is not supported (frames are read at "
                         "their own size)")
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
    num_frames = int(video.get("num_frames") or VJEPA2_FRAMES)
    if not 1 <= num_frames <= VJEPA2_FRAMES:
        raise InputError(f"num_frames must be in 1..{VJEPA2_FRAMES} for V-JEPA2, got {num_frames}")
    tokens = image.get("token_aggregation", "mean")
    if tokens not in TOKEN_AGGREGATIONS:
        raise InputError(f"token_aggregation {tokens!r} is not supported; one of "
                         f"{', '.join(TOKEN_AGGREGATIONS)}")
    clip_duration = video.get("clip_duration")
    segment_trs = _get(config, "data.duration_trs") or n_output_timesteps or DEFAULT_SEGMENT_TRS
    return FeatureSpec(
        backbone=str(image.get("model_name", DEFAULT_BACKBONE)),
        layer_groups=groups,
        feature_frequency=float(_get(config, "data.frequency") or video.get("frequency", 2)),
        output_frequency=float(_get(config, "data.neuro.frequency", 1)),
        clip_duration=None if clip_duration is None else float(clip_duration),
        num_frames=num_frames,
        token_aggregation=str(tokens),
        segment_trs=int(segment_trs),
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
        Layer groups, windows and rates.
    spec : str
        The spec the encoder was loaded from.
    trained : bool
        Whether the weights are trained.
    files : list of Path
        Weight files read.
    protocol : str or StillProtocol
        How :meth:`forward` presents a still image (``paper``, ``static``, ``fast``).
    preprocessing : VideoPreprocessing or None
        The backbone's video processor; None: V-JEPA2's defaults for its crop size.
    window_batch : int
        Windows per backbone call (bounds memory; results do not depend on it).
    gradient_checkpointing : bool
        With a gradient path, keep only each block's input and recompute the block during the
        backward pass: the memory of a 64-frame ViT-g window falls from tens of GB to a few, for
        about one more forward pass. Values and gradients are unchanged.
    """

    kind = "tribev2"
    protocols = PROTOCOLS
    native_inputs = True

    def __init__(
        self,
        backbone: VJEPA2Model,
        head: FmriHead,
        features: FeatureSpec,
        *,
        spec: str,
        trained: bool,
        files: list[Path],
        protocol: str | StillProtocol = DEFAULT_PROTOCOL,
        preprocessing: VideoPreprocessing | None = None,
        window_batch: int = 8,
        gradient_checkpointing: bool = False,
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
        if features.segment_steps > head.config.max_seq_len:
            raise InputError(
                f"segments of {features.segment_steps} feature steps exceed the head's "
                f"max_seq_len {head.config.max_seq_len}"
            )
        crop = int(backbone_config.crop_size)
        self.preprocessing = preprocessing or VideoPreprocessing(
            int(crop * 256 / 224), crop, IMAGENET_MEAN, IMAGENET_STD)
        if self.preprocessing.crop_size != crop:
            raise InputError(f"video processor crops {self.preprocessing.crop_size} pixels, the "
                             f"backbone reads {crop}")
        self.backbone = backbone.encoder
        self.backbone_config = backbone_config
        self.head = head
        self.features_spec = features
        self.spec = spec
        self.trained = trained
        self._files = list(files)
        self.n_layers = backbone_config.num_hidden_layers
        self.input_size = crop
        self.clip_frames = CLIP_FRAMES
        self.window_batch = int(window_batch)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._window_cache: dict[Hashable, torch.Tensor] = {}
        self._set_protocol(protocol)

    def _set_protocol(self, protocol: str | StillProtocol) -> None:
        self.still_protocol = (protocol if isinstance(protocol, StillProtocol)
                               else StillProtocol(protocol))
        self.protocol = self.still_protocol.name
        spec = self.features_spec
        self.still_plan = self.still_protocol.plan(
            spec.feature_frequency, spec.clip_duration, spec.num_frames, spec.output_frequency)

    def with_protocol(self, protocol: str | StillProtocol) -> TribeV2Encoder:
        """The same encoder, sharing its weights and window cache, with another protocol."""
        other = copy.copy(self)
        other._set_protocol(protocol)
        return other

    def config(self) -> dict[str, Any]:
        spec = self.features_spec
        return {
            "backbone": spec.backbone,
            "backbone_layers": self.n_layers,
            "backbone_hidden": self.backbone_config.hidden_size,
            "layer_groups": [list(g) for g in spec.layer_groups],
            "token_aggregation": spec.token_aggregation,
            "feature_frequency": spec.feature_frequency,
            "output_frequency": spec.output_frequency,
            "window_seconds": spec.clip_duration,
            "window_frames": spec.num_frames,
            "segment_trs": spec.segment_trs,
            "preprocessing": {**asdict(self.preprocessing),
                              "interpolation": self.preprocessing.interpolation.value},
            "input_size": self.input_size,
            "clip_frames": self.clip_frames,
            "protocol": self.still_protocol.to_dict(),
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
        """Responses to stills, each presented by the encoder's protocol, ``(B, 20484)``."""
        check_images(images_b3hw)
        return self._still_responses(self.preprocessing(images_b3hw)[:, None], trunc_layer)

    def forward_stills(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Responses to uint8 stills of any sizes, as upstream reads a frame, ``(B, 20484)``.

        Each ``(H_i, W_i, 3)`` image goes through the video processor exactly as a uint8
        video frame does (resize of the uint8 frame from its own size, centre crop,
        normalise), so no resampling happens before the processor's own; the stills are then
        presented by the encoder's protocol as in :meth:`forward`. No gradient path.
        """
        device = next(self.backbone.parameters()).device
        frames = [self.preprocessing(torch.tensor(np.asarray(image))
                                     .permute(2, 0, 1)[None])[0] for image in images]
        frames_bu3ss = torch.stack(frames).to(device)[:, None]
        return self._still_responses(frames_bu3ss, None)

    def _still_responses(self, frames_bu3ss: torch.Tensor, trunc_layer: int | None) -> torch.Tensor:
        """Protocol responses to preprocessed stills ``(B, 1, 3, S, S)``, ``(B, 20484)``."""
        plan = self.still_plan
        constant: dict[int, Hashable] = {}
        if plan.uses_grey:
            level = self.still_protocol.grey_level
            grey = torch.full((1, 3, self.input_size, self.input_size), level, dtype=torch.uint8)
            grey_u3ss = self.preprocessing(grey).to(frames_bu3ss.device)
            frames_bu3ss = torch.cat(
                [frames_bu3ss, grey_u3ss[None].expand(len(frames_bu3ss), -1, -1, -1, -1)], dim=1)
            constant[GREY] = ("grey", level)
        features_bngd = self._window_features(frames_bu3ss, plan.rows, trunc_layer, constant)
        responses_btv = self._head_timecourse(features_bngd)
        return responses_btv[:, plan.read].mean(dim=1).float()

    def forward_timecourse(
        self,
        clips_bt3hw: torch.Tensor,
        trunc_layer: int | None = None,
        fps: float | None = None,
    ) -> torch.Tensor:
        """Response time course to clips of consecutive frames, ``(B, T_out, 20484)``.

        Parameters
        ----------
        clips_bt3hw : torch.Tensor
            Float clips in ``[0, 1]``, ``(B, T, 3, H, W)``; frame ``i`` is shown from ``i / fps``
            to ``(i + 1) / fps``.
        trunc_layer : int or None
            Gradient truncation depth.
        fps : float or None
            Frame rate; None: the frames span :data:`CLIP_SECONDS` (3 s).

        Returns
        -------
        torch.Tensor
            float32, one row per fMRI step the clip overlaps (``T_out = ceil(T / fps)`` at 1 Hz).
        """
        check_clips(clips_bt3hw)
        n_clips, n_frames = clips_bt3hw.shape[:2]
        fps = float(fps) if fps is not None else n_frames / CLIP_SECONDS
        duration = n_frames / fps
        spec = self.features_spec
        indices_nf = window_frame_indices(n_frames, fps, duration, spec.feature_frequency,
                                          spec.clip_duration, spec.num_frames)
        used, rows_nf = np.unique(indices_nf, return_inverse=True)
        selected = clips_bt3hw[:, torch.as_tensor(used, device=clips_bt3hw.device)]
        frames_bu3ss = self.preprocessing(selected.flatten(0, 1)).unflatten(0, (n_clips, len(used)))
        features_bngd = self._window_features(frames_bu3ss, rows_nf.reshape(indices_nf.shape),
                                              trunc_layer)
        n_out = output_steps(duration, spec.output_frequency)
        return self._head_timecourse(features_bngd)[:, :n_out].float()

    def forward_clips(
        self,
        clips_bt3hw: torch.Tensor,
        trunc_layer: int | None = None,
        fps: float | None = None,
    ) -> torch.Tensor:
        """Mean response over the presentation of each clip, ``(B, 20484)``.

        The mean over time of :meth:`forward_timecourse` (same arguments).
        """
        return self.forward_timecourse(clips_bt3hw, trunc_layer, fps).mean(dim=1)

    def read_video(self, payload: bytes) -> VideoWindows:
        """Decode the frames a video file's windows use, resized and cropped (uint8 ``(3, S, S)``).

        The frames and windows are upstream's (:func:`~neuromem.encoders.tribe_video.read_video_windows`).
        """
        spec = self.features_spec
        return read_video_windows(payload, spec.feature_frequency, spec.clip_duration,
                                  spec.num_frames, transform=self._resize_crop_frame)

    def video_features(self, video: VideoWindows, trunc_layer: int | None = None) -> torch.Tensor:
        """Video features of a decoded video, ``(N, L, D)``: what upstream's extractor returns."""
        frames_u3ss = self.preprocessing.normalise(torch.stack(video.frames))
        device = next(self.backbone.parameters()).device
        return self._window_features(frames_u3ss[None].to(device), video.rows, trunc_layer)[0]

    def video_timecourse(self, video: VideoWindows, trunc_layer: int | None = None) -> torch.Tensor:
        """Response time course to a decoded video, ``(T_out, 20484)`` float32.

        One row per fMRI step the video overlaps (``ceil(duration)`` at 1 Hz), as upstream's
        ``TribeModel.predict`` returns them.
        """
        features_ngd = self.video_features(video, trunc_layer)
        n_out = output_steps(video.duration, self.features_spec.output_frequency)
        return self._head_timecourse(features_ngd[None])[0, :n_out].float()

    def _resize_crop_frame(self, pixels_hw3: np.ndarray) -> torch.Tensor:
        frame_13hw = torch.from_numpy(np.ascontiguousarray(pixels_hw3)).permute(2, 0, 1)[None]
        return self.preprocessing.resize_crop(frame_13hw)[0]

    def _window_features(
        self,
        frames_bu3ss: torch.Tensor,
        rows_nf: np.ndarray,
        trunc_layer: int | None,
        constant: dict[int, Hashable] | None = None,
    ) -> torch.Tensor:
        """Features of every window, ``(B, N, L, D)``; each distinct window computed once.

        Parameters
        ----------
        frames_bu3ss : torch.Tensor
            Preprocessed frames of each batch item, ``(B, U, 3, S, S)``.
        rows_nf : numpy.ndarray
            int ``(N, F)``: frame ``j`` of window ``k`` is ``frames_bu3ss[:, rows_nf[k, j]]``.
        trunc_layer : int or None
            Gradient truncation depth.
        constant : dict or None
            Frames that are the same for every batch item and every call, with a key naming
            their content: windows made only of them are computed once per encoder instance.
        """
        constant = constant or {}
        n_items = frames_bu3ss.shape[0]
        unique_wf, inverse_n = np.unique(np.asarray(rows_nf), axis=0, return_inverse=True)
        per_window: list[torch.Tensor | None] = [None] * len(unique_wf)
        varying = []
        for w, row in enumerate(unique_wf):
            if all(int(i) in constant for i in row):
                key = (tuple(constant[int(i)] for i in row), *self._cache_context(frames_bu3ss.device))
                if key not in self._window_cache:
                    with torch.no_grad():
                        self._window_cache[key] = self._pool_windows(frames_bu3ss[:1, row], None)[0]
                per_window[w] = self._window_cache[key].expand(n_items, -1, -1)
            else:
                varying.append(w)
        if varying:
            pairs = [(b, w) for b in range(n_items) for w in varying]
            pooled = []
            for start in range(0, len(pairs), self.window_batch):
                chunk = pairs[start : start + self.window_batch]
                items = torch.as_tensor([b for b, _ in chunk], device=frames_bu3ss.device)
                rows = torch.as_tensor(np.stack([unique_wf[w] for _, w in chunk]),
                                       device=frames_bu3ss.device)
                pooled.append(self._pool_windows(frames_bu3ss[items[:, None], rows], trunc_layer))
            pooled_bvgd = torch.cat(pooled).unflatten(0, (n_items, len(varying)))
            for v, w in enumerate(varying):
                per_window[w] = pooled_bvgd[:, v]
        stacked_bwgd = torch.stack(per_window, dim=1)
        return stacked_bwgd[:, torch.as_tensor(inverse_n.reshape(-1), device=stacked_bwgd.device)]

    def _cache_context(self, device: torch.device) -> tuple[Hashable, ...]:
        """What a cached window's value depends on besides its frames."""
        autocast = torch.is_autocast_enabled(device.type)
        return (str(device), next(self.backbone.parameters()).dtype, autocast,
                torch.get_autocast_dtype(device.type) if autocast else None)

    def _pool_windows(self, pixels_wf3ss: torch.Tensor, trunc_layer: int | None) -> torch.Tensor:
        """Token-aggregated hidden states averaged into layer groups, ``(W, L, D)`` float32."""
        depth = self.check_trunc_layer(trunc_layer)
        wanted = {i for group in self.features_spec.layer_groups for i in group}
        if depth < min(wanted):
            raise InputError(
                f"trunc_layer={depth} leaves no gradient path: the head reads backbone states "
                f"{min(wanted)}..{max(wanted)}; use trunc_layer >= {min(wanted)}"
            )
        dtype = next(self.backbone.parameters()).dtype
        hidden = self.backbone.embeddings(pixels_wf3ss.to(dtype))
        pooled = {0: self._aggregate_tokens(hidden)} if 0 in wanted else {}
        for index, block in enumerate(self.backbone.layer, start=1):
            if index > max(wanted):
                break
            if index > depth and hidden.requires_grad:
                hidden = hidden.detach().requires_grad_(True)
            if self.gradient_checkpointing and index <= depth and hidden.requires_grad:
                hidden = checkpoint(_block_output, block, hidden, use_reentrant=False)
            else:
                hidden = _block_output(block, hidden)
            if index in wanted:
                state = self._aggregate_tokens(hidden)
                pooled[index] = state if index <= depth else state.detach()
        groups = [
            torch.stack([pooled[i] for i in group]).mean(dim=0)
            for group in self.features_spec.layer_groups
        ]
        return torch.stack(groups, dim=1)

    def _aggregate_tokens(self, hidden_btd: torch.Tensor) -> torch.Tensor:
        method = self.features_spec.token_aggregation
        if method == "mean":
            pooled = hidden_btd.mean(dim=1)
        elif method == "sum":
            pooled = hidden_btd.sum(dim=1)
        elif method == "max":
            pooled = hidden_btd.amax(dim=1)
        else:
            pooled = hidden_btd[:, 0 if method == "first" else -1]
        return pooled.float()

    def _head_timecourse(self, features_bngd: torch.Tensor) -> torch.Tensor:
        """Head outputs over whole segments, ``(B, n_segments · segment_trs, 20484)``.

        The ``N`` feature steps fill consecutive segments of ``segment_steps`` steps, the last
        one padded with zeros, as upstream's segments are past the end of a stimulus.
        """
        spec = self.features_spec
        n_items, n_steps = features_bngd.shape[:2]
        n_segments = math.ceil(n_steps / spec.segment_steps)
        padding = n_segments * spec.segment_steps - n_steps
        padded = F.pad(features_bngd, (0, 0, 0, 0, 0, padding))
        segments_sgdt = padded.unflatten(1, (n_segments, spec.segment_steps)).flatten(0, 1)
        outputs_svt = self.head({"video": segments_sgdt.permute(0, 2, 3, 1)}, spec.segment_trs)
        return outputs_svt.permute(0, 2, 1).reshape(n_items, n_segments * spec.segment_trs, -1)


def _block_output(block: torch.nn.Module, hidden_btd: torch.Tensor) -> torch.Tensor:
    return block(hidden_btd, None)[0]


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


def load_video_preprocessing(name: str, crop_size: int) -> VideoPreprocessing:
    """The video processor saved with a backbone (folder or hub id), as upstream loads it.

    Upstream calls ``AutoVideoProcessor.from_pretrained(model_name, do_rescale=True)``. A
    backbone saved without a processor gets transformers' V-JEPA2 defaults for its crop size
    (those of the released ``facebook/vjepa2-vitg-fpc64-256``).
    """
    from transformers import AutoVideoProcessor, VJEPA2VideoProcessor

    try:
        processor = AutoVideoProcessor.from_pretrained(name, do_rescale=True)
    except (OSError, ValueError):
        processor = VJEPA2VideoProcessor(crop_size=crop_size)
    return VideoPreprocessing.from_processor(processor)


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
    config_path: Path, ckpt_path: Path, spec: str, protocol: str | StillProtocol = DEFAULT_PROTOCOL
) -> TribeV2Encoder:
    """Encoder from a ``config.yaml`` and ``best.ckpt`` (backbone named in the config)."""
    config = read_config(config_path)
    state, build_args = load_checkpoint(ckpt_path)
    head = build_head(config, state, build_args)
    name = str(_get(config, "data.video_feature.image.model_name", DEFAULT_BACKBONE))
    backbone, backbone_files = load_backbone(name)
    preprocessing = load_video_preprocessing(name, int(backbone.config.crop_size))
    features = feature_spec(config, backbone.config.num_hidden_layers,
                            build_args.get("n_output_timesteps"))
    return TribeV2Encoder(backbone, head, features, spec=spec, trained=True,
                          files=[ckpt_path, *backbone_files], protocol=protocol,
                          preprocessing=preprocessing)


def load_tribev2_folder(
    folder: str | Path, spec: str | None = None, protocol: str | StillProtocol = DEFAULT_PROTOCOL
) -> TribeV2Encoder:
    """Encoder from a local folder holding ``config.yaml`` and ``best.ckpt``."""
    folder = Path(folder)
    paths = [folder / name for name in WEIGHT_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingWeightsError(
            f"TRIBE v2 folder {str(folder)!r} lacks {', '.join(missing)}; expected "
            f"{' and '.join(WEIGHT_FILES)} as released in {HUB_REPO!r}."
        )
    return load_tribev2_files(*paths, spec=spec or f"tribev2:{folder}", protocol=protocol)


def load_tribev2_hub(
    repo: str = HUB_REPO, spec: str = "tribev2", protocol: str = DEFAULT_PROTOCOL
) -> TribeV2Encoder:
    """Encoder from the hub (the local Hugging Face cache when offline)."""
    config_path, ckpt_path = _hub_files(repo, WEIGHT_FILES)
    return load_tribev2_files(config_path, ckpt_path, spec=spec, protocol=protocol)


def random_backbone(backbone_config: dict[str, Any], seed: int = TINY_SEED) -> VJEPA2Model:
    """Seeded-random V-JEPA2 of the given ``VJEPA2Config`` settings."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VJEPA2Model(VJEPA2Config(**backbone_config)).eval()


def random_head(
    config: dict[str, Any], build_args: dict[str, Any], seed: int = TINY_SEED
) -> FmriHead:
    """Seeded-random head of a config / build-args layout (one subject row).

    Every weight, the subject read-out included, gets random values: a read-out left at
    upstream's initial zeros makes every output and gradient exactly 0.
    """
    head = FmriHead(head_config(config, build_args, n_subject_rows=1))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in head.named_parameters():
            if name.endswith(".g") or name.endswith("residual_scale"):
                continue
            fan_in = param.shape[-2] if name == "predictor.weights" else param.shape[-1]
            param.copy_(torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5)
    return head.eval()


def build_random_tribev2(
    backbone_config: dict[str, Any],
    config: dict[str, Any],
    build_args: dict[str, Any],
    *,
    spec: str,
    seed: int = TINY_SEED,
    protocol: str | StillProtocol = DEFAULT_PROTOCOL,
) -> TribeV2Encoder:
    """An untrained encoder of any layout, seeded-random (tests, cost measurements)."""
    backbone = random_backbone(backbone_config, seed)
    features = feature_spec(config, backbone.config.num_hidden_layers,
                            build_args.get("n_output_timesteps"))
    return TribeV2Encoder(backbone, random_head(config, build_args, seed), features, spec=spec,
                          trained=False, files=[], protocol=protocol)


def build_tiny_tribev2(
    seed: int = TINY_SEED, spec: str = "tribev2:tiny", protocol: str = DEFAULT_PROTOCOL
) -> TribeV2Encoder:
    """The offline test encoder: tiny V-JEPA2 + tiny head, seeded-random, untrained."""
    return build_random_tribev2(TINY_BACKBONE_CONFIG, TINY_CONFIG, TINY_BUILD_ARGS, spec=spec,
                                seed=seed, protocol=protocol)
