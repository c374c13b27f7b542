"""Bad input gets clear errors before anything is written; selections round-trip with their manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prunekit.data import load_selection, save_selection, select
from prunekit.data.checks import as_labels, as_scores, check_embeddings, keep_count
from prunekit.data.cluster import Embeddings, prototype


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.5", None, True])
def test_keep_fraction_out_of_range_names_argument(bad):
    with pytest.raises(ValueError, match=r"keep_fraction.*\(0, 1\]"):
        select(torch.rand(10), bad, "keep-hard")


def test_keep_fraction_one_keeps_all_and_small_keeps_at_least_one():
    assert select(torch.rand(10), 1.0, "keep-hard").tolist() == list(range(10))
    assert len(select(torch.rand(10), 0.01, "keep-easy")) == 1
    assert keep_count(1000, 0.1) == 100 and keep_count(7, 0.5) == 4  # round half to even: 3.5 -> 4


def test_nan_and_inf_scores_rejected_with_positions():
    s = torch.tensor([0.1, float("nan"), 0.3, float("nan")])
    with pytest.raises(ValueError, match=r"NaN \(2 of 4, e.g. at positions \[1, 3\]\)"):
        as_scores(s)
    with pytest.raises(ValueError, match="infinite"):
        select(np.array([1.0, np.inf]), 0.5, "random")
    with pytest.raises(ValueError, match="1-D"):
        as_scores(torch.zeros(2, 2))


def test_labels_outside_classes_rejected():
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got values \[3, 7\]"):
        as_labels(np.array([0, 3, 1, 7]), 4, num_classes=3)
    with pytest.raises(ValueError, match="non-negative"):
        select(torch.rand(3), 0.5, "class-balanced", labels=[0, -1, 1])
    with pytest.raises(TypeError, match="integers"):
        as_labels(np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="one label per example"):
        select(torch.rand(3), 0.5, "class-balanced", labels=[0, 1])


def test_embeddings_of_wrong_width_rejected(tmp_path):
    with pytest.raises(ValueError, match="width 384.*got width 8"):
        check_embeddings(np.zeros((4, 8), np.float32), 384)
    path = tmp_path / "e.npy"
    np.save(path, np.zeros((5, 16), np.float32))
    with pytest.raises(ValueError, match="width 32"):
        Embeddings(str(path), dim=32)
    with pytest.raises(TypeError, match="floating point"):
        prototype(np.zeros((4, 3), np.int64), n_clusters=2)


def test_selection_round_trip_and_manifest(tmp_path):
    s = torch.tensor([0.5, 0.9, 0.1, 0.7])
    kept = select(s, 0.5, "keep-hard")
    out = save_selection(tmp_path / "sel", kept, num_examples=4, method="keep-hard", params={"k": 1}, seed=3,
                         scores=s)
    idx, man = load_selection(out, num_examples=4)
    assert idx.tolist() == [1, 3]
    assert (man["format"], man["version"], man["kind"]) == ("prunekit", 2, "data-selection")
    assert man["method"] == "keep-hard" and man["seed"] == 3
    assert man["num_kept"] == 2 and man["keep_fraction"] == 0.5
    assert man["score_summary"]["max"] == pytest.approx(0.9) and man["score_summary"]["count"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["kept.npy", "manifest.json"]  # no temp files left


def test_manifest_for_other_data_set_size_is_an_error(tmp_path):
    save_selection(tmp_path, np.array([0, 2]), num_examples=4, method="random")
    with pytest.raises(ValueError, match="made for a data set of 4 examples, but this data set has 5"):
        load_selection(tmp_path, num_examples=5)


def test_bad_indices_or_scores_write_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        save_selection(tmp_path / "a", np.array([1, 9]), num_examples=4, method="x")
    with pytest.raises(ValueError, match="sorted and unique"):
        save_selection(tmp_path / "b", np.array([2, 1]), num_examples=4, method="x")
    with pytest.raises(ValueError, match="scores has 3 entries"):
        save_selection(tmp_path / "c", np.array([1]), num_examples=4, method="x", scores=np.zeros(3))
    assert list(tmp_path.iterdir()) == []


def test_existing_selection_survives_a_failed_write(tmp_path):
    save_selection(tmp_path, np.array([0, 1]), num_examples=3, method="first")
    with pytest.raises(ValueError):
        save_selection(tmp_path, np.array([5]), num_examples=3, method="second")
    idx, man = load_selection(tmp_path, 3)
    assert idx.tolist() == [0, 1] and man["method"] == "first"


def test_manifest_without_version_is_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"num_examples": 3}))
    with pytest.raises(ValueError, match="manifest.json is not a prunekit manifest"):
        load_selection(tmp_path)


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    save_selection(tmp_path, np.array([0]), num_examples=2, method="x")
    mask = os.umask(0)
    os.umask(mask)
    for name in ("kept.npy", "manifest.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask


def test_selection_files_are_checked_before_loading(tmp_path):
    from prunekit.data.io import write_npy
    from prunekit.io import OutputExistsError

    out = save_selection(tmp_path / "s", np.array([0, 2]), num_examples=4, method="x")
    with pytest.raises(OutputExistsError, match="overwrite"):
        save_selection(out, np.array([1]), num_examples=4, method="y")
    assert load_selection(out)[1]["method"] == "x"
    save_selection(out, np.array([1]), num_examples=4, method="y", overwrite=True)
    assert load_selection(out)[0].tolist() == [1]
    write_npy(out / "kept.npy", np.arange(3))
    with pytest.raises(ValueError, match=r"manifest says 1 kept but kept.npy holds shape \[3\]"):
        load_selection(out)
    (out / "kept.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"kept.npy is not a valid .npy file"):
        load_selection(out)
    man = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**man, "num_kept": 10**9}))
    with pytest.raises(ValueError, match="0 <= num_kept <= num_examples"):
        load_selection(out)
    (out / "manifest.json").write_text(json.dumps({**man, "indices_file": "../../etc/passwd"}))
    with pytest.raises(ValueError, match="indices_file must be a file name in the folder"):
        load_selection(out)
