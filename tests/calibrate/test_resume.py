"""Resume is exact: a change anywhere in the source restarts with a warning; seconds add up over runs."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from prunekit.calibrate import Wanda, prune_blocks
from prunekit.calibrate import engine as E

from .conftest import tiny_model


class Killed(Exception):
    pass


def _kill_after_block_0(i, _info):
    if i == 0:
        raise Killed


def test_a_change_outside_the_old_sample_stride_restarts(calib_ids, tmp_path, caplog):
    state = tmp_path / "state"
    with pytest.raises(Killed):
        prune_blocks(tiny_model("llama"), "wanda", Wanda(0.5), calib_ids, state_dir=state,
                     on_block_end=_kill_after_block_0)
    changed = tiny_model("llama")
    w = changed.model.layers[1].mlp.down_proj.weight  # 2048 values: the old fingerprint read every 8th
    with torch.no_grad():
        w.view(-1)[1] += 1.0
    seen = []
    with caplog.at_level(logging.WARNING, logger="prunekit.calibrate.engine"):
        prune_blocks(changed, "wanda", Wanda(0.5), calib_ids, state_dir=state, on_block_end=lambda i, _: seen.append(i))
    assert seen == [0, 1]  # started over
    assert "made from another source model" in caplog.text
    seen.clear()
    with pytest.raises(Killed):
        prune_blocks(tiny_model("llama"), "wanda", Wanda(0.5), calib_ids, state_dir=tmp_path / "s2",
                     on_block_end=_kill_after_block_0)
    prune_blocks(tiny_model("llama"), "wanda", Wanda(0.5), calib_ids, state_dir=tmp_path / "s2",
                 on_block_end=lambda i, _: seen.append(i))
    assert seen == [1]  # the same source resumes


class _Clock:
    """A stand-in for ``time``: ``perf_counter`` returns ``now``, moved only by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_seconds_are_summed_over_interrupted_runs(calib_ids, tmp_path, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(E, "time", clock)

    def first_run(i, _info):
        clock.now += 5.0  # 5 s after block 0 was committed, then the process dies
        raise Killed

    with pytest.raises(Killed):
        prune_blocks(tiny_model("llama"), "wanda", Wanda(0.5), calib_ids, state_dir=tmp_path / "s",
                     on_block_end=first_run)
    assert json.loads((tmp_path / "s" / "state.json").read_text())["elapsed"] == 5.0
    clock.now = 100.0  # a new process: its own clock origin

    def second_run(i, _info):
        clock.now += 7.0

    report = prune_blocks(tiny_model("llama"), "wanda", Wanda(0.5), calib_ids, state_dir=tmp_path / "s",
                          on_block_end=second_run)
    assert report.seconds == 12.0 and report.extra["runs"] == 2


@pytest.mark.parametrize("kill_at", [1, 2])  # after the last encoder block; after the first decoder block
def test_encoder_decoder_resume_gives_the_same_result(kill_at, tmp_path):
    from prunekit.calibrate import SparseGPT
    from prunekit.zoo.tiny_hf import tiny_hf_model, tiny_ids

    cfg, x = SparseGPT(0.5, blocksize=16, batch_size=3), tiny_ids()
    full = tiny_hf_model("T5ForConditionalGeneration")
    prune_blocks(full, "sparsegpt", cfg, x)

    def kill(i, _info):
        if i == kill_at:
            raise Killed

    with pytest.raises(Killed):
        prune_blocks(tiny_hf_model("T5ForConditionalGeneration"), "sparsegpt", cfg, x, state_dir=tmp_path / "s",
                     on_block_end=kill)
    seen = []
    resumed = tiny_hf_model("T5ForConditionalGeneration")
    report = prune_blocks(resumed, "sparsegpt", cfg, x, state_dir=tmp_path / "s",
                          on_block_end=lambda i, _: seen.append(i))
    assert seen == list(range(kill_at + 1, 4))
    assert len(report.layers) == 32
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
