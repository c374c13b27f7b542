"""SimCLR encoder for prototype scores: NT-Xent by hand, augmentations, shapes, seed, loss, clusters, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prunekit.data import embed, nt_xent, prototype, train_contrastive
from prunekit.data.ssl import augment


def test_nt_xent_matches_hand_computed_value():
    # two orthonormal examples, identical views, tau 1: every anchor sees cos 1 to its positive and
    # cos 0 to the two others, so l = -log(e / (e + 1 + 1)) = log(e + 2) - 1 for all four anchors
    z = torch.eye(2)
    assert nt_xent(z, z.clone(), temperature=1.0).item() == pytest.approx(math.log(math.e + 2) - 1, abs=1e-6)
    # tau 0.5 doubles the logits: -log(e^2 / (e^2 + 2))
    assert nt_xent(z, z.clone(), temperature=0.5).item() == pytest.approx(math.log(math.e ** 2 + 2) - 2, abs=1e-6)


def test_augment_shift_is_a_bounded_circular_roll_and_mask_spans_channels():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)  # (B, C, L)
    v = augment(x, torch.Generator().manual_seed(0), shift=0.2, scale=0.0, noise=0.0, mask=0.0)
    for b in range(2):  # shift 0.2 of 10 positions: a roll by -2 ... 2, the same for every channel
        assert any(torch.equal(v[b], torch.roll(x[b], s, dims=-1)) for s in range(-2, 3))
    m = augment(x + 1, torch.Generator().manual_seed(1), shift=0.0, scale=0.0, noise=0.0, mask=0.5)
    zero = m == 0
    assert torch.equal(m[~zero], (x + 1)[~zero])  # kept values unchanged
    assert zero.any() and torch.equal(zero, zero[:, :1].expand_as(zero))  # a masked position is masked in all channels
    img = torch.ones(4, 1, 6, 6)
    s = augment(img, torch.Generator().manual_seed(2), shift=0.0, scale=0.5, noise=0.0, mask=0.0)
    f = s.flatten(1)
    assert torch.equal(f, f[:, :1].expand_as(f)) and ((f >= 0.5) & (f <= 1.5)).all()  # one factor per example


def test_shapes_for_signals_flat_rows_and_images():
    g = torch.Generator().manual_seed(0)
    sig = torch.randn(24, 20, generator=g)
    enc = train_contrastive(sig, epochs=1, batch_size=8, dim=8, width=4)
    e = embed(enc, sig)
    assert e.shape == (24, 8) and e.dtype == np.float32 and len(enc.losses) == 1
    img = torch.rand(10, 1, 6, 6, generator=g)
    enc = train_contrastive(img, epochs=2, batch_size=4, dim=6, width=4)
    flat = embed(enc, img.reshape(10, -1))  # flat rows are reshaped to the training shape
    np.testing.assert_allclose(flat, embed(enc, img), rtol=1e-6)
    assert flat.shape == (10, 6) and len(enc.losses) == 2
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
    assert prototype(flat, n_clusters=2).shape == (10,)


def test_same_seed_same_encoder_and_global_rng_untouched():
    x = torch.randn(30, 16, generator=torch.Generator().manual_seed(3))
    state = torch.get_rng_state()
    a = train_contrastive(x, epochs=2, batch_size=10, dim=8, width=4, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_contrastive(x, epochs=2, batch_size=10, dim=8, width=4, seed=5)
    c = train_contrastive(x, epochs=2, batch_size=10, dim=8, width=4, seed=6)
    assert a.losses == b.losses
    assert np.array_equal(embed(a, x), embed(b, x))
    assert not np.array_equal(embed(a, x), embed(c, x))


def _two_clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow waves (period 16) and fast alternation (period 2), random phase and amplitude, length 32."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(32, dtype=torch.float32)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    amp = 0.8 + 0.4 * torch.rand(n, 1, generator=g)
    slow = amp * torch.sin(2 * math.pi * t / 16 + phase)
    fast = amp * torch.cos(math.pi * t + phase.round())
    x = torch.cat([slow, fast]) + 0.05 * torch.randn(2 * n, 32, generator=g)
    return x, torch.cat([torch.zeros(n), torch.ones(n)]).long()


def test_loss_decreases_and_two_clusters_are_closer_within_than_across():
    x, y = _two_clusters(64, seed=0)
    enc = train_contrastive(x, epochs=15, batch_size=32, dim=16, width=8, seed=0)
    assert enc.losses[-1] < enc.losses[0] - 0.1
    e = torch.nn.functional.normalize(torch.from_numpy(embed(enc, x)), dim=1)
    cos = e @ e.T  # (128, 128)
    same = y[:, None] == y[None, :]
    off = ~torch.eye(len(y), dtype=torch.bool)
    within, across = cos[same & off].mean().item(), cos[~same].mean().item()
    assert within > across + 0.4  # an untrained encoder gives 0.07-0.2 here (seeds 0-2), trained 0.58-0.75
    # and every example's nearest other example is from its own cluster
    nearest = cos.masked_fill(~off, -2).argmax(1)
    assert torch.equal(y[nearest], y)


@pytest.mark.parametrize("x, kwargs, match", [
    (torch.zeros(0, 10), {}, "at least 2 examples"),
    (torch.zeros(1, 10), {}, "at least 2 examples"),
    (torch.zeros(10), {}, "2 to 4 dims"),
    (torch.zeros(4, 1, 2, 3, 3), {}, "2 to 4 dims"),
    (torch.full((4, 5), float("nan")), {}, "NaN"),
    (torch.zeros(4, 5), {"epochs": 0}, "epochs must be an integer >= 1"),
    (torch.zeros(4, 5), {"epochs": -2}, "epochs must be an integer >= 1"),
    (torch.zeros(4, 5), {"batch_size": 1}, "batch_size must be an integer >= 2"),
    (torch.zeros(4, 5), {"temperature": 0.0}, "temperature must be > 0"),
    (torch.zeros(4, 5), {"mask": 1.0}, r"mask must be a number in \[0, 1.0\)"),
])
def test_bad_input_is_a_clear_value_error(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_contrastive(x, **kwargs)
