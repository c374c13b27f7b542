"""GraNd, random and prototype scores; the score registry; noisy labels are flagged by AUM and EL2N."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.data import DATA_SCORES, DynamicsRecorder, aum, el2n, grand, per_example_grad_norm, prob_aum, prototype
from prunekit.data import random_scores as rand_scores
from prunekit.data.cluster import Clusters, cluster_complexity
from prunekit.training import fit


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a positive outscores a negative (ties count half)."""
    pos, neg = score[positive], score[~positive]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def test_registry_names_every_score():
    assert DATA_SCORES.names() == ["aum", "el2n", "entropy", "forgetting", "grand", "loss", "prob-aum", "prototype",
                                   "random", "random-score"]  # random-score: the registry name
    with pytest.raises(ValueError, match="accepted: aum, el2n"):
        DATA_SCORES.get("el2m")


def test_grand_matches_a_loop_of_single_example_gradients(make_mlp, blob_data):
    x, y = blob_data[0][:12], blob_data[1][:12]
    m = make_mlp(0)
    fast = per_example_grad_norm(m, x, y)
    for i in range(12):
        m.zero_grad()
        nn.functional.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
        slow = torch.cat([p.grad.flatten() for p in m.parameters()]).norm()
        assert float(fast[i]) == pytest.approx(float(slow), rel=1e-4)


def test_grand_averages_over_models_and_batches(make_mlp, blob_data):
    x, y = blob_data[0][:20], blob_data[1][:20]
    m0, m1 = make_mlp(0), make_mlp(1)
    g = grand([m0, m1], (x, y), batch_size=7)
    want = (per_example_grad_norm(m0, x, y) + per_example_grad_norm(m1, x, y)) / 2
    torch.testing.assert_close(g, want.double(), rtol=1e-5, atol=1e-7)
    assert m0.training  # mode restored
    with pytest.raises(TypeError, match="nn.Module"):
        grand([], (x, y))


def test_random_scores_are_seeded():
    assert torch.equal(rand_scores(50, seed=3), rand_scores(50, seed=3))
    assert not torch.equal(rand_scores(50, seed=3), rand_scores(50, seed=4))
    with pytest.raises(ValueError, match="num_examples"):
        rand_scores(0)


def test_prototype_is_cosine_distance_to_nearest_centroid():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 1]], np.float32) * 5  # scale does not matter
    s = prototype(x, n_clusters=2, seed=0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert s.shape == (5,)
    assert s.argmax() == 4  # the diagonal point is farthest from both prototypes
    assert float(s.min()) >= -1e-6 and float(s.max()) <= 1 - float(xn[4] @ xn[0]) + 1e-6


def test_cluster_complexity_by_hand():
    c = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    cos = np.array([1.0, 0.8, 0.6, 0.9], np.float32)
    cl = Clusters(c, np.array([0, 0, 1, 2]), cos)
    comp = cluster_complexity(cl, n_neighbors=1)
    # d_intra = (0 + 0.2)/2, 0.4, 0.1; nearest other centroid cosine: 0 for all three -> d_inter = 1
    assert comp.tolist() == pytest.approx([0.1, 0.4, 0.1], abs=1e-6)


def test_aum_and_el2n_flag_symmetric_label_noise(tmp_path, make_blobs, make_mlp):
    x, y = make_blobs(n=600, d=8, classes=3, seed=2, spread=1.0)
    gen = torch.Generator().manual_seed(0)
    noisy = torch.rand(600, generator=gen) < 0.2
    y_noisy = y.clone()
    y_noisy[noisy] = (y[noisy] + torch.randint(1, 3, (int(noisy.sum()),), generator=gen)) % 3
    runs = []
    for seed in (0, 1):
        rec = DynamicsRecorder(tmp_path / str(seed), 600)
        fit(make_mlp(seed), (x, y_noisy), epochs=8, batch_size=64, lr=0.05, callbacks=[rec], seed=seed)
        runs.append(rec.dynamics())
    flag = noisy.numpy()
    assert _auroc(aum(runs).numpy(), flag) >= 0.9
    assert _auroc(el2n(runs, epoch=2).numpy(), flag) >= 0.9
    assert _auroc(prob_aum(runs).numpy(), flag) >= 0.9
