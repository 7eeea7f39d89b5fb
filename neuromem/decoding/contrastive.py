"""Symmetric InfoNCE (CLIP) loss with a learned temperature, a brain-signal encoder, and
top-k retrieval among held-out images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BrainSignalEncoder(nn.Module):
    """MLP from a brain signal to an image model's embedding space.

    Inputs of any trailing shape are flattened: vertex or ROI responses ``(B, V)`` or EEG/MEG
    ``(B, channels, time)``.

    Parameters
    ----------
    n_inputs : int
        Number of values per sample after flattening.
    embed_dim : int
        Dimension of the image embeddings to align with.
    hidden : int
        Width of the hidden layers.
    n_hidden_layers : int
        Residual hidden blocks (Linear → GELU → Dropout → LayerNorm).
    dropout : float
    init_temperature : float
        Initial softmax temperature τ; ``log(1/τ)`` is learned, clamped at 100 as in CLIP.
    """

    def __init__(
        self,
        n_inputs: int,
        embed_dim: int,
        *,
        hidden: int = 1024,
        n_hidden_layers: int = 1,
        dropout: float = 0.5,
        init_temperature: float = 0.07,
    ) -> None:
        super().__init__()
        self.input = nn.Sequential(nn.Linear(n_inputs, hidden), nn.GELU(), nn.Dropout(dropout))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.LayerNorm(hidden))
            for _ in range(n_hidden_layers)
        )
        self.output = nn.Linear(hidden, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, embed_dim)`` of signals ``(B, ...)``."""
        h = self.input(signals.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.output(h)


def info_nce(
    brain_bd: torch.Tensor, image_bd: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE loss between paired brain and image embeddings.

    ``−½ mean_i [log softmax_j(s·cos(v_i, w_j))_i + log softmax_j(s·cos(w_i, v_j))_i]`` with
    ``s = exp(logit_scale) = 1/τ`` (clamped at 100).
    """
    v = F.normalize(brain_bd, dim=-1)
    w = F.normalize(image_bd, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * v @ w.T
    labels = torch.arange(len(v), device=v.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def retrieval_accuracy(
    brain_nd: torch.Tensor, image_nd: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[int, float]:
    """Top-k accuracy of retrieving each sample's image among all ``N`` candidates.

    Parameters
    ----------
    brain_nd, image_nd : Tensor, shape (N, D)
        Row ``i`` of each is the same stimulus. Chance is ``k / N`` (0.5 % / 2.5 % for N = 200).

    Returns
    -------
    dict
        ``k`` → fraction of rows whose true image ranks in the top ``k`` by cosine similarity.
    """
    sims = F.normalize(brain_nd, dim=-1) @ F.normalize(image_nd, dim=-1).T
    true = sims.diagonal()[:, None]
    rank = (sims > true).sum(1)  # ties resolved in the model's favour
    return {k: float((rank < k).float().mean()) for k in ks}
