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


def _split_pair() -> tuple[np.ndarray, Clusters]:
    """Rows 0 and 1 are 3 degrees apart (cosine 0.9986) but on either side of the bisector of c0, c1."""
    deg = np.deg2rad([47.0, 44.0])
    x = np.stack([np.cos(deg), np.sin(deg), np.zeros(2)], 1)  # row 0 at 47 deg (cluster 1), row 1 at 44 (cluster 0)
    x = np.concatenate([x, [[0.0, 0.0, 1.0]]]).astype(np.float32)
    c = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    a = np.array([1, 0, 2])
    return x, Clusters(c, a, np.einsum("nd,nd->n", x, c[a]))


def test_pair_split_across_clusters_is_found_and_keeps_one_member():
    x, cl = _split_pair()
    single = semdedup(x, eps=0.01, clusters=cl, cross_cluster=False)
    assert single.kept.tolist() == [0, 1, 2]  # the within-cluster pass misses the split pair
    far = semdedup(x, eps=0.01, clusters=cl)
    # cosine to own centroid: row 0 cos(43 deg) = 0.731, row 1 cos(44 deg) = 0.719 -> row 1 is farther, kept
    assert far.kept.tolist() == [1, 2] and far.duplicate_of.tolist() == [1, -1, -1]
    assert far.stats["cross_cluster_pairs_of_clusters"] == 1 and far.stats["pairs_found"] == 1
    assert semdedup(x, eps=0.01, clusters=cl, keep="closest").kept.tolist() == [0, 2]
    assert semdedup(x, eps=0.01, clusters=cl, keep="first").kept.tolist() == [0, 2]
    assert semdedup(x, eps=0.001, clusters=cl).kept.tolist() == [0, 1, 2]  # 1 - 0.9986 > 0.001: no pair


def _brute_pairs(x: np.ndarray, threshold: float) -> set:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u.astype(np.float64) @ u.T.astype(np.float64)
    i, j = np.nonzero(np.triu(s > threshold, 1))
    return set(zip(i.tolist(), j.tolist()))


def test_exact_search_finds_every_pair_of_the_all_pairs_ground_truth():
    from prunekit.data.cluster import Embeddings, assign_boundary
    from prunekit.data.dedup import all_pairs

    rng = np.random.default_rng(3)
    base = rng.standard_normal((800, 8))  # isotropic in 8-d: many copies land across a cluster boundary
    src = rng.choice(800, 300, replace=False)
    x = np.concatenate([base, base[src] + 0.08 * rng.standard_normal((300, 8))]).astype(np.float32)
    eps = 0.02
    cl = kmeans(x, 30, seed=0)
    emb = Embeddings(x)
    _, _, boundary = assign_boundary(emb, cl.centroids, np.sqrt(2 * eps), known=cl.assign)
    pi, pj, _ = all_pairs(emb, cl.assign, 30, boundary, 1 - eps)
    want = _brute_pairs(x, 1 - eps)
    got = {(min(i, j), max(i, j)) for i, j in zip(pi.tolist(), pj.tolist())}
    assert got == want and len(want) > 100
    within, _, _ = all_pairs(emb, cl.assign, 30, None, 1 - eps)
    assert len(within) <= len(want) - 3  # the single-cluster pass misses split pairs on this data (293 of 299)
    res = semdedup(x, eps=eps, clusters=cl)
    kept = set(res.kept.tolist())
    assert not any(i in kept and j in kept for i, j in want)  # no pair above the threshold survives
    assert all((res.duplicate_of[i] >= 0) or (res.duplicate_of[j] >= 0) for i, j in want)


@pytest.mark.parametrize("keep", ["farthest", "closest", "random", "first"])
def test_result_does_not_depend_on_cluster_numbering(keep, dup_embeddings):
    x, _ = dup_embeddings
    cl = kmeans(x, 12, seed=0)
    perm = np.random.default_rng(1).permutation(12)  # cluster c becomes perm[c]: another visiting order
    inv = np.argsort(perm)
    relabelled = Clusters(cl.centroids[inv], perm[cl.assign], cl.cosine)
    a = semdedup(x, eps=0.01, clusters=cl, keep=keep, seed=5)
    b = semdedup(x, eps=0.01, clusters=relabelled, keep=keep, seed=5)
    np.testing.assert_array_equal(a.duplicate_of, b.duplicate_of)
    assert len(a.removed) >= 140  # most of the 150 injected copies (jitter 0.01, eps 0.01)


