"""Pruned-transformer folders: kind hf manifest, the mask side-car checked against it before unpacking."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.calibrate.io import MASKS_FILE, load_hf_masks, load_masks, pack_mask, save_hf_pruned, save_pruned
from prunekit.io import OutputExistsError, save_tensors, write_manifest

from .conftest import tiny_model


def _folder(tmp_path, layers, side_car):
    d = tmp_path / "pruned"
    d.mkdir()
    write_manifest(d, "hf", {"method": "wanda", "layers": layers})
    save_tensors(d / MASKS_FILE, side_car, {"format": "prunekit", "version": "2", "kind": "hf"})
    return d


def test_save_writes_a_kind_hf_manifest_and_refuses_a_non_empty_folder(tmp_path):
    model = tiny_model("gpt2")
    mask = torch.tensor([[True, False, True, True]] * 2)
    out = save_hf_pruned(model, tmp_path / "p", {"w": mask}, {"method": "wanda"})
    man = json.loads((out / "manifest.json").read_text())
    assert (man["format"], man["version"], man["kind"]) == ("prunekit", 2, "hf")
    assert man["layers"]["w"] == {"shape": [2, 4], "sparsity": 0.25}
    masks, _ = load_hf_masks(out)
    assert torch.equal(masks["w"], mask) and torch.equal(load_masks(out)[0]["w"], mask)  # old name still works
    with pytest.raises(OutputExistsError, match="overwrite"):
        save_pruned(model, out, {}, {})
    save_pruned(model, out, {}, {"method": "magnitude"}, overwrite=True)
    assert load_hf_masks(out) == ({}, {**man, "method": "magnitude", "layers": {}})


def test_absurd_or_unknown_masks_are_refused_before_unpacking(tmp_path):
    d = _folder(tmp_path, {"w": {"shape": [10**6, 10**6]}}, {"w": pack_mask(torch.ones(8, dtype=torch.bool))})
    with pytest.raises(ValueError, match=r"prunekit_masks.safetensors: tensor 'w' has shape \[1\], expected "
                                         r"\[125000000000\]"):
        load_hf_masks(d)
    d.rename(tmp_path / "a")
    d = _folder(tmp_path, {"w": {"shape": [8]}}, {"x": pack_mask(torch.ones(8, dtype=torch.bool))})
    with pytest.raises(ValueError, match=r"prunekit_masks.safetensors: unknown tensor 'x'"):
        load_hf_masks(d)
    d.rename(tmp_path / "b")
    d = _folder(tmp_path, {"w": {"shape": "8"}}, {})
    with pytest.raises(ValueError, match=r"manifest.json: layer 'w' has shape '8'; expected a list of integers"):
        load_hf_masks(d)


def test_a_version_1_folder_still_loads(tmp_path):
    d = tmp_path / "v1"
    d.mkdir()
    mask = torch.tensor([True, False, False, True, True])
    (d / "prunekit_manifest.json").write_text(json.dumps(
        {"format": "prunekit.llm-masks", "version": 1, "layers": {"w": {"shape": [5], "sparsity": 0.4}}}))
    save_tensors(d / MASKS_FILE, {"w": pack_mask(mask)}, {"format": "prunekit.llm-masks", "version": "1"})
    masks, man = load_hf_masks(d)
    assert torch.equal(masks["w"], mask) and man["legacy"] == 1 and man["kind"] == "hf"
