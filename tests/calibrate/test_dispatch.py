"""Solver dispatch from the registry: each calibrated entry's config solves, its statistics are declared."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.calibrate import SOLVERS, CalibratedMagnitude, CalibrationPlan, SparseGPT, Wanda
from prunekit.calibrate.engine import Plan, _needs, _plan
from prunekit.calibrate.stats import stats_from_inputs
from prunekit.registry import METHODS


def test_plan_takes_solver_and_statistics_from_the_registered_entry():
    assert SOLVERS == ("alps", "calibrated-magnitude", "sparsegpt", "wanda") and Plan is CalibrationPlan
    from prunekit.calibrate.methods import ALPS

    alps = _plan("alps", ALPS(0.5, error_report=False), None, None)
    assert (alps.solver, alps.stats) == ("alps", frozenset({"hessian"}))
    sgpt = _plan(None, SparseGPT(0.5, blocksize=16, error_report=False), None, None)
    assert (sgpt.solver, sgpt.stats, sgpt.config.blocksize) == ("sparsegpt", frozenset({"hessian"}), 16)
    wanda = _plan("wanda", Wanda(0.5, error_report=False), None, None)
    assert wanda.stats == frozenset({"norms"}) and _needs(wanda, "layers.0.q_proj") == frozenset({"norms"})
    mag = _plan("magnitude", CalibratedMagnitude(0.5, error_report=False), None, None)  # the old spelling
    assert mag.solver == "calibrated-magnitude" and _needs(mag, "x") == frozenset()
    assert _needs(_plan(None, Wanda(0.5), None, True), "x") == frozenset({"norms", "moments"})  # no X^T X by default
    assert _needs(_plan(None, Wanda(0.5, error_report=True), None, True), "x") == frozenset(
        {"norms", "hessian", "moments"})


def test_one_shot_magnitude_converts_and_unsupported_fields_are_named():
    plan = _plan("calibrated-magnitude", prunekit.Magnitude(0.6, exclude=["lm_head"]), None, None)
    assert isinstance(plan.config, CalibratedMagnitude) and plan.sparsity == 0.6 and plan.exclude == ["lm_head"]
    with pytest.raises(ValueError, match="allocation='erk' of magnitude is not supported by calibrated pruning"):
        _plan("calibrated-magnitude", prunekit.Magnitude(0.5, allocation="erk"), None, None)
    with pytest.raises(ValueError, match="include=.* is not supported"):
        _plan("calibrated-magnitude", prunekit.Magnitude(0.5, include=["fc"]), None, None)
    with pytest.raises(ValueError, match="scope must be 'layer' or 'row'"):
        _plan("calibrated-magnitude", prunekit.Magnitude(0.5, scope="global"), None, None)
    with pytest.raises(ValueError, match="unknown calibrated solver 'obs'; accepted: alps, calibrated-magnitude"):
        _plan("obs", Wanda(0.5), None, None)
    with pytest.raises(TypeError, match="method config"):
        _plan("wanda", {"sparsity": 0.5}, None, None)


@pytest.mark.parametrize("name", METHODS.names("calibrated"))
def test_every_registered_solver_keeps_exactly_its_target_on_one_layer(name):
    g = torch.Generator().manual_seed(0)
    W, X = torch.randn(8, 16, generator=g), torch.randn(64, 16, generator=g)
    cfg = METHODS.config(name)(0.5, error_report=False, **({"blocksize": 8} if name == "sparsegpt" else {}))
    st = stats_from_inputs(X, frozenset({"hessian", "norms"}))
    W_new, mask = cfg.solve(W, st, 0.5, cfg.pattern, "w")
    assert int(mask.sum()) == 64 and torch.all(W_new[~mask] == 0)
    fixed = torch.rand(8, 16, generator=g) > 0.5  # a given mask is kept as is
    W2, m2 = cfg.solve(W, st, 0.5, cfg.pattern, "w", mask=fixed)
    assert torch.equal(m2, fixed) and torch.all(W2[~fixed] == 0)
