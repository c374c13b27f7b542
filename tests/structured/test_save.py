"""Slim-model folders: atomic, kind structured, and every plan checked against the weights before building."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit.structured.save as save_mod
from prunekit.io import OutputExistsError
from prunekit.structured import Plan, Structured, load_pruned, load_structured, remove_, save_pruned, save_structured
from prunekit.zoo import example_inputs, get_model

KW = {"in_features": 8, "hidden": [16, 12], "num_classes": 3}
SRC = {"zoo": "mlp", "kwargs": KW}


@pytest.fixture
def slim(tmp_path):
    m = get_model("mlp", seed=0, **KW)
    x = example_inputs("mlp", **KW)
    plan = remove_(m, x, Structured(target_params=0.5))
    return m, x, save_structured(m, plan, tmp_path / "slim", source=SRC)


@pytest.fixture
def builds(monkeypatch):
    calls = []
    real = save_mod.build_source

    def spy(source):
        calls.append(source)
        return real(source)

    monkeypatch.setattr(save_mod, "build_source", spy)
    return calls


def _edit_plan(folder, edit):
    plan = json.loads((folder / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps(edit(plan)))


def test_round_trip_manifest_and_no_overwrite_without_asking(slim):
    m, x, d = slim
    man = json.loads((d / "manifest.json").read_text())
    assert (man["format"], man["version"], man["kind"], man["plan"]) == ("prunekit", 2, "structured", "plan.json")
    assert torch.equal(load_structured(d)(x), m(x)) and torch.equal(load_pruned(d)(x), m(x))  # alias too
    with pytest.raises(OutputExistsError, match="slim already exists"):
        save_pruned(m, Plan.load(d / "plan.json"), d)
    (d / "manifest.json").unlink()  # a version-1 folder: plan.json + weights only
    assert torch.equal(load_structured(d)(x), m(x))


def test_a_plan_with_a_million_channels_is_refused_before_building(slim, builds):
    _, _, d = slim
    name = next(iter(json.loads((d / "plan.json").read_text())["shapes"]))

    def huge(plan):
        plan["shapes"][name] = [10**6, 8]
        return plan

    _edit_plan(d, huge)
    with pytest.raises(ValueError, match=rf"model.safetensors: the plan gives tensor '{name}' shape \[1000000, 8\]"):
        load_structured(d)
    assert builds == []


def test_added_tensors_and_kept_positions_must_match_the_file(slim, builds):
    _, _, d = slim
    original = (d / "plan.json").read_text()
    _edit_plan(d, lambda p: {**p, "added": {"features.0.extra": [10**6, 10**6]}})
    with pytest.raises(ValueError, match=r"adds tensor 'features.0.extra' of shape \[1000000, 1000000\]"):
        load_structured(d)
    (d / "plan.json").write_text(original)
    name = next(iter(json.loads(original)["tensors"]))
    _edit_plan(d, lambda p: {**p, "tensors": {**p["tensors"], name: {"0": list(range(10**5))}}})
    with pytest.raises(ValueError, match=rf"keeps 100000 positions of dimension 0 of '{name}'"):
        load_structured(d)
    assert builds == []


def test_a_plan_that_is_a_list_or_has_wrong_types_is_refused_naming_the_file(slim, builds):
    _, _, d = slim
    (d / "plan.json").write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match=r"plan file .*slim/plan.json must hold a JSON object, got a list"):
        load_structured(d)
    (d / "plan.json").write_text(json.dumps({"type": "prunekit.structured.plan", "version": 1, "shapes": []}))
    with pytest.raises(ValueError, match=r"plan.json: 'shapes' must be a JSON object, got list"):
        load_structured(d)
    (d / "plan.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"plan.json is not valid JSON"):
        load_structured(d)
    assert builds == []


def test_an_absurd_source_is_refused_on_the_meta_device(slim):
    _, _, d = slim
    _edit_plan(d, lambda p: {**p, "source": {"zoo": "mlp", "kwargs": {**KW, "in_features": 10**6}}})
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'features.0.weight' has shape"):
        load_structured(d)
    _edit_plan(d, lambda p: {**p, "source": {"zoo": "mlp", "kwargs": {**KW, "hidden": [16, 10**7]}}})
    with pytest.raises(ValueError, match=r"would build a dense model of \d+ elements"):
        load_structured(d)
