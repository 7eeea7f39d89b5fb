"""Contrastive brain-to-image decoding on synthetic brain data with a known pairing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neuromem.decoding.contrastive import (
    BrainSignalEncoder,
    evaluate_retrieval,
    info_nce,
    retrieval_accuracy,
    train_contrastive,
)
from neuromem.errors import InputError


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


def test_constant_or_broken_embeddings_score_chance_not_perfection():
    rng = torch.Generator().manual_seed(0)
    images = torch.randn(200, 16, generator=rng)
    for brain, image in ((torch.ones(200, 16), torch.ones(200, 16)),   # all equal
                         (torch.zeros(200, 16), torch.zeros(200, 16)),  # all zero
                         (torch.ones(200, 16), images),                  # constant brain
                         (torch.full((200, 16), torch.nan), images)):    # non-finite
        acc = retrieval_accuracy(brain, image)
        assert acc[1] <= 0.01 and acc[5] <= 0.03


def test_ties_are_averaged_and_non_finite_rows_are_misses():
    image = torch.eye(4)
    # row 0 ties its own image with image 1: half a hit at top-1, a full hit at top-2
    brain = torch.tensor([[1.0, 1.0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    acc = retrieval_accuracy(brain, image, ks=(1, 2))
    assert acc[1] == pytest.approx((0.5 + 3) / 4) and acc[2] == 1.0
    brain[2, 0] = torch.nan  # its row is a miss, the others are unchanged
    assert retrieval_accuracy(brain, image, ks=(1,))[1] == pytest.approx((0.5 + 2) / 4)
    broken = image.clone()
    broken[3] = torch.inf  # a broken candidate: its own row misses, it outranks nobody
    acc = retrieval_accuracy(torch.eye(4), broken, ks=(1,))
    assert acc[1] == pytest.approx(3 / 4)


def test_diverging_training_and_broken_encoders_stop_with_a_clear_error():
    net = BrainSignalEncoder(6, 4, hidden=8)
    signals = torch.randn(20, 6)
    signals[3, 0] = torch.nan
    with pytest.raises(InputError, match="lower --lr"):
        train_contrastive(net, net.logit_scale, signals, torch.randn(20, 4), epochs=1,
                          batch_size=20, lr=1e-3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match="non-finite"):
        evaluate_retrieval(net, signals, torch.randn(20, 4))


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
