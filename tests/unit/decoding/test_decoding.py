"""Contrastive brain-to-image decoding on synthetic brain data with a known pairing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from neuromem.decoding.contrastive import BrainSignalEncoder, info_nce, retrieval_accuracy


def test_info_nce_matches_the_written_formula():
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    scale = torch.tensor(2.0)
    sims = F.normalize(v, dim=1) @ F.normalize(w, dim=1).T * scale.exp()
    by_row = -torch.log(torch.exp(sims.diagonal()) / torch.exp(sims).sum(1))
    by_col = -torch.log(torch.exp(sims.diagonal()) / torch.exp(sims).sum(0))
    assert torch.allclose(info_nce(v, w, scale), 0.5 * (by_row.mean() + by_col.mean()))


def test_retrieval_accuracy_counts_ranks():
    image = torch.eye(4)
    brain = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.9, 0, 0], [0.5, 0.6, 0, 1.0], [0, 0, 0, 1.0]])
    acc = retrieval_accuracy(brain, image, ks=(1, 2))
    assert acc[1] == 0.5  # rows 0 and 3 rank their own image first
    assert acc[2] == 0.75  # row 1 ranks its image second, row 2 fourth


def _train_and_evaluate(signals, images, n_train, seed=0, steps=300):
    torch.manual_seed(seed)
    model = BrainSignalEncoder(signals.shape[1], images.shape[1], hidden=128, dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n_train, (128,), generator=g)
        loss = info_nce(model(signals[idx]), images[idx], model.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return retrieval_accuracy(model(signals[n_train:]), images[n_train:])


def test_retrieval_far_above_chance_and_at_chance_when_shuffled():
    rng = np.random.default_rng(0)
    n_train, n_test, dim, n_channels = 1500, 200, 32, 96
    images = torch.tensor(rng.normal(size=(n_train + n_test, dim)), dtype=torch.float32)
    mixing = torch.tensor(rng.normal(size=(dim, n_channels)), dtype=torch.float32)
    signals = images @ mixing + 2.0 * torch.randn(n_train + n_test, n_channels, generator=torch.Generator().manual_seed(1))
    acc = _train_and_evaluate(signals, images, n_train)
    assert acc[1] > 0.30 and acc[5] > 0.6  # chance: 0.005 and 0.025
    shuffled = images[torch.randperm(n_train + n_test, generator=torch.Generator().manual_seed(2))]
    null = _train_and_evaluate(signals, shuffled, n_train)
    assert null[1] < 0.03 and null[5] < 0.08
