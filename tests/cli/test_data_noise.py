"""``prunekit data select --rule noise-aware``: flagged examples dropped first, the flags in the manifest."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.data import load_selection

runner = CliRunner()


def _select(tmp_path, *args: str):
    np.save(tmp_path / "s.npy", np.arange(20, dtype=np.float64))  # example i has difficulty i
    return runner.invoke(app, ["data", "select", "--scores", str(tmp_path / "s.npy"), "--rule", "noise-aware",
                               "--out", str(tmp_path / "sel"), *args])


def test_noise_aware_drops_the_flagged_then_keeps_by_then(tmp_path):
    flag = np.zeros(20)
    flag[[0, 19]] = 9.0  # examples 0 and 19 look mislabeled
    np.save(tmp_path / "f.npy", flag)
    r = _select(tmp_path, "--keep", "0.25", "--flag-scores", str(tmp_path / "f.npy"), "--flag-fraction", "0.1",
                "--then", "keep-hard")
    assert r.exit_code == 0, r.output
    idx, man = load_selection(tmp_path / "sel", num_examples=20)
    assert idx.tolist() == [14, 15, 16, 17, 18]  # the 5 hardest of what is left after dropping 0 and 19
    assert man["method"] == "noise-aware" and man["params"]["then"] == "keep-hard"
    assert man["noise_flags"] == {"rule": "fraction", "threshold": None, "flagged_by_rule": 2, "dropped": 2,
                                  "capped": False}
    assert "dropped 2 flagged examples" in r.output


def test_threshold_and_the_cap_are_reported(tmp_path):
    r = _select(tmp_path, "--keep", "0.9", "--flag-threshold", "15")  # 5 flagged, only 2 may go to keep 18
    assert r.exit_code == 0, r.output
    idx, man = load_selection(tmp_path / "sel")
    assert idx.tolist() == list(range(18)) and man["noise_flags"]["capped"] is True
    assert "capped" in r.output


@pytest.mark.parametrize("args, message", [
    (["--keep", "0.5", "--flag-fraction", "0.1", "--flag-threshold", "1"], "not both"),
    (["--keep", "0.5", "--then", "dbp"], "--then"),
    (["--keep", "0.5", "--flag-scores", "SHORT"], "has 3 entries but the scores have 20"),
    (["--keep", "0.5", "--flag-fraction", "1.5"], "flag_fraction"),
])
def test_bad_noise_aware_input_exits_2_and_writes_nothing(tmp_path, args, message):
    np.save(tmp_path / "short.npy", np.zeros(3))
    r = _select(tmp_path, *[a.replace("SHORT", str(tmp_path / "short.npy")) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "sel").exists()
