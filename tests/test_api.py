"""Contract tests over every registered one-shot method and every registered score x pattern x scope,
plus bad input."""

import itertools

import pytest
import torch

import prunekit as pk
import prunekit.training  # noqa: F401  (registers the SNIP, GraSP and SynFlow configs)
from prunekit.api import _Criterion, mean_gradients, prune_scored_
from prunekit.config import CONFIGS, Config
from prunekit.masks import masks_of, prunable_parameters
from prunekit.patterns import mask_respects
from prunekit.registry import METHODS as METHOD_REGISTRY
from prunekit.registry import SCORES
from prunekit.training.pai import grasp_hessian_gradient, synflow_gradients

# transformer calibration methods have their own contract (tests/calibrate/test_solvers.py)
CALIBRATION = {"calibrated_magnitude", "sparsegpt", "wanda"}
METHODS = {n: CONFIGS.get(n) for n in METHOD_REGISTRY.names() if n not in CALIBRATION}
OPTIONS = {"synflow": {"iterations": 5}, "snip": {"batch_size": 16}, "grasp": {"batch_size": 16},
           "taylor": {"batch_size": 16}}
PATTERNS = [(pk.Unstructured(), 0.9), (pk.NM(2, 4), None), (pk.NM(1, 4), None), (pk.Block(2, 4), 0.5),
            (pk.Channel(), 0.25)]
SCOPES = ["layer", "global"]


def _stats(name, net, data):
    """Per-layer statistics each registered score needs, computed on ``net`` and ``data``."""
    params = prunable_parameters(net)
    if name in ("magnitude", "lamp"):
        return {k: {} for k in params}
    if name == "random":
        gen = torch.Generator().manual_seed(0)
        return {k: {"generator": gen} for k in params}
    if name in ("taylor", "snip", "movement"):
        grads = mean_gradients(net, data, params, 2, 16)
        if name == "movement":  # one step's movement -W * dL/dW
            return {k: {"movement": -p.detach() * grads[k]} for k, p in params.items()}
        return {k: {"grad": g} for k, g in grads.items()}
    if name == "grasp":
        return {k: {"hg": h} for k, h in grasp_hessian_gradient(net, data, batch_size=16).items()}
    if name == "synflow":
        return {k: {"synflow_grad": g} for k, g in synflow_gradients(net, (4, 8)).items()}
    raise AssertionError(f"registered score {name!r} has no statistics here: add it to _stats")


def _check_contract(net, x, shape, pattern, sparsity, scope, report, tmp_path):
    """Exact target, pattern respected, pruned weights zero, shapes unchanged, masks save/load."""
    masks = masks_of(net)
    params = prunable_parameters(net)
    total = sum(p.numel() for p in params.values())
    kept = sum(int(m.sum()) for m in masks.values())
    target = pattern.sparsity if isinstance(pattern, pk.NM) else sparsity
    if isinstance(pattern, pk.Unstructured):
        assert kept == round((1 - target) * total)  # exact
    elif isinstance(pattern, pk.NM):
        assert kept * pattern.m == total * pattern.n
    else:  # whole units: exact per layer (layer scope) or within one unit overall (global)
        unit = {k: (8 if isinstance(pattern, pk.Block) else m[0].numel()) for k, m in masks.items()}
        if scope == "layer":
            for k, m in masks.items():
                assert int(m.sum()) == unit[k] * round((1 - target) * m.numel() / unit[k]), k
        else:
            assert abs((total - kept) - target * total) <= max(unit.values())
    for k, m in masks.items():
        assert mask_respects(m, pattern), k
        assert (params[k][~m] == 0).all()
    if isinstance(pattern, pk.NM):
        for m in masks.values():
            groups = m.movedim(1, -1).reshape(-1, pattern.m) if m.dim() > 2 else m.reshape(-1, pattern.m)
            assert (groups.sum(-1) == pattern.n).all()
    assert net(x).shape == shape
    pk.save_masks(tmp_path / "m.safetensors", masks)
    loaded, _ = pk.load_masks(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)
    assert report.sparsity == pytest.approx(1 - kept / total)


