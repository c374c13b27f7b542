"""Methods by name: the factory returns the right callbacks and rejects bad names before any work."""

import pytest
from torch import nn

from prunekit.registry import METHODS
from prunekit.training import (
    SET,
    SRSTE,
    Distillation,
    GradualMagnitude,
    GradualMovement,
    GraNet,
    PruneAtInit,
    RigL,
)
from prunekit.training.methods import TRAINING_METHODS, training_callbacks
from prunekit.training.supermask import Supermask


def test_each_name_builds_its_callbacks(tiny_data):
    expect = {"dense": [], "gradual": [GradualMagnitude], "movement": [GradualMovement], "rigl": [RigL], "set": [SET],
              "granet": [GraNet],
              "srste": [SRSTE], "static": [PruneAtInit], "snip-init": [PruneAtInit], "grasp-init": [PruneAtInit],
              "synflow-init": [PruneAtInit], "magnitude-init": [PruneAtInit], "edge-popup": [Supermask],
              "sign-supermask": [Supermask], "jackpot": [Supermask]}
    assert set(expect) == set(TRAINING_METHODS) == set(METHODS.names("training"))
    old = {"snip": "snip-init", "grasp": "grasp-init", "synflow": "synflow-init", "magnitude_init": "magnitude-init",
           "gradual_magnitude": "gradual", "gradual_movement": "movement"}  # old spellings still build
    for name, types in [*expect.items(), *((o, expect[n]) for o, n in old.items())]:
        cbs = training_callbacks(name, 0.9, data=tiny_data)
        assert [type(c) for c in cbs] == types, name
    assert training_callbacks("snip", 0.9, data=tiny_data)[0].method == "snip"
    assert training_callbacks("set", 0.9)[0].allocation == "er"
    assert training_callbacks("rigl", 0.9)[0].allocation == "erk"
    assert training_callbacks("static", 0.9, seed=3)[0].options["seed"] == 3
    cbs = training_callbacks("rigl", 0.9, teacher=nn.Linear(2, 2), alpha=0.3)
    assert isinstance(cbs[-1], Distillation) and cbs[-1].alpha == 0.3


def test_bad_names_and_values():
    with pytest.raises(ValueError, match="unknown training method .lottery.; accepted: dense, edge-popup, gradual"):
        training_callbacks("lottery", 0.9)
    with pytest.raises(ValueError, match="needs a sparsity"):
        training_callbacks("rigl")
    with pytest.raises(ValueError, match="sparsity"):
        training_callbacks("set", 1.0)
    with pytest.raises(ValueError, match="needs data"):
        training_callbacks("snip", 0.9)
