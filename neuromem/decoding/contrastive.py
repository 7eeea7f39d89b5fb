"""Symmetric InfoNCE (CLIP) loss with a learned temperature, a brain-signal encoder, its
training loop, and top-k retrieval among held-out images."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from neuromem.errors import InputError


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

    Candidates are ranked by cosine similarity. Ties are averaged: a true image tied with
    ``t`` other candidates, below ``g`` better ones, lands at each of the positions
    ``g … g + t`` with equal probability, so it counts ``clip((k − g) / (t + 1), 0, 1)`` toward
    top-k — constant or all-zero embeddings score chance (``k / N``), not 100 %. A row whose
    brain or image embedding is not finite is a miss, and a non-finite candidate never outranks
    a true image.

    Parameters
    ----------
    brain_nd, image_nd : Tensor, shape (N, D)
        Row ``i`` of each is the same stimulus. Chance is ``k / N`` (0.5 % / 2.5 % for N = 200).

    Returns
    -------
    dict
        ``k`` → expected fraction of rows whose true image ranks in the top ``k``.
    """
    brain = brain_nd.double()
    image = image_nd.double()
    finite_brain = torch.isfinite(brain).all(1)
    finite_image = torch.isfinite(image).all(1)
    sims = F.normalize(torch.nan_to_num(brain), dim=-1) @ F.normalize(
        torch.nan_to_num(image), dim=-1).T
    sims[:, ~finite_image] = -torch.inf  # broken candidates are never preferred
    true = sims.diagonal()[:, None]
    better = (sims > true).sum(1).double()
    tied = (sims == true).sum(1).double() - 1  # other candidates with the true image's score
    valid = finite_brain & finite_image
    return {k: float(torch.where(valid, ((k - better) / (tied + 1)).clamp(0, 1),
                                 torch.zeros_like(better)).mean()) for k in ks}


def train_contrastive(
    model: nn.Module,
    logit_scale: torch.Tensor,
    signals_n: torch.Tensor,
    embeddings_nd: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    on_step: Callable[[float], None] | None = None,
) -> None:
    """Train a brain encoder with :func:`info_nce` (AdamW, weight decay 0.01), in place.

    Each epoch draws ``len // batch_size`` batches without replacement (a new order per epoch).

    Parameters
    ----------
    model : nn.Module
        The encoder (possibly DDP-wrapped) mapping signals to embeddings.
    logit_scale : Tensor
        Its learned ``log(1/τ)`` (a parameter of ``model``).
    signals_n : Tensor, shape (N, ...)
        Training signals.
    embeddings_nd : Tensor, shape (N, D)
        Image embeddings paired with them.
    epochs, batch_size : int
    lr : float
    generator : torch.Generator
        Draws the batch order.
    device : torch.device or str
    on_step : callable or None
        Called with each step's loss.

    Raises
    ------
    InputError
        When the loss is not finite (a learning rate too high, or broken inputs).
    """
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    batch = min(batch_size, len(signals_n))
    steps = max(1, len(signals_n) // batch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(signals_n), generator=generator)
        for step in range(steps):
            rows = order[step * batch:(step + 1) * batch]
            loss = info_nce(model(signals_n[rows].to(device)), embeddings_nd[rows].to(device),
                            logit_scale)
            if not torch.isfinite(loss):
                raise InputError(f"the contrastive loss became {loss.item()}; lower --lr")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if on_step is not None:
                on_step(loss.item())


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches :func:`train_contrastive` draws per epoch from ``n_rows`` rows."""
    return max(1, n_rows // max(1, min(batch_size, n_rows)))


@torch.inference_mode()
def evaluate_retrieval(encoder: BrainSignalEncoder, test_signals: torch.Tensor,
                       test_embeddings: torch.Tensor, ks: tuple[int, ...] = (1, 5),
                       device: torch.device | str = "cpu") -> dict[int, float]:
    """Top-k retrieval of the held-out images from their brain signals (:func:`retrieval_accuracy`).

    Raises
    ------
    InputError
        When the encoder's embeddings of the test signals are not finite (training diverged).
    """
    encoder.eval()
    brain = encoder(test_signals.to(device)).cpu()
    if not torch.isfinite(brain).all():
        raise InputError("the trained brain encoder gives non-finite embeddings (training "
                         "diverged); lower --lr")
    return retrieval_accuracy(brain, test_embeddings)
