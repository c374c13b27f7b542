"""One contract over every registered method of every kind, parametrized from ``METHODS``.

A kind handler checks what each kind promises, on tiny in-code models and data: one-shot (exact
sparsity, pattern, shape, seeded, JSON round trip), calibrated (tiny random LLaMA: exact per-layer
sparsity), training (two epochs: final sparsity, masks respected), training drivers (IMP: two levels of
one epoch, final sparsity as declared, masks nested and respected, JSON round trip), structured (scores per group,
removal works), data scores (N finite scores) and selectors (sorted unique indices, exact count), token
methods (zoo ViT: exact kept count, [CLS] kept, shape unchanged, keep 1.0 bit-identical, seeded, JSON round trip).
A new registered method is covered automatically, or the meta-test names it.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.config import Config
from prunekit.masks import attached
from prunekit.patterns import mask_respects
from prunekit.registry import KINDS, METHODS, Entry

S = 0.5
OPTIONS = {"synflow": {"iterations": 5}, "snip": {"batch_size": 16}, "grasp": {"batch_size": 16},
           "taylor": {"batch_size": 16}}  # one-shot config fields that keep the test fast
TRAIN_OPTIONS = {"synflow-init": {"pai_options": {"iterations": 5}}, "rigl": {"update_every": 2},
                 "set": {"update_every": 2}, "granet": {"update_every": 2},
                 "sign-supermask": {"pai_options": {"iterations": 5}}}


def _kept_total(masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    return sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())


# ------------------------------------------------------------------------------------------- one-shot
def check_oneshot(entry: Entry, tiny_net: nn.Module, tiny_data: tuple) -> nn.Module:
    x, _ = tiny_data
    shape, init = tiny_net(x).shape, {k: v.clone() for k, v in tiny_net.state_dict().items()}

    def fresh() -> nn.Module:  # the same initial weights, no masks attached
        net = type(tiny_net)()
        net.load_state_dict(init)
        return net

    for pattern, sparsity in ((pk.Unstructured(), S), (pk.NM(2, 4), None)):
        net = fresh()
        cfg = entry.config(sparsity, pattern=pattern, **OPTIONS.get(entry.name, {}))
        masks = pk.prune_(net, cfg, data=tiny_data).masks.masks
        kept, total = _kept_total(masks)
        assert kept == round((1 - cfg.sparsity) * total), (entry.name, pattern)
        if isinstance(pattern, pk.NM):
            assert all(mask_respects(m, pattern) for m in masks.values()), entry.name
        assert net(x).shape == shape
        assert Config.from_json(cfg.to_json()) == cfg
        again = pk.prune_(fresh(), cfg, data=tiny_data).masks.masks
        assert all(torch.equal(again[k], masks[k]) for k in masks), f"{entry.name} is not deterministic"
    return net


# ----------------------------------------------------------------------------------------- calibrated
def _tiny_llama() -> nn.Module:
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=96, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval()


def check_calibrated(entry: Entry, tiny_net: nn.Module, tiny_data: tuple) -> nn.Module:
    model = _tiny_llama()
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = entry.config(S)
    report = pk.prune_(model, cfg, data=ids)
    assert report.layers and all(r.target == S for r in report.layers)
    params = dict(model.named_parameters())
    for name, m in report.masks.masks.items():
        assert int(m.sum()) == round((1 - S) * m.numel()), name
        assert torch.all(params[name][~m] == 0), name
    assert Config.from_json(cfg.to_json()) == cfg
    assert model(input_ids=ids).logits.shape == (4, 16, 96)
    return model


# ------------------------------------------------------------------------------------------- training
def check_training(entry: Entry, tiny_net: nn.Module, tiny_data: tuple) -> nn.Module:
    from prunekit.training import SRSTE, fit, training_callbacks
    from prunekit.training.supermask import Supermask

    cbs = training_callbacks(entry.name, S, data=tiny_data, **TRAIN_OPTIONS.get(entry.name, {}))
    x, _ = tiny_data
    shape = tiny_net(x).shape
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    fit(tiny_net, tiny_data, epochs=2, batch_size=16, lr=0.05, callbacks=cbs, seed=0)
    assert tiny_net(x).shape == shape
    ms = attached(tiny_net)
    if entry.config is None:  # dense: nothing pruned
        assert ms is None
        return tiny_net
    if isinstance(cbs[0], SRSTE):  # N:M of the declared n, m on every layer
        assert all(int(m.sum()) * 4 == m.numel() * 2 for m in cbs[0].masks.values())
        return tiny_net
    kept, total = _kept_total(ms.masks)
    assert kept == round((1 - S) * total), entry.name
    for k, p in ms.params.items():
        assert torch.all(p.detach()[~ms.masks[k]] == 0), (entry.name, k)
    if isinstance(cbs[0], Supermask):  # frozen weights (after a declared re-draw) unchanged; the model is the export
        st = cbs[0].state
        assert all(torch.equal(st.frozen[k], v) for k, v in before.items() if k not in st.masks), entry.name
        assert all(torch.equal(tiny_net.state_dict()[k], v) for k, v in st.export().items()), entry.name
    return tiny_net


# ------------------------------------------------------------------------------------ training driver
def check_training_driver(entry: Entry, tiny_net: nn.Module, tiny_data: tuple) -> nn.Module:
    cfg = entry.config(S, fraction=0.3)  # 0.3, then exactly 0.5: two levels after the dense one
    assert cfg.levels == 2
    x, _ = tiny_data
    shape = tiny_net(x).shape
    res = entry.obj(tiny_net, cfg, tiny_data, epochs=1, batch_size=16, lr=0.05, seed=0)
    assert [lv.level for lv in res.levels] == [0, 1, 2], entry.name
    kept, total = _kept_total(res.masks(1))
    assert kept == round(0.7 * total), entry.name
    kept, total = _kept_total(res.masks())
    assert kept == round((1 - S) * total), entry.name
    assert all((res.masks()[k] <= res.masks(1)[k]).all() for k in res.masks()), "pruned stays pruned"
    ms = attached(tiny_net)
    for k, p in ms.params.items():
        assert torch.equal(ms.masks[k], res.masks()[k]) and torch.all(p.detach()[~ms.masks[k]] == 0), k
    assert tiny_net(x).shape == shape
    assert Config.from_json(cfg.to_json()) == cfg
    return tiny_net


# ----------------------------------------------------------------------------------------- structured
class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def check_structured(entry: Entry, tiny_net: nn.Module, tiny_data: tuple) -> nn.Module:
    from prunekit.structured import Structured, remove_
    from prunekit.structured.graph import build_graph
    from prunekit.structured.importance import group_scores

    torch.manual_seed(0)
    net = _MLP()
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(2))
    y = torch.arange(32) % 4
    importance = "l2" if entry.obj is remove_ else entry.name
    if entry.obj is not remove_:
        nn.functional.cross_entropy(net(x), y).backward()  # gradients for Taylor
        graph = build_graph(net, x)
        groups = graph.groups()
        scores = group_scores(net, graph, groups, importance, "mean", example_inputs=x)
        assert set(scores) == {g.id for g in groups}
        assert all(s.shape == (g.size,) and torch.isfinite(s).all() for g in groups for s in [scores[g.id]])
        net.zero_grad(set_to_none=True)
    remove_(net, x, Structured(sparsity=0.5, importance=importance), data=(x, y))
    assert (net.fc1.out_features, net.fc2.out_features, net.fc3.out_features) == (8, 8, 4)
    assert net(x).shape == (32, 4)
    return net


# ------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def dynamics(tmp_path_factory):
    from prunekit.data import DynamicsRecorder
    from prunekit.training import fit

    x, y = _blobs()
    torch.manual_seed(0)
    rec = DynamicsRecorder(tmp_path_factory.mktemp("dyn"), len(y))
    fit(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), (x, y), epochs=3, batch_size=30, lr=0.1,
        callbacks=[rec], seed=0)
    return rec.dynamics()


def _blobs(n: int = 90) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 3
    return (torch.randn(3, 8, generator=g) * 3)[y] + 0.5 * torch.randn(n, 8, generator=g), y


def _data_score_source(first: str, dynamics) -> tuple:
    """The source a data score takes, by the name of its first argument."""
    x, y = _blobs()
    torch.manual_seed(0)
    return {"dynamics": (dynamics,), "models": (nn.Sequential(nn.Linear(8, 3)), (x, y)),
            "embeddings": (x.numpy(),), "num_examples": (len(y),)}[first]


DATA_SOURCES = ("dynamics", "models", "embeddings", "num_examples")


def check_data_score(entry: Entry, dynamics) -> None:
    first = next(iter(inspect.signature(entry.obj).parameters))
    scores = torch.as_tensor(entry.obj(*_data_score_source(first, dynamics)))
    assert scores.shape == (90,) and torch.isfinite(scores).all(), entry.name


def check_data_selector(entry: Entry) -> None:
    _, y = _blobs()
    scores = torch.rand(90, generator=torch.Generator().manual_seed(3))
    params = inspect.signature(entry.obj).parameters
    extra = {k: v for k, v in {"labels": y, "clusters": y, "complexity": np.array([1.0, 2.0, 3.0])}.items()
             if k in params}
    kept = entry.obj(scores, 0.4, **extra)
    assert kept.dtype == torch.long and len(kept) == 36, entry.name
    assert torch.equal(kept, torch.unique(kept)), f"{entry.name}: indices must be sorted and unique"
    assert torch.equal(entry.obj(scores, 0.4, **extra), kept), f"{entry.name} is not deterministic"


# ---------------------------------------------------------------------------------------------- tokens
def check_token(entry: Entry, tiny_net: nn.Module, tiny_data: tuple) -> nn.Module:
    import copy

    from prunekit.tokens import TokenPrune, apply_
    from prunekit.zoo import ViT

    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=2, in_channels=1, num_classes=3, depth=2)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    dense, same = vit(x), copy.deepcopy(vit)
    cfg = TokenPrune(method=entry.name, keep=0.5)
    patch = apply_(vit, cfg)
    out = vit(x)
    assert out.shape == dense.shape and torch.isfinite(out).all()
    kept = patch.last.kept_positions()
    assert [len(k) for k in kept] == [9] * 4 and all(k[0] == 0 for k in kept), entry.name  # round(17 / 2)
    assert torch.equal(vit(x), out), f"{entry.name} is not deterministic"
    apply_(same, TokenPrune(method=entry.name, keep=1.0))
    assert torch.equal(same(x), dense), f"{entry.name}: keep 1.0 must be bit-identical"
    assert TokenPrune.from_dict(cfg.to_dict()) == cfg
    return vit


MODEL_HANDLERS = {"oneshot": check_oneshot, "calibrated": check_calibrated, "training": check_training,
                  "training-driver": check_training_driver, "structured": check_structured,
                  "token": check_token}


def test_every_kind_has_a_handler():
    """A meta-test: every registered method is covered by its kind's handler."""
    assert set(KINDS) == {*MODEL_HANDLERS, "data-score", "data-selector"}
    for e in METHODS.entries("data-score"):
        first = next(iter(inspect.signature(e.obj).parameters))
        assert first in DATA_SOURCES, f"data score {e.name!r} takes {first!r}: teach _data_score_source about it"
    assert all(e.kind in KINDS for e in METHODS.entries())


@pytest.mark.parametrize("name", [n for k in MODEL_HANDLERS for n in METHODS.names(k)])
def test_model_method_contract(name, tiny_net, tiny_data):
    entry = METHODS.get(name)
    checked = MODEL_HANDLERS[entry.kind](entry, tiny_net, tiny_data)  # the kind's contract asserts inside
    assert isinstance(checked, nn.Module), f"the {entry.kind} handler returned no model for {name!r}"
    assert all(torch.isfinite(p).all() for p in checked.parameters()), f"{name} left non-finite weights"


@pytest.mark.parametrize("name", METHODS.names("data-score"))
def test_data_score_contract(name, dynamics):
    check_data_score(METHODS.get(name), dynamics)


@pytest.mark.parametrize("name", METHODS.names("data-selector"))
def test_data_selector_contract(name):
    check_data_selector(METHODS.get(name))