def _run(net, data, method, pattern, sparsity, scope):
    cfg = METHODS[method](sparsity, pattern=pattern, scope=scope, **OPTIONS.get(method, {}))
    return pk.prune_(net, cfg, data=data), cfg


def test_registries_are_covered():
    assert set(METHODS) >= {"magnitude", "random", "taylor", "snip", "grasp", "synflow"}
    assert all(issubclass(c, _Criterion) for c in METHODS.values()), "a new one-shot method: add it to the contract"
    assert set(SCORES.names()) == {"magnitude", "random", "taylor", "movement", "lamp", "snip", "grasp", "synflow"}


@pytest.mark.parametrize("method,pat,scope", list(itertools.product(METHODS, PATTERNS, SCOPES)))
def test_contract(method, pat, scope, tiny_net, tiny_data, tmp_path):
    """Every registered one-shot method x pattern x scope, through ``prune_``."""
    pattern, sparsity = pat
    x, _ = tiny_data
    shape = tiny_net(x).shape
    report, cfg = _run(tiny_net, tiny_data, method, pattern, sparsity, scope)
    _check_contract(tiny_net, x, shape, pattern, sparsity, scope, report, tmp_path)
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("score,pat,scope", list(itertools.product(SCORES.names(), PATTERNS, SCOPES)))
def test_score_contract(score, pat, scope, tiny_net, tiny_data, tmp_path):
    """Every registered score x pattern x scope, through the shared selection path with its statistics."""
    pattern, sparsity = pat
    x, _ = tiny_data
    shape = tiny_net(x).shape
    stats = _stats(score, tiny_net, tiny_data)
    report = prune_scored_(tiny_net, pk.Magnitude(sparsity, pattern=pattern, scope=scope), score, stats=stats)
    _check_contract(tiny_net, x, shape, pattern, sparsity, scope, report, tmp_path)


@pytest.mark.parametrize("method", list(METHODS))
def test_deterministic_under_seed(method, tiny_data):
    from conftest import TinyNet

    out = []
    for _ in range(2):
        torch.manual_seed(0)
        net = TinyNet()
        _run(net, tiny_data, method, pk.Unstructured(), 0.7, "global")
        out.append({k: v.clone() for k, v in masks_of(net).items()})
    assert all(torch.equal(out[0][k], out[1][k]) for k in out[0])


def test_magnitude_global_hand_case():
    lin = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -3.0, 0.2, 2.0]]))
    pk.prune_(lin, pk.Magnitude(0.5))
    assert lin.weight.tolist() == [[0.0, -3.0, 0.0, 2.0]]


@pytest.mark.parametrize("bad", [-0.1, 1.0, "abc"])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
        pk.Magnitude(bad)


def test_bad_input_before_any_work(tiny_net):
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    with pytest.raises(ValueError, match="0 < n < m"):
        pk.Magnitude(None, pattern=pk.NM(3, 2))
    six = torch.nn.Linear(6, 4)
    with pytest.raises(ValueError, match="multiple of m=4"):
        pk.prune_(six, pk.Magnitude(None, pattern=pk.NM(2, 4)))
    assert masks_of(six) == {}
    with torch.no_grad():
        tiny_net.fc2.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="fc2.weight contains NaN"):
        pk.prune_(tiny_net, pk.Magnitude(0.5))
    assert masks_of(tiny_net) == {}
    assert all(torch.equal(tiny_net.state_dict()[k], v) or k == "fc2.weight" for k, v in before.items())
    with pytest.raises(ValueError, match="unknown method config 'nope'.*magnitude"):
        Config.from_dict({"type": "nope", "sparsity": 0.5})
    with pytest.raises(ValueError, match="scope must be one of"):
        pk.Magnitude(0.5, scope="everything")
    with pytest.raises(ValueError, match="needs data"):
        pk.prune_(torch.nn.Linear(4, 4), pk.Taylor(0.5))


def test_sparsity_report(tiny_net):
    pk.prune_(tiny_net, pk.Magnitude(0.5))
    rep = pk.sparsity_report(tiny_net)
    assert rep.sparsity == pytest.approx(0.5, abs=1e-3) and len(rep.layers) == 4
    assert "| **total (pruned weights)** |" in rep.to_markdown()
