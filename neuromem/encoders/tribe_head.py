"""The TRIBE v2 fMRI head: multi-layer backbone features over time → 20,484 vertex time courses.

An independent implementation of the head architecture described by the TRIBE v2 paper and
checkpoint format (``facebook/tribev2``): its parameter names and shapes match the released
``best.ckpt`` state dict (with the ``model.`` prefix removed), so that state dict loads unchanged.

Computation, for features ``x[m]`` of each modality ``m`` shaped ``(B, L, D, T)``:

1. per modality, layers are concatenated (``(B, T, L·D)``) and projected to ``hidden / M``
   (``M`` modalities); modalities absent from the input contribute zeros;
2. the modalities are concatenated (``(B, T, hidden)``) and combined (a linear map, or identity);
3. a learned time position embedding is added and a pre-norm transformer encoder is applied
   (ScaleNorm, rotary position embedding on part of each head, GELU feed-forward, residual
   branches scaled by a learned per-channel vector, final ScaleNorm);
4. an optional low-rank linear bottleneck, then the per-subject linear read-out to the vertices
   (``weights[s]`` ``(C, V)``, ``bias[s]`` ``(V,)``); the "average subject" row is used;
5. adaptive average pooling over time to ``n_output_timesteps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP

from neuromem.errors import InputError


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of the fMRI head (the ``brain_model_config`` section of ``config.yaml``).

    Attributes
    ----------
    feature_dims : dict
        Modality → ``(n_layers, feature_dim)`` or None (no projector), in checkpoint order.
    n_outputs : int
        Number of vertices (20,484 for fsaverage5).
    hidden : int
        Width of the transformer.
    depth, heads, ff_mult : int
        Transformer depth (attention + feed-forward pairs), heads, feed-forward expansion.
    max_seq_len : int
        Length of the learned time position embedding.
    low_rank_head : int or None
        Width of the linear bottleneck before the read-out.
    combiner : bool
        Whether a linear combiner follows the modality concatenation.
    projector_hidden_sizes, combiner_hidden_sizes : tuple of int
        Hidden layers of the projector / combiner MLPs (empty: one linear map).
    projector_norm, combiner_norm : str or None
        ``"layer"`` or None: normalisation inside projector / combiner MLPs with hidden layers.
    n_subject_rows : int
        Rows of the per-subject read-out in the checkpoint.
    average_row : int or None
        Row used as the "average subject" (the shared dropout-subject row); None averages all
        rows' weights.
    subject_bias : bool
        Whether the read-out has a bias.
    time_pos_embedding : bool
        Whether the time position embedding exists.
    """

    feature_dims: dict[str, tuple[int, int] | None]
    n_outputs: int
    hidden: int = 256
    depth: int = 12
    heads: int = 8
    ff_mult: int = 4
    max_seq_len: int = 1024
    low_rank_head: int | None = None
    combiner: bool = True
    projector_hidden_sizes: tuple[int, ...] = ()
    combiner_hidden_sizes: tuple[int, ...] = ()
    projector_norm: str | None = "layer"
    combiner_norm: str | None = "layer"
    n_subject_rows: int = 1
    average_row: int | None = 0
    subject_bias: bool = True
    time_pos_embedding: bool = True

    @property
    def modality_width(self) -> int:
        return self.hidden // len(self.feature_dims)


def _mlp(in_dim: int, out_dim: int, hidden_sizes: tuple[int, ...], norm: str | None) -> nn.Module:
    if not hidden_sizes:
        return nn.Linear(in_dim, out_dim)
    norm_layer = {"layer": nn.LayerNorm, None: None}[norm]
    return MLP(in_dim, [*hidden_sizes, out_dim], norm_layer=norm_layer, activation_layer=nn.GELU)


class ScaleNorm(nn.Module):
    """``x / ||x|| · sqrt(dim) · g`` with one learned scalar ``g``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.g


class ScaledResidual(nn.Module):
    """``branch + residual · residual_scale`` (learned per channel)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.residual_scale = nn.Parameter(torch.ones(dim))

    def forward(self, branch: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return branch + residual * self.residual_scale


class RotaryFrequencies(nn.Module):
    """Rotary angles ``t · base^(-2i/dim)`` for positions ``t``, duplicated to ``dim`` columns."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", base ** (-torch.arange(0, dim, 2).float() / dim))

    def forward(self, n_positions: int) -> torch.Tensor:
        positions = torch.arange(n_positions, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles_tf = positions[:, None] * self.inv_freq[None, :]
        return torch.cat([angles_tf, angles_tf], dim=-1)


def _rotate(x_bhtd: torch.Tensor, angles_tr: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``r`` features of each head by ``angles`` (half-split pairing)."""
    n_rot = angles_tr.shape[-1]
    rotated, passthrough = x_bhtd[..., :n_rot], x_bhtd[..., n_rot:]
    first, second = rotated.chunk(2, dim=-1)
    swapped = torch.cat([-second, first], dim=-1)
    rotated = rotated * angles_tr.cos() + swapped * angles_tr.sin()
    return torch.cat([rotated, passthrough], dim=-1)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with rotary position embedding, no biases."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def forward(self, x_btd: torch.Tensor, angles_tr: torch.Tensor) -> torch.Tensor:
        n_batch, n_time, dim = x_btd.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n_batch, n_time, self.heads, dim // self.heads).transpose(1, 2)

        q = _rotate(split(self.to_q(x_btd)), angles_tr)
        k = _rotate(split(self.to_k(x_btd)), angles_tr)
        v = split(self.to_v(x_btd))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(n_batch, n_time, dim))