def test_keep_rules_pick_the_documented_member():
    x = np.array([[1.0, 0.0], [1.0, 1e-4], [1.0, -1e-4], [0.0, 1.0]], np.float32)  # rows 0-2: one group
    cl = Clusters(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([0, 0, 0, 1]),
                  np.array([1.0, 0.99, 0.98, 1.0], np.float32))  # cosines given: row 2 farthest, row 0 closest
    assert semdedup(x, eps=0.01, clusters=cl).kept.tolist() == [2, 3]
    assert semdedup(x, eps=0.01, clusters=cl, keep="closest").kept.tolist() == [0, 3]
    assert semdedup(x, eps=0.01, clusters=cl, keep="first").kept.tolist() == [0, 3]
    r = [semdedup(x, eps=0.01, clusters=cl, keep="random", seed=s).kept.tolist() for s in range(8)]
    assert all(len(k) == 2 and k[-1] == 3 for k in r) and len({k[0] for k in r}) > 1  # seeded, varies by seed
    assert r[0] == semdedup(x, eps=0.01, clusters=cl, keep="random", seed=0).kept.tolist()


def test_clusters_that_are_not_nearest_centroid_are_rejected():
    x, cl = _split_pair()
    wrong = Clusters(cl.centroids, np.array([0, 0, 2]), cl.cosine)  # row 0 is nearer c1 but put in cluster 0
    with pytest.raises(ValueError, match="not the nearest-centroid assignment"):
        semdedup(x, eps=0.01, clusters=wrong)
    assert len(semdedup(x, eps=0.01, clusters=wrong, cross_cluster=False).kept) == 2  # same cluster pair found


