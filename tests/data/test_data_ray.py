"""The Ray Data backend gives the same embeddings, prototype scores and SemDeDup kept rows as local (local Ray)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="the Ray backend is an optional extra: pip install 'prunekit[ray]'")

from prunekit.data import RandomConvEncoder, embed, kmeans, prototype, semdedup  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # raised inside Ray's own DataContext
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ray_backend_matches_local(local_ray, tmp_path):
    x = torch.randn(600, 40, generator=torch.Generator().manual_seed(0))
    enc = RandomConvEncoder(dim=16, seed=0)
    local = embed(enc, x, batch_size=100)
    remote = embed(enc, x, out=tmp_path / "e.npy", batch_size=100, backend="ray")
    np.testing.assert_allclose(np.asarray(remote), local, rtol=1e-5, atol=1e-6)

    cl_local = kmeans(str(tmp_path / "e.npy"), 5, seed=0)
    cl_ray = kmeans(str(tmp_path / "e.npy"), 5, seed=0, backend="ray")  # file rows read on the workers
    np.testing.assert_array_equal(cl_local.centroids, cl_ray.centroids)
    np.testing.assert_array_equal(cl_local.assign, cl_ray.assign)
    np.testing.assert_allclose(cl_local.cosine, cl_ray.cosine, atol=1e-6)
    s_local = prototype(local, n_clusters=5, seed=0)
    s_ray = prototype(local, n_clusters=5, seed=0, backend="ray")  # in-memory rows via the object store
    torch.testing.assert_close(s_local, s_ray, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_grand_on_ray_matches_local(local_ray):
    from torch.utils.data import TensorDataset

    from prunekit.data import grand

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(50, 2, 5, generator=g), torch.randint(0, 3, (50,), generator=g))
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 3)) for _ in range(2)]
    local = grand(models, ds, batch_size=16)
    remote = grand(models, ds, batch_size=16, backend="ray")
    torch.testing.assert_close(remote, local, rtol=1e-6, atol=1e-9)
    # hand check of one example for a linear model: ||dCE/dW||_F = ||softmax(z) - onehot(y)|| * ||x||, same for b
    x, y = ds[0]
    norms = []
    for m in models:
        p = torch.softmax(m(x[None]), -1)[0].detach()
        r = p - torch.nn.functional.one_hot(y, 3).float()
        norms.append(float(r.norm() * (x.flatten().norm() ** 2 + 1).sqrt()))
    assert abs(float(local[0]) - sum(norms) / 2) < 1e-5
    with pytest.raises(ValueError, match="backend"):
        grand(models, ds, backend="dask")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_semdedup_on_ray_keeps_the_same_rows_and_cli_runs_on_ray(local_ray, tmp_path, dup_embeddings):
    import json

    from typer.testing import CliRunner

    from prunekit.cli import app

    x, _ = dup_embeddings
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "a.npy", x[:900])
    np.save(tmp_path / "shards" / "b.npy", x[900:])  # rows read by the workers from the shard files
    local = semdedup(x, eps=0.01, n_clusters=20, seed=0)
    r = CliRunner().invoke(app, ["data", "dedup", "--embeddings", str(tmp_path / "shards"), "--eps", "0.01",
                                 "--clusters", "20", "--backend", "ray", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert man["backend"]["ran"] == "ray" and man["stats"]["backend"] == "ray"  # semdedup(..., backend="ray")
    assert man["stats"]["cross_cluster_pairs_of_clusters"] > 0 and man["num_kept"] == len(local.kept)
    np.testing.assert_array_equal(np.load(tmp_path / "d" / "kept.npy"), local.kept.numpy())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_parquet_texts_embed_on_ray_like_local(local_ray, tmp_path, tiny_encoder):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prunekit.data.embed import MiniLMEncoder
    from prunekit.data.texts import ParquetTexts

    docs = [" ".join(["the", "cat", "dog", "sat", "ran"][j % 5] for j in range(i % 7 + 1)) for i in range(40)]
    pq.write_table(pa.table({"text": docs}), tmp_path / "t.parquet", row_group_size=9)  # 5 row groups
    enc = MiniLMEncoder(max_length=16, path=str(tiny_encoder))
    local = embed(enc, docs, batch_size=8)
    remote = embed(enc, ParquetTexts(tmp_path / "t.parquet"), out=tmp_path / "e.npy", batch_size=8, backend="ray")
    np.testing.assert_allclose(np.asarray(remote), local, rtol=1e-5, atol=1e-6)  # workers read the row groups