class FeedForward(nn.Module):
    """``Linear → GELU → Linear`` with expansion ``mult``."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        # index layout (ff.0.0, ff.2) follows the checkpoint's parameter names
        self.ff = nn.Sequential(
            nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()),
            nn.Identity(),
            nn.Linear(dim * mult, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class TransformerEncoder(nn.Module):
    """Pre-norm transformer: ``depth`` × (attention, feed-forward), then a final ScaleNorm.

    ``layers[i]`` is ``(norms, branch, residual)`` with ``norms = (pre-norm, None, None)``, the
    layout of the checkpoint's ``encoder.layers.{i}.{0,1,2}`` parameter names.
    """

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int) -> None:
        super().__init__()
        if dim % heads or dim // heads < 32:
            raise InputError(f"head width hidden/heads must be an integer >= 32, got {dim}/{heads}")
        self.rotary_pos_emb = RotaryFrequencies(max(dim // heads // 2, 32))
        self.layers = nn.ModuleList()
        for _ in range(depth):
            for branch in (SelfAttention(dim, heads), FeedForward(dim, ff_mult)):
                norms = nn.ModuleList([ScaleNorm(dim), None, None])
                self.layers.append(nn.ModuleList([norms, branch, ScaledResidual(dim)]))
        self.final_norm = ScaleNorm(dim)

    def forward(self, x_btd: torch.Tensor) -> torch.Tensor:
        angles_tr = self.rotary_pos_emb(x_btd.shape[1]).to(x_btd.dtype)
        for norms, branch, residual in self.layers:
            normed = norms[0](x_btd)
            out = branch(normed, angles_tr) if isinstance(branch, SelfAttention) else branch(normed)
            x_btd = residual(out, x_btd)
        return self.final_norm(x_btd)


class SubjectReadout(nn.Module):
    """Per-subject linear read-out; predicts for the "average subject" row."""

    def __init__(self, config: HeadConfig, in_dim: int) -> None:
        super().__init__()
        self.average_row = config.average_row
        self.weights = nn.Parameter(torch.zeros(config.n_subject_rows, in_dim, config.n_outputs))
        self.bias = (
            nn.Parameter(torch.zeros(config.n_subject_rows, config.n_outputs))
            if config.subject_bias
            else None
        )

    def forward(self, x_bct: torch.Tensor) -> torch.Tensor:
        if self.average_row is None:
            weight_cv = self.weights.mean(dim=0)
            bias_v = self.bias.mean(dim=0) if self.bias is not None else None
        else:
            weight_cv = self.weights[self.average_row]
            bias_v = self.bias[self.average_row] if self.bias is not None else None
        out_bvt = torch.einsum("bct,cv->bvt", x_bct, weight_cv)
        return out_bvt if bias_v is None else out_bvt + bias_v[None, :, None]


class FmriHead(nn.Module):
    """The TRIBE v2 head (see module docstring); parameter names match ``best.ckpt``."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        width = config.modality_width
        self.projectors = nn.ModuleDict()
        for modality, dims in config.feature_dims.items():
            if dims is not None:
                n_layers, dim = dims
                self.projectors[modality] = _mlp(
                    n_layers * dim, width, config.projector_hidden_sizes, config.projector_norm
                )
        concat_width = width * len(config.feature_dims)
        self.combiner = (
            _mlp(concat_width, config.hidden, config.combiner_hidden_sizes, config.combiner_norm)
            if config.combiner
            else nn.Identity()
        )
        if config.low_rank_head is not None:
            self.low_rank_head = nn.Linear(config.hidden, config.low_rank_head, bias=False)
        self.predictor = SubjectReadout(config, config.low_rank_head or config.hidden)
        if config.time_pos_embedding:
            self.time_pos_embed = nn.Parameter(torch.zeros(1, config.max_seq_len, config.hidden))
        self.encoder = TransformerEncoder(config.hidden, config.depth, config.heads, config.ff_mult)

    def forward(
        self, features: dict[str, torch.Tensor], n_output_timesteps: int
    ) -> torch.Tensor:
        """Vertex time courses.

        Parameters
        ----------
        features : dict of str to torch.Tensor
            Modality → ``(B, L, D, T)`` backbone features (``L`` layer groups, ``T`` steps).
            Modalities of ``config.feature_dims`` that are missing contribute zeros.
        n_output_timesteps : int
            Output time steps (adaptive average pooling over ``T``).

        Returns
        -------
        torch.Tensor
            ``(B, n_outputs, n_output_timesteps)``.
        """
        unknown = set(features) - set(self.projectors)
        if unknown or not features:
            raise InputError(
                f"head expects features for {sorted(self.projectors)}, got {sorted(features)}"
            )
        reference = next(iter(features.values()))
        n_batch, n_time = reference.shape[0], reference.shape[-1]
        dtype = next(self.parameters()).dtype
        parts = []
        for modality in self.config.feature_dims:
            if modality in features:
                x_bldt = features[modality].to(dtype)
                x_btf = x_bldt.flatten(1, 2).transpose(1, 2)
                parts.append(self.projectors[modality](x_btf))
            else:
                parts.append(
                    torch.zeros(n_batch, n_time, self.config.modality_width, dtype=dtype,
                                device=reference.device)
                )
        x_bth = self.combiner(torch.cat(parts, dim=-1))
        if self.config.time_pos_embedding:
            if n_time > self.config.max_seq_len:
                raise InputError(f"at most {self.config.max_seq_len} time steps, got {n_time}")
            x_bth = x_bth + self.time_pos_embed[:, :n_time]
        x_bth = self.encoder(x_bth)
        if self.config.low_rank_head is not None:
            x_bth = self.low_rank_head(x_bth)
        out_bvt = self.predictor(x_bth.transpose(1, 2))
        return F.adaptive_avg_pool1d(out_bvt, n_output_timesteps)
