"""User data: .npz and .csv round trips, stratified split, and each bad-input error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.zoo import load_csv, load_npz, load_user_data

X = np.arange(24, dtype=np.float64).reshape(12, 2) / 4  # (12, 2)
Y = np.array([0, 1, 2] * 4)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_npz_round_trip(tmp_path: Path) -> None:
    np.savez(tmp_path / "upper.npz", X=X, y=Y)
    np.savez(tmp_path / "lower.npz", x=X.astype(np.float32), y=Y.astype(np.int32))
    for name in ("upper.npz", "lower.npz"):
        x, y = load_npz(tmp_path / name)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, torch.tensor(X, dtype=torch.float32)) and y.tolist() == Y.tolist()


def test_npz_images_keep_their_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "img.npz", X=np.zeros((4, 1, 3, 3)), y=np.array([0, 1, 0, 1]))
    assert load_npz(tmp_path / "img.npz")[0].shape == (4, 1, 3, 3)


def test_csv_header_label_column_anywhere(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "d.csv", "a,label,b\n1.5,0,2\n3,1,4\n5,1, 6\n")
    x, y = load_csv(p)
    assert x.tolist() == [[1.5, 2.0], [3.0, 4.0], [5.0, 6.0]] and y.tolist() == [0, 1, 1]


def test_csv_label_choices(tmp_path: Path) -> None:
    no_header = write_csv(tmp_path / "n.csv", "1,2,0\n3,4,1\n")
    x, y = load_csv(no_header)  # last column
    assert x.tolist() == [[1.0, 2.0], [3.0, 4.0]] and y.tolist() == [0, 1]
    x, y = load_csv(no_header, label_column=0)
    assert x.tolist() == [[2.0, 0.0], [4.0, 1.0]] and y.tolist() == [1, 3]
    named = write_csv(tmp_path / "h.csv", "f1,f2,cls\n1,2,0\n3,4,2.0\n")
    assert load_csv(named)[1].tolist() == [0, 2]  # no "label" column: the last one
    assert load_csv(named, label_column="f1")[1].tolist() == [1, 3]


def test_load_user_data_split(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", X=X, y=Y)
    d = load_user_data(tmp_path / "set.npz", test_fraction=0.25, seed=0)
    assert d.name == "set" and d.num_classes == 3 and d.meta["format"] == "npz"
    assert len(d.y_train) == 9 and torch.bincount(d.y_test).tolist() == [1, 1, 1]
    rows = {tuple(r) for r in torch.cat([d.x_train, d.x_test]).tolist()}
    assert rows == {tuple(r) for r in X.astype(np.float32).tolist()}
    assert torch.equal(load_user_data(tmp_path / "set.npz", test_fraction=0.25, seed=0).x_test, d.x_test)
    assert not torch.equal(load_user_data(tmp_path / "set.npz", test_fraction=0.25, seed=1).x_test, d.x_test)
    body = "".join(f"{a},{b},{c}\n" for (a, b), c in zip(X.tolist(), Y.tolist()))
    c = load_user_data(write_csv(tmp_path / "set.csv", "p,q,label\n" + body), test_fraction=0.25, seed=0)
    assert torch.equal(c.x_test, d.x_test) and torch.equal(c.y_train, d.y_train)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        load_user_data(tmp_path / "nothere.npz")
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        load_csv(tmp_path / "nothere.csv")


def test_npz_without_xy_lists_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "k.npz", features=X, labels=Y)
    expected = r"expected arrays 'X' \(or 'x'\) and 'y', found keys \['features', 'labels'\]"
    with pytest.raises(ValueError, match=expected):
        load_npz(tmp_path / "k.npz")


def test_npz_with_objects_is_not_unpickled(tmp_path: Path) -> None:
    np.savez(tmp_path / "o.npz", X=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "o.npz")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (X, Y.astype(float) + 0.5, "non-integer label 0.5"),
        (X, np.array(["a", "b", "c"] * 4), "dtype <U1"),
        (X, -Y, "negative label -2"),
        (X, Y[:10], "X has 12 rows but y has 10 labels"),
        (np.where(X > 5, np.nan, X), Y, "NaN or infinite values in 2 rows \\(first at row 10\\)"),
        (X[:, 0], Y, "shape \\(examples, features...\\)"),
        (X, Y.reshape(6, 2), "y must be 1-D"),
    ],
)
def test_bad_arrays(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    np.savez(tmp_path / "bad.npz", X=x, y=y)
    with pytest.raises(ValueError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_bad_csv_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row 3, column 'b' holds 'x'"):
        load_csv(write_csv(tmp_path / "a.csv", "a,b,label\n1,2,0\n3,x,1\n"))
    with pytest.raises(ValueError, match="NaN"):
        load_csv(write_csv(tmp_path / "b.csv", "a,b,label\n1,,0\n3,4,1\n"))
    with pytest.raises(ValueError, match="label column 'label'.*dtype <U3 \\(e.g. 'cat'\\)"):
        load_csv(write_csv(tmp_path / "c.csv", "a,label\n1,cat\n2,dog\n"))
    with pytest.raises(ValueError, match="row 3 has 2 columns but row 1 has 3"):
        load_csv(write_csv(tmp_path / "d.csv", "a,b,label\n1,2,0\n3,4\n"))
    with pytest.raises(ValueError, match="'zzz' is not a column; columns: \\['a', 'b', 'label'\\]"):
        load_csv(write_csv(tmp_path / "e.csv", "a,b,label\n1,2,0\n"), label_column="zzz")
    with pytest.raises(ValueError, match="needs a header row"):
        load_csv(write_csv(tmp_path / "f.csv", "1,2,0\n"), label_column="label")
    with pytest.raises(ValueError, match="position in \\[-3, 3\\)"):
        load_csv(write_csv(tmp_path / "g.csv", "1,2,0\n"), label_column=3)
    with pytest.raises(ValueError, match="header but no data rows"):
        load_csv(write_csv(tmp_path / "h.csv", "a,b,label\n"))
    with pytest.raises(ValueError, match="non-integer label 1.5"):
        load_csv(write_csv(tmp_path / "i.csv", "a,label,b\n1.5,0,2\n"), label_column="a")


def test_load_user_data_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test_fraction"):  # checked before the (missing) file
        load_user_data(tmp_path / "missing.npz", test_fraction=1.0)
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(ValueError, match="unsupported file type '.json'; accepted: .npz, .csv"):
        load_user_data(tmp_path / "d.json")
    np.savez(tmp_path / "ok.npz", X=X, y=Y)
    with pytest.raises(ValueError, match="label_column applies to .csv"):
        load_user_data(tmp_path / "ok.npz", label_column="y")
    with pytest.raises(TypeError, match="path must be"):
        load_npz(3)
