"""Built-in data sets: shapes, dtypes, label ranges, seeds, the registry, argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.zoo import DATASETS, DataSplit, digits, get_dataset, mnist1d, stratified_split


@pytest.fixture(scope="module")
def standard() -> DataSplit:
    return mnist1d()


def check_split(d: DataSplit, n_train: int, n_test: int, example: tuple[int, ...]) -> None:
    assert d.x_train.shape == (n_train, *example) and d.x_test.shape == (n_test, *example)
    assert d.y_train.shape == (n_train,) and d.y_test.shape == (n_test,)
    assert d.x_train.dtype == d.x_test.dtype == torch.float32
    assert d.y_train.dtype == d.y_test.dtype == torch.int64
    for y in (d.y_train, d.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < d.num_classes
    assert d.train[0] is d.x_train and d.test[1] is d.y_test


def test_mnist1d_standard_split(standard: DataSplit) -> None:
    check_split(standard, 4000, 1000, (40,))
    assert standard.num_classes == 10 and standard.name == "mnist1d"
    assert torch.bincount(torch.cat([standard.y_train, standard.y_test])).tolist() == [500] * 10
    x = torch.cat([standard.x_train, standard.x_test])
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3  # the generator standardises


def test_mnist1d_seeds_and_sizes(standard: DataSplit) -> None:
    again, other = mnist1d(num_samples=500), mnist1d(num_samples=500, seed=7)
    assert torch.equal(again.x_train, mnist1d(num_samples=500).x_train)
    assert not torch.equal(again.x_train, other.x_train)
    check_split(mnist1d(num_samples=1234, train_split=0.5), 615, 615, (40,))  # 123 per class, 1230 rows


def test_mnist1d_large() -> None:
    check_split(mnist1d(num_samples=10000), 8000, 2000, (40,))


def test_mnist1d_noise_and_global_rng() -> None:
    state = np.random.get_state()
    clean, noisy = mnist1d(num_samples=200, noise=0.0), mnist1d(num_samples=200)
    assert np.array_equal(np.random.get_state()[1], state[1])  # mnist1d seeds numpy globally; we restore it
    assert torch.equal(clean.y_train, noisy.y_train)  # same seed: same labels and transforms, other noise
    assert not torch.allclose(clean.x_train, noisy.x_train)


def test_digits() -> None:
    d = digits()
    check_split(d, 1347, 450, (1, 8, 8))
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    assert set(d.y_test.tolist()) == set(range(10))
    flat = digits(flat=True)
    check_split(flat, 1347, 450, (64,))
    assert torch.equal(flat.x_train, d.x_train.flatten(1))
    assert not torch.equal(digits(seed=1).y_train, d.y_train)


def test_stratified_split_keeps_class_ratios() -> None:
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 2)
    tr, te = stratified_split(y, 0.3, seed=0)
    assert torch.bincount(y[te]).tolist() == [3, 6, 1]
    assert sorted(torch.cat([tr, te]).tolist()) == list(range(32))
    assert torch.equal(te, torch.sort(te).values)
    assert torch.equal(stratified_split(y, 0.3, seed=0)[1], te)


def test_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"mnist1d", "digits", "stdlib-text"} <= set(DATASETS.names())
    assert get_dataset("digits", flat=True).x_train.shape == (1347, 64)
    import prunekit.zoo.text as text

    calls = []
    monkeypatch.setattr(text, "stdlib_corpus", lambda **kw: calls.append(kw) or ["doc"])
    assert get_dataset("stdlib-text", max_docs=3) == ["doc"]
    assert calls == [{"max_docs": 3, "min_chars": 200}]
    with pytest.raises(ValueError, match="accepted: .*digits.*mnist1d"):
        get_dataset("cifar10")


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        mnist1d(num_samples=5)
    with pytest.raises(ValueError, match="train_split"):
        mnist1d(train_split=1.0)
    with pytest.raises(ValueError, match="noise"):
        mnist1d(noise=-1)
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=0)
    with pytest.raises(ValueError, match="flat"):
        digits(flat="yes")
