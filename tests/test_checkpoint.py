"""Zoo checkpoints: atomic, refused over a non-empty folder, every file checked before it is loaded."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.checkpoint import load_checkpoint, save_checkpoint
from prunekit.io import OutputExistsError, save_tensors
from prunekit.masks import save_masks
from prunekit.zoo import get_model

SPEC = {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [3], "num_classes": 2}}


def _net():
    return get_model(SPEC["name"], seed=0, **SPEC["kwargs"])


def _masks(net):
    return {"features.0.weight": torch.ones(3, 4, dtype=torch.bool).tril()}


def test_round_trip_v2_manifest_and_refusal_without_overwrite(tmp_path):
    net = _net()
    out = save_checkpoint(tmp_path / "ck", net, SPEC, _masks(net), extra={"seed": 0})
    man = json.loads((out / "manifest.json").read_text())
    assert (man["format"], man["version"], man["kind"], man["seed"]) == ("prunekit", 2, "zoo", 0)
    model, manifest, masks = load_checkpoint(out)
    assert torch.equal(model.features[0].weight, net.features[0].weight)
    assert torch.equal(masks["features.0.weight"], _masks(net)["features.0.weight"])
    with pytest.raises(OutputExistsError, match="ck already exists.*overwrite"):
        save_checkpoint(out, _net(), SPEC)
    assert load_checkpoint(out)[2] is not None  # untouched
    save_checkpoint(out, net, SPEC, overwrite=True)
    assert load_checkpoint(out)[2] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_a_version_1_checkpoint_still_loads(tmp_path):
    net = _net()
    (tmp_path / "old").mkdir()
    save_tensors(tmp_path / "old" / "model.safetensors", net.state_dict(), {"format": "prunekit.checkpoint"})
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(
        {"format": "prunekit.checkpoint", "version": 1, "model": SPEC, "has_masks": False}))
    model, manifest, _ = load_checkpoint(tmp_path / "old")
    assert manifest["legacy"] == 1 and torch.equal(model.head.weight, net.head.weight)


def _edit_manifest(path, **changes):
    man = json.loads((path / "manifest.json").read_text())
    man.update(changes)
    (path / "manifest.json").write_text(json.dumps(man))


def test_bad_checkpoints_are_refused_naming_the_file_and_tensor(tmp_path):
    net = _net()
    ck = save_checkpoint(tmp_path / "ck", net, SPEC, _masks(net))
    _edit_manifest(ck, model={"name": "mlp", "kwargs": {**SPEC["kwargs"], "hidden": [1000000]}})
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'features.0.weight' has shape \[3, 4\], "
                                         r"expected \[1000000, 4\]"):
        load_checkpoint(ck)
    _edit_manifest(ck, model=["mlp"])
    with pytest.raises(ValueError, match=r"manifest.json: \"model\" must be an object"):
        load_checkpoint(ck)
    _edit_manifest(ck, model=SPEC)
    save_masks(ck / "masks.safetensors", {"nope.weight": torch.ones(2, dtype=torch.bool)}, overwrite=True)
    with pytest.raises(ValueError, match=r"masks.safetensors: unknown tensor 'nope.weight'"):
        load_checkpoint(ck)
    save_masks(ck / "masks.safetensors", {"features.0.weight": torch.ones(4, 3, dtype=torch.bool)}, overwrite=True)
    with pytest.raises(ValueError, match=r"masks.safetensors: tensor 'features.0.weight' has shape \[4, 3\]"):
        load_checkpoint(ck)
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is not a valid safetensors file"):
        load_checkpoint(ck)
    (ck / "manifest.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"ck/manifest.json is not valid JSON"):
        load_checkpoint(ck)


_CHILD = """
import sys
from prunekit.checkpoint import save_checkpoint
from prunekit.zoo import get_model
spec = {"name": "mlp", "kwargs": {"in_features": 4, "hidden": [3], "num_classes": 2}}
save_checkpoint(sys.argv[1], get_model("mlp", seed=1, **spec["kwargs"]), spec, extra={"seed": 1}, overwrite=True)
"""


def test_a_checkpoint_replace_killed_mid_way_loads_after_the_next_check(tmp_path):
    """The real save killed with out absent (old moved aside); every other step: tests/test_io.py, stdlib only."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import prunekit
    from prunekit.io import check_out

    ck = save_checkpoint(tmp_path / "ck", _net(), SPEC, extra={"seed": 0})
    env = {**os.environ, "PRUNEKIT_FAULT": "after-old-moved", "PRUNEKIT_SWAP": "rename",
           "PYTHONPATH": str(Path(prunekit.__file__).parents[1])}
    assert subprocess.run([sys.executable, "-c", _CHILD, str(ck)], env=env, timeout=120).returncode == -9
    assert not ck.exists()
    check_out(ck, overwrite=True)  # what the next command does first: finish or roll back, clean up
    _, manifest, _ = load_checkpoint(ck)
    assert manifest["seed"] == 1  # the journal says the new checkpoint is complete: rolled forward
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