def test_folder_of_npy_shards_reads_like_one_file(tmp_path, dup_embeddings):
    x, _ = dup_embeddings
    (tmp_path / "shards").mkdir()
    for i, (a, b) in enumerate([(0, 700), (700, 701), (701, len(x))]):
        np.save(tmp_path / "shards" / f"part-{i:02d}.npy", x[a:b])
    from prunekit.data.cluster import Embeddings

    emb = Embeddings(str(tmp_path / "shards"))
    assert (emb.n, emb.d) == x.shape
    idx = np.array([0, 699, 700, 701, len(x) - 1])
    np.testing.assert_array_equal(emb.take(idx), x[idx])
    np.testing.assert_array_equal(np.concatenate([b for _, b in emb.chunks(256)]), x)
    a = semdedup(x, eps=0.01, n_clusters=20, seed=0)
    b = semdedup(str(tmp_path / "shards"), eps=0.01, n_clusters=20, seed=0)
    np.testing.assert_array_equal(a.duplicate_of, b.duplicate_of)
    np.save(tmp_path / "shards" / "part-03.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="shards must share width"):
        Embeddings(str(tmp_path / "shards"))


def test_cli_backend_ray_where_ray_adds_nothing_runs_locally_and_says_why(tmp_path):
    import json

    from typer.testing import CliRunner

    from prunekit.cli import app

    np.save(tmp_path / "s.npy", np.arange(20, dtype=np.float64))
    r = CliRunner().invoke(app, ["data", "select", "--scores", str(tmp_path / "s.npy"), "--keep", "0.5",
                                 "--backend", "ray", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["backend"]["ran"] == "local" and "nothing to distribute" in man["backend"]["why"]
    r = CliRunner().invoke(app, ["data", "resample", "--method", "rs2", "--num-examples", "10", "--ray-address",
                                 "auto", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "--ray-address needs --backend ray" in r.output and not (tmp_path / "r").exists()


def test_cross_pairs_groups_boundary_entries_by_cluster_pair():
    from prunekit.data.cluster import Boundary
    from prunekit.data.dedup import cross_pairs

    assign = np.array([0, 0, 1, 1, 2])
    # (row -> other cluster): 0->1 and 2->0, 3->0 meet in pair (0, 1); 1->2 has no partner side (dropped);
    # 3->2 and 4->1 meet in pair (1, 2)
    b = Boundary(np.array([4, 0, 1, 2, 3, 3]), np.array([1, 1, 2, 0, 0, 2]))
    plan = cross_pairs(assign, b, 3)
    assert plan.rows.tolist() == [0, 2, 3, 3, 4]
    assert plan.start.tolist() == [0, 3] and plan.na.tolist() == [1, 1] and plan.nb.tolist() == [2, 1]
    assert plan.comparisons() == 3 and len(plan) == 2
    runs = plan.runs(3)  # 3 entries per run: pair (0, 1) alone, then pair (1, 2)
    assert [r.rows.tolist() for r in runs] == [[0, 2, 3], [3, 4]] and runs[1].start.tolist() == [0]
    assert len(cross_pairs(assign, Boundary(np.empty(0, np.int64), np.empty(0, np.int64)), 3)) == 0
    other = cross_pairs(assign, b, 2**31)  # keys that would overflow int64: the lexsort path
    assert [v.tolist() for v in (other.rows, other.start, other.na, other.nb)] == [
        [0, 2, 3, 3, 4], [0, 3], [1, 1], [2, 1]]


def _pairs_cluster_pair_by_cluster_pair(x, assign, boundary, threshold):
    """The previous search, as a reference: one product per cluster pair of its two boundary sets."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    own = assign[boundary.rows]
    found = set()
    for lo, hi in {(min(a, c), max(a, c)) for a, c in zip(own.tolist(), boundary.cluster.tolist())}:
        ra = boundary.rows[(own == lo) & (boundary.cluster == hi)]
        rb = boundary.rows[(own == hi) & (boundary.cluster == lo)]
        i, j = np.nonzero(u[ra] @ u[rb].T > threshold)
        found |= {(min(a, b), max(a, b)) for a, b in zip(ra[i].tolist(), rb[j].tolist())}
    return found


@pytest.mark.parametrize("chunk,threads,joint,dense", [(64 << 20, 1, True, 16), (1 << 12, 1, True, 0),
                                                       (64 << 20, 1, False, 16), (1 << 12, 2, False, 16)])
def test_batched_cross_search_finds_the_pairs_of_the_pair_by_pair_search(monkeypatch, chunk, threads, joint, dense):
    import torch

    from prunekit.data import cluster, dedup
    from prunekit.data.cluster import Embeddings, assign_boundary
    from prunekit.data.dedup import all_pairs, greedy_global, visit_rank

    rng = np.random.default_rng(7)
    base = rng.standard_normal((1500, 4))  # isotropic 4-d: many boundary rows, cluster pairs of varied sizes
    src = rng.choice(1500, 500, replace=False)
    x = np.concatenate([base, base[src] + 0.1 * rng.standard_normal((500, 4))]).astype(np.float32)
    eps = 0.02
    cl = kmeans(x, 40, seed=0)
    # a small budget: many runs of pairs, small padded batches and the one-by-one path for large pairs
    monkeypatch.setattr(dedup, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(cluster, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(dedup, "DENSE_FRACTION", dense)  # 0: no pair takes the padded product, all gathered
    emb = Embeddings(x)
    _, _, boundary = assign_boundary(emb, cl.centroids, np.sqrt(2 * eps), known=cl.assign)
    if not joint:  # no gaps: every row pair of a cluster pair goes through the padded batched products
        boundary = cluster.Boundary(boundary.rows, boundary.cluster)
    torch.set_num_threads(threads)  # 2: the batches run on a pool of 2 Python threads (restored by the fixture)
    pi, pj, stats = all_pairs(emb, cl.assign, 40, boundary, 1 - eps)
    assert torch.get_num_threads() == threads
    within, wj, _ = all_pairs(emb, cl.assign, 40, None, 1 - eps)
    across = {(min(a, b), max(a, b)) for a, b in zip(pi.tolist(), pj.tolist())} - set(zip(within.tolist(),
                                                                                           wj.tolist()))
    want = _pairs_cluster_pair_by_cluster_pair(x, cl.assign, boundary, 1 - eps)
    assert across == want and len(want) > 400 and len(pi) == len(within) + len(want)  # no pair twice
    assert stats["across_jobs"] > (1 if chunk < 1 << 20 else 0)
    plan = dedup.cross_pairs(cl.assign, boundary, 40)
    big = dedup._size_class(plan.na) * dedup._size_class(plan.nb) > chunk // 16
    assert big.any() == (chunk < 1 << 20) and not big.all()  # the small budget also takes the one-by-one path
    if joint:  # the joint bound leaves a fraction of the boundary sets' row pairs, and every true pair
        ia, ib, per_pair = dedup._joint_candidates(plan)
        assert 0 < len(ia) < 0.7 * plan.comparisons() and per_pair.sum() == len(ia)
        dense_pairs = per_pair * 16 > dedup._size_class(plan.na) * dedup._size_class(plan.nb)
        assert dense_pairs.any() and not dense_pairs.all()  # the default splits this data between both paths
        cand = {(min(a, b), max(a, b)) for a, b in zip(plan.rows[ia].tolist(), plan.rows[ib].tolist())}
        assert want <= cand
    ri, rj = np.array(sorted(want)).T
    ref_i, ref_j = np.r_[within, ri], np.r_[wj, rj]
    order = visit_rank(cl.cosine, "farthest")
    np.testing.assert_array_equal(greedy_global(len(x), pi, pj, order), greedy_global(len(x), ref_i, ref_j, order))
    assert set(zip(*_brute(x, 1 - eps))) <= {(min(a, b), max(a, b)) for a, b in zip(pi.tolist(), pj.tolist())}


def _brute(x: np.ndarray, threshold: float) -> tuple[list, list]:
    i, j = zip(*sorted(_brute_pairs(x, threshold)))
    return list(i), list(j)


def test_dense_boundary_test_matches_the_per_candidate_test():
    from prunekit.data.cluster import BoundaryRows, normalize

    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 5)).astype(np.float32)
    cent = normalize(rng.standard_normal((12, 5)).astype(np.float32))
    dense = BoundaryRows(cent, 0.3)
    sparse = BoundaryRows(cent, 0.3)
    sparse.limit = None  # the per-candidate path (used when the (k, k) table would not fit CHUNK_BYTES)
    a, b = dense(x), sparse(x)
    got = sorted(zip(a["row"].tolist(), a["cluster"].tolist()))
    assert got == sorted(zip(b["row"].tolist(), b["cluster"].tolist())) and len(got) > 400
    own = a["cluster"][:300]
    # hand check for every (row, other cluster): x.c_own - x.c_j < sin(t) |c_own - c_j| + slack, where the
    # chord 0.3 = 2 sin(t / 2) gives sin(t) = 0.3 sqrt(1 - 0.3^2 / 4)
    u = normalize(x.copy())
    s = u @ cent.T
    w = np.linalg.norm(cent[own][:, None, :] - cent[None], axis=2)
    want = (s[np.arange(300), own][:, None] - s < 0.3 * np.sqrt(1 - 0.0225) * w + 1e-4) & (
        np.arange(12)[None] != own[:, None])
    assert got == sorted(list(zip(range(300), own.tolist())) +
                         list(zip(*(v.tolist() for v in np.nonzero(want)))))


def test_plan_built_per_anchor_bucket_finds_the_same_pairs(monkeypatch):
    from prunekit.data import dedup
    from prunekit.data.cluster import Embeddings, assign_boundary
    from prunekit.data.dedup import all_pairs, entry_buckets

    rng = np.random.default_rng(3)
    base = rng.standard_normal((1200, 4))
    x = np.concatenate([base, base[:400] + 0.1 * rng.standard_normal((400, 4))]).astype(np.float32)
    eps, k = 0.02, 30
    cl = kmeans(x, k, seed=0)
    emb = Embeddings(x)
    _, _, boundary = assign_boundary(emb, cl.centroids, np.sqrt(2 * eps), known=cl.assign)
    e = len(boundary.rows)
    lo = np.minimum(cl.assign[boundary.rows], boundary.cluster)
    buckets = list(entry_buckets(cl.assign, boundary, k, max_entries=e // 7))
    assert 5 <= len(buckets) <= 8
    ranges = []
    for b in buckets:  # whole anchor clusters, disjoint ranges in order, gaps carried along
        blo = np.minimum(cl.assign[b.rows], b.cluster)
        ranges.append((int(blo.min()), int(blo.max())))
        assert len(b.rows) == len(b.gap) <= e // 7 + np.bincount(lo).max()
    assert all(r1[1] < r2[0] for r1, r2 in zip(ranges, ranges[1:]))
    got = sorted(zip(np.concatenate([b.rows for b in buckets]).tolist(),
                     np.concatenate([b.cluster for b in buckets]).tolist()))
    assert got == sorted(zip(boundary.rows.tolist(), boundary.cluster.tolist()))  # every entry exactly once
    assert [len(b.rows) for b in entry_buckets(cl.assign, boundary, k)] == [e]  # default budget: one plan

    pi, pj, stats = all_pairs(emb, cl.assign, k, boundary, 1 - eps)
    monkeypatch.setattr(dedup, "PLAN_BYTES", dedup.PLAN_BYTES_PER_ENTRY * (e // 7))
    bi, bj, bstats = all_pairs(emb, cl.assign, k, boundary, 1 - eps)
    assert stats["plan_buckets"] == 1 and bstats["plan_buckets"] == len(buckets)
    assert sorted(zip(pi.tolist(), pj.tolist())) == sorted(zip(bi.tolist(), bj.tolist())) and len(pi) > 300
    for key in ("cross_cluster_pairs_of_clusters", "cross_cluster_candidate_rows", "cross_cluster_comparisons"):
        assert bstats[key] == stats[key] > 0
