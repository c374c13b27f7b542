"""SemDeDup: finds injected near-duplicates, keeps the farthest of a group, greedy over kept members, streams."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.data import kmeans, semdedup
from prunekit.data.cluster import Clusters
from prunekit.data.dedup import greedy_keep, similar_pairs


def _precision_recall(removed: np.ndarray, copy_of: np.ndarray) -> tuple[float, float]:
    """A removal is right if the example belongs to an injected pair (original or copy)."""
    in_pair = np.zeros(len(copy_of), bool)
    in_pair[copy_of >= 0] = True
    in_pair[copy_of[copy_of >= 0]] = True
    tp = int(in_pair[removed].sum())
    return tp / max(1, len(removed)), tp / int((copy_of >= 0).sum())


def test_injected_near_duplicates_found_with_precision_and_recall(dup_embeddings):
    x, copy_of = dup_embeddings
    res = semdedup(x, eps=0.01, n_clusters=20, seed=0)
    p, r = _precision_recall(res.removed.numpy(), copy_of)
    assert p >= 0.95 and r >= 0.95
    dup = res.duplicate_of
    assert (dup[res.kept.numpy()] == -1).all() and (dup[res.removed.numpy()] >= 0).all()
    assert (dup[dup[dup >= 0]] == -1).all()  # every removed example points at a kept one
    assert len(res.kept) + len(res.removed) == len(x)


def test_memmapped_file_gives_the_same_result_as_memory(tmp_path, dup_embeddings):
    x, _ = dup_embeddings
    path = tmp_path / "emb.npy"
    np.save(path, x)
    a = semdedup(x, eps=0.01, n_clusters=20, seed=0)
    b = semdedup(str(path), eps=0.01, n_clusters=20, seed=0, dim=32)
    np.testing.assert_array_equal(a.kept.numpy(), b.kept.numpy())
    with pytest.raises(ValueError, match="width 384"):
        semdedup(str(path), eps=0.01, n_clusters=20, dim=384)


def test_keeps_the_member_farthest_from_the_centroid():
    c = np.array([[1.0, 0.0]], np.float32)
    x = np.array([[1.0, 0.0], [0.995, 0.0998], [0.0, 1.0]], np.float32)  # 0 and 1 are near-duplicates
    cl = Clusters(c, np.zeros(3, np.int64), (x @ c.T).ravel())
    res = semdedup(x, eps=0.01, clusters=cl)
    assert res.kept.tolist() == [1, 2]  # example 1 is farther from the centroid than example 0
    assert res.duplicate_of.tolist() == [1, -1, -1]
    closest = semdedup(x, eps=0.01, clusters=cl, keep="closest")
    assert closest.kept.tolist() == [0, 2]


def test_chain_is_greedy_over_kept_members():
    # pairs A-B and B-C similar, A-C not: B is dropped for A, so C (whose only earlier neighbour B is gone) stays
    pi, pj = np.array([0, 1]), np.array([1, 2])
    assert greedy_keep(3, pi, pj).tolist() == [-1, 0, -1]
    assert greedy_keep(4, np.array([0, 0, 1]), np.array([1, 2, 2])).tolist() == [-1, 0, 0, -1]


def test_similar_pairs_blocks_match_the_full_matrix():
    rng = np.random.default_rng(0)
    e = rng.standard_normal((50, 4)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    s = e @ e.T
    want = {(i, j) for i in range(50) for j in range(i + 1, 50) if s[i, j] > 0.7}
    for rows in (1, 7, 50):
        pi, pj = similar_pairs(e, 0.7, rows)
        assert set(zip(pi.tolist(), pj.tolist())) == want


def test_tiny_eps_removes_only_exact_copies_and_bad_eps_rejected():
    x = np.array([[1, 2], [1, 2], [2, 1], [1, 2.2]], np.float32)  # 1 - cos(x0, x3) = 5.9e-4
    res = semdedup(x, eps=1e-4, n_clusters=1)
    assert len(res.removed) == 1 and res.removed.tolist()[0] in (0, 1)
    assert semdedup(x, eps=1e-3, n_clusters=1).kept.tolist() in ([0, 2], [1, 2], [2, 3])
    with pytest.raises(ValueError, match=r"eps must be a number in \[0, 1.0\]"):
        semdedup(x, eps=-0.1)
    with pytest.raises(ValueError, match="keep must be one of"):
        semdedup(x, eps=0.1, keep="hard")
    with pytest.raises(ValueError, match="n_clusters must be at most"):
        semdedup(x, eps=0.1, n_clusters=10)


def test_kmeans_streams_in_chunks_like_one_pass(monkeypatch, dup_embeddings):
    from prunekit.data import cluster

    x, _ = dup_embeddings
    full = kmeans(x, 8, seed=1)
    monkeypatch.setattr(cluster, "CHUNK_BYTES", 4096)  # chunks of 256 rows
    chunked = kmeans(x, 8, seed=1)
    np.testing.assert_array_equal(full.assign, chunked.assign)
    np.testing.assert_allclose(full.cosine, chunked.cosine, atol=1e-6)


def test_file_rows_are_read_window_by_window(monkeypatch, tmp_path):
    from prunekit.data import cluster

    x = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(cluster, "CHUNK_BYTES", 4096)  # windows of 256 rows
    emb = cluster.Embeddings(str(tmp_path / "x.npy"))
    idx = np.array([0, 3, 255, 256, 257, 700, 999])
    np.testing.assert_array_equal(emb.take(idx), x[idx])
    starts = [s for s, _ in emb.chunks()]
    assert starts == [0, 256, 512, 768]
    np.testing.assert_array_equal(np.concatenate([b for _, b in emb.chunks()]), x)
