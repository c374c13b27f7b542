"""Input files of the data commands: every bad one is a clear error naming it, before any work (issue 17, item 6)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.data.checks import open_npy
from prunekit.data.cluster import Embeddings

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.random((40, 8), dtype=np.float32)
    np.save(tmp_path / "ok.npy", emb)
    emb[5, 1] = np.nan
    np.save(tmp_path / "nan.npy", emb)
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("one,two\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "scores.npy", rng.random(40))
    np.save(tmp_path / "labels30.npy", np.zeros(30, dtype=np.int64))
    return tmp_path


@pytest.mark.parametrize("name, message", [
    ("empty.npy", r"is empty \(0 bytes\)"), ("text.npy", "is not a NumPy .npy file"),
    ("objects.npy", "never unpickles"), ("missing.npy", "does not exist"), ("ok.npy", "must hold a 1-D array"),
])
def test_open_npy_refuses_bad_files_naming_them(files, name, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message) as e:
        open_npy(files / name, "scores", ndim=1)
    assert name in str(e.value)


def test_nan_embeddings_are_refused_with_the_row(files):
    with pytest.raises(ValueError, match=r"nan\.npy.*rows \[5\]"):
        Embeddings(str(files / "nan.npy"))
    assert Embeddings(str(files / "ok.npy")).n == 40


@pytest.mark.parametrize("args, message", [
    (["dedup", "--embeddings", "nan.npy", "--clusters", "4"], "NaN or infinite values"),
    (["dedup", "--embeddings", "empty.npy"], "is empty"),
    (["score", "--method", "prototype", "--embeddings", "nan.npy", "--clusters", "4"], "NaN or infinite"),
    (["select", "--scores", "text.npy", "--keep", "0.5"], "is not a NumPy .npy file"),
    (["select", "--scores", "scores.npy", "--keep", "0.5", "--labels", "labels30.npy"], "has 30 entries"),
])
def test_data_commands_refuse_bad_files_rc2_nothing_written(files, monkeypatch, args, message):
    monkeypatch.chdir(files)
    r = runner.invoke(app, ["data", *args, "--out", "result"])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not list(files.glob("result*"))
