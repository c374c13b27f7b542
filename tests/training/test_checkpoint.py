"""Checkpoint and resume: a run stopped and resumed equals the run that never stopped; atomic; no pickle."""

import json

import pytest
import torch
from torch.utils.data import SequentialSampler, TensorDataset

import prunekit.training.checkpoint as ckpt_mod
from prunekit.masks import attached
from prunekit.training import (
    SET,
    SRSTE,
    Callback,
    CheckpointEvery,
    GradualMagnitude,
    GradualMovement,
    GraNet,
    RigL,
    fit,
    load_checkpoint,
    save_checkpoint,
)
from prunekit.training.loop import make_optimizer

METHODS = {
    "rigl": lambda: RigL(0.8, update_every=3),
    "set": lambda: SET(0.8, update_every=3),
    "granet": lambda: GraNet(0.8, update_every=3, begin_step=0),
    "srste": lambda: SRSTE(2, 4),
    "gradual": lambda: GradualMagnitude(0.8, begin_step=0, end_step=18, frequency=3),
    "movement": lambda: GradualMovement(0.8, begin_step=0, end_step=18, frequency=3),
}


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state, batch):
        state.stop = state.step >= self.step


def _net(cls: type) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls()


def _run(data, callbacks, net, state=None):
    # full batch in a fixed order: every step sees the same batch, so a resumed run can match exactly
    ds = TensorDataset(*data)
    return net, fit(net, ds, steps=20, batch_size=64, lr=0.05, sampler=SequentialSampler(ds), callbacks=callbacks,
                    state=state)


@pytest.mark.parametrize("method", list(METHODS))
def test_resume_equals_uninterrupted(method, tiny_net, tiny_data, tmp_path):
    cls = type(tiny_net)
    ref_cb = METHODS[method]()
    ref_net, _ = _run(tiny_data, [ref_cb], _net(cls))
    cb1 = METHODS[method]()
    _run(tiny_data, [cb1, StopAt(10), CheckpointEvery(tmp_path / "ck", every=10, callbacks=[cb1], at_end=False)],
         _net(cls))
    net2, cb2 = _net(cls), METHODS[method]()
    opt2 = make_optimizer("sgd", net2.parameters(), lr=0.05, weight_decay=5e-4, momentum=0.9)
    ck = load_checkpoint(tmp_path / "ck", net2, opt2, [cb2])
    assert ck.step == 10
    _run(tiny_data, [cb2], net2, state=ck.train_state(net2, opt2))
    for (k, a), b in zip(ref_net.state_dict().items(), net2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)
    ms_ref, ms2 = attached(ref_net), attached(net2)
    assert all(torch.equal(ms_ref.masks[k], ms2.masks[k]) for k in ms_ref.masks)
    if method in ("gradual", "movement"):
        assert cb2.history == ref_cb.history and [h[0] for h in ref_cb.history] == [3, 6, 9, 12, 15, 18]
    elif method != "srste":
        assert [h["step"] for h in cb2.history] == [h["step"] for h in ref_cb.history]
    if method == "movement":
        assert all(torch.allclose(cb2.movement[k], ref_cb.movement[k], atol=1e-6) for k in ref_cb.movement)


def test_checkpoint_holds_only_json_and_safetensors(tiny_net, tmp_path):
    opt = torch.optim.Adam(tiny_net.parameters())
    tiny_net(torch.randn(2, 4, 8)).sum().backward()
    opt.step()
    cb = SET(0.5)
    cb._gen = torch.Generator().manual_seed(1)
    save_checkpoint(tmp_path / "c", tiny_net, opt, [cb], step=7, extra={"note": (1, 2)})
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert files == ["manifest.json", "tensors-000000007.safetensors"]
    doc = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (doc["format"], doc["version"], doc["kind"]) == ("prunekit", 2, "training-state")
    assert doc["step"] == 7 and doc["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    net2 = type(tiny_net)()
    opt2 = torch.optim.Adam(net2.parameters())
    cb2 = SET(0.5)
    ck = load_checkpoint(tmp_path / "c", net2, opt2, [cb2])
    assert ck.extra == {"note": (1, 2)}
    assert torch.equal(cb2._gen.get_state(), cb._gen.get_state())
    p1, p2 = tiny_net.fc1.weight, net2.fc1.weight
    assert torch.equal(opt.state[p1]["exp_avg_sq"], opt2.state[p2]["exp_avg_sq"])
    assert opt2.param_groups[0]["betas"] == (0.9, 0.999)


def test_a_failed_save_leaves_the_previous_checkpoint(tiny_net, tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c", tiny_net, step=1)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "write_manifest", boom)
    with torch.no_grad():
        tiny_net.fc1.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "c", tiny_net, step=2)
    net2 = type(tiny_net)()
    assert load_checkpoint(tmp_path / "c", net2).step == 1
    torch.testing.assert_close(net2.fc1.weight, tiny_net.fc1.weight - 1.0)


def test_checkpoint_bad_input(tiny_net, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none", tiny_net)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_checkpoint(tmp_path / "file", tiny_net)
    save_checkpoint(tmp_path / "c", tiny_net, callbacks=[RigL(0.5)])
    with pytest.raises(ValueError, match="holds callbacks"):
        load_checkpoint(tmp_path / "c", tiny_net, callbacks=[SET(0.5)])
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "c", tiny_net, torch.optim.SGD(tiny_net.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="never pickles"):
        save_checkpoint(tmp_path / "d", tiny_net, extra={"obj": object()})
    with pytest.raises(ValueError, match="every"):
        CheckpointEvery(tmp_path / "e", every=0)


def test_training_state_is_checked_against_the_model_and_foreign_folders_refused(tiny_net, tmp_path):
    save_checkpoint(tmp_path / "c", tiny_net, step=3)
    save_checkpoint(tmp_path / "c", tiny_net, step=4)  # a training-state folder is saved into again
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["manifest.json", "tensors-000000004.safetensors"]
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"000004.safetensors: unknown model tensor 'conv1.bias' \(8 unknown\)"):
        load_checkpoint(tmp_path / "c", other)
    bigger = type(tiny_net)()
    bigger.fc2 = torch.nn.Linear(16, 5)
    with pytest.raises(ValueError, match=r"tensor 'fc2.bias' has shape \[4\], the model's is \[5\]"):
        load_checkpoint(tmp_path / "c", bigger)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="holds no prunekit training state"):
        save_checkpoint(tmp_path / "mine", tiny_net)
    with pytest.raises(ValueError, match="holds no prunekit training state"):
        CheckpointEvery(tmp_path / "mine", every=1)
    save_checkpoint(tmp_path / "mine", tiny_net, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_version_1_training_state_still_loads(tiny_net, tmp_path):
    save_checkpoint(tmp_path / "c", tiny_net, step=5)
    doc = json.loads((tmp_path / "c" / "manifest.json").read_text())
    (tmp_path / "c" / "manifest.json").unlink()
    (tmp_path / "c" / "checkpoint.json").write_text(json.dumps({**doc, "format": "prunekit.checkpoint", "version": 1}))
    net2 = type(tiny_net)()
    assert load_checkpoint(tmp_path / "c", net2).step == 5
    assert torch.equal(net2.fc1.weight, tiny_net.fc1.weight)
    save_checkpoint(tmp_path / "c", net2, step=6)  # the next save writes version 2 and drops the old index
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["manifest.json", "tensors-000000006.safetensors"]
