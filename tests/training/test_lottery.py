"""IMP and lottery tickets: exact level sparsities, rewinding, optimizer-state policies, reinit control."""

import pytest
import torch

from prunekit.masks import attached
from prunekit.training import (
    Callback,
    RewindPoint,
    fit,
    iterative_magnitude,
    lottery_ticket,
    random_reinit_control,
    reinitialize_,
)

RECIPE = dict(steps=12, batch_size=16, lr=0.05)


class FirstStep(Callback):
    """Records the weights and optimizer state the first time a level's training starts."""

    def __init__(self) -> None:
        self.starts: list[tuple[dict, dict, int]] = []

    def on_fit_start(self, state):
        w = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        opt = {id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
               for p, s in state.optimizer.state.items()}
        self.starts.append((w, opt, state.step))


def test_lottery_ticket_rewinds_survivors_to_init_and_hits_exact_sparsities(tiny_net, tiny_data):
    init = {k: v.detach().clone() for k, v in tiny_net.state_dict().items()}
    spy = FirstStep()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=3, fraction=0.2, rewind_step=0, callbacks=[spy], **RECIPE)
    assert [lv.level for lv in res.levels] == [0, 1, 2, 3]
    total = sum(m.numel() for m in res.masks().values())
    for lv in res.levels[1:]:
        kept = sum(int(m.sum()) for m in lv.masks.values())
        assert kept == round(0.8 ** lv.level * total)  # 1 - (1 - fraction)^r, exactly
    for r, (w, opt_state, step) in enumerate(spy.starts[1:], start=1):
        masks = res.levels[r].masks
        assert step == 0 and opt_state == {}  # optimizer_state="reset": no momentum carried over
        for k, v in w.items():
            if k in masks:
                torch.testing.assert_close(v, init[k] * masks[k])  # survivors rewound, pruned ones zero
            else:
                torch.testing.assert_close(v, init[k])  # biases rewound too
    # pruned stays pruned: masks are nested
    for a, b in zip(res.levels[1:], res.levels[2:]):
        assert all((b.masks[k] <= a.masks[k]).all() for k in a.masks)


def test_late_rewinding_restores_step_k_weights_and_optimizer_state(tiny_net, tiny_data):
    spy = FirstStep()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=1, rewind_step=3, optimizer_state="rewind",
                              callbacks=[spy], **RECIPE)
    w_k = res.rewind.weights
    saved = res.rewind.optimizer_state["state"]
    w, opt_state, step = spy.starts[1]
    assert step == 3  # the level resumes the LR schedule at step k
    masks = res.levels[1].masks
    for k, v in w.items():
        torch.testing.assert_close(v, w_k[k] * masks[k] if k in masks else w_k[k])
    assert len(opt_state) == len(saved) > 0  # momentum rewound with the weights
    names = [n for n, _ in tiny_net.named_parameters()]
    params = dict(tiny_net.named_parameters())
    for i, n in enumerate(names):
        buf = [s for pid, s in opt_state.items() if pid == id(params[n])][0]["momentum_buffer"]
        expect = saved[i]["momentum_buffer"] * (masks[n] if n in masks else 1)
        torch.testing.assert_close(buf, expect)


def test_fine_tuning_and_keep_policy(tiny_net, tiny_data):
    spy = FirstStep()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=1, rewind_step=None, optimizer_state="keep",
                              callbacks=[spy], **RECIPE)
    assert res.rewind is None
    (w0, _, _), (w1, opt1, step1) = spy.starts
    assert step1 == 0 and len(opt1) > 0  # the previous optimizer, state kept
    assert not torch.equal(w1["fc1.weight"][res.levels[1].masks["fc1.weight"]],
                           w0["fc1.weight"][res.levels[1].masks["fc1.weight"]])  # trained weights, not rewound


def test_random_reinit_control_uses_the_same_masks_on_new_weights(tiny_net, tiny_data):
    res = lottery_ticket(tiny_net, tiny_data, 0.36, **RECIPE)
    assert len(res.levels) == 3  # 1 - 0.8^2 = 0.36
    masks = res.masks()
    before = tiny_net.fc1.weight.detach().clone()
    out = random_reinit_control(tiny_net, masks, tiny_data, seed=123, **RECIPE)
    ms = attached(tiny_net)
    assert all(torch.equal(ms.masks[k], masks[k]) for k in masks)
    assert not torch.equal(tiny_net.fc1.weight.detach(), before)
    assert (tiny_net.fc1.weight.detach()[~masks["fc1.weight"]] == 0).all()
    assert "train_loss" in out.final


def test_reinitialize_is_seeded(tiny_net):
    a = reinitialize_(tiny_net, 5).fc1.weight.detach().clone()
    b = reinitialize_(tiny_net, 5).fc1.weight.detach().clone()
    c = reinitialize_(tiny_net, 6).fc1.weight.detach().clone()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lottery_bad_input(tiny_net, tiny_data):
    before = tiny_net.fc1.weight.detach().clone()
    with pytest.raises(ValueError, match=r"rewind_step=100 is beyond the training length \(12 steps\)"):
        iterative_magnitude(tiny_net, tiny_data, rounds=2, rewind_step=100, **RECIPE)
    with pytest.raises(ValueError, match="beyond the training length"):
        fit(tiny_net, tiny_data, steps=5, callbacks=[RewindPoint(6)])
    with pytest.raises(ValueError, match="fraction"):
        iterative_magnitude(tiny_net, tiny_data, rounds=2, fraction=1.0, **RECIPE)
    with pytest.raises(ValueError, match="exactly one of rounds"):
        iterative_magnitude(tiny_net, tiny_data, **RECIPE)
    with pytest.raises(ValueError, match="optimizer_state must be one of"):
        iterative_magnitude(tiny_net, tiny_data, rounds=1, optimizer_state="warm", **RECIPE)
    with pytest.raises(ValueError, match="needs rewind_step"):
        iterative_magnitude(tiny_net, tiny_data, rounds=1, rewind_step=None, optimizer_state="rewind", **RECIPE)
    with pytest.raises(ValueError, match="rewind step must be an integer"):
        RewindPoint(-1)
    assert torch.equal(tiny_net.fc1.weight, before)  # every error came before any training


class _Attn(torch.nn.Module):
    """An MHA block: ``in_proj_weight`` is drawn only by the private ``_reset_parameters``."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(8, 2)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.mha(x, x, x)[0].mean(0))


class _CustomInit(torch.nn.Module):
    """HF style: ``_init_weights(module)`` draws N(0, 0.02) weights, zero biases, and a position table."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(32, 64)
        self.pos = torch.nn.Parameter(torch.empty(4, 8))
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)
        if module is self:
            torch.nn.init.normal_(self.pos, std=0.02)


def test_reinitialize_redraws_mha_in_proj_and_out_proj_like_a_fresh_module():
    torch.manual_seed(0)
    net = _Attn()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)  # "trained" weights: none must survive
    reinitialize_(net, 7)
    torch.manual_seed(7)
    fresh = _Attn()  # construction order: out_proj Linear, then MHA._reset_parameters (zero biases), then head
    for k, v in fresh.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    assert (net.mha.in_proj_bias == 0).all() and (net.mha.out_proj.bias == 0).all()


def test_reinitialize_uses_the_model_own_initializer():
    torch.manual_seed(0)
    net = _CustomInit()
    with torch.no_grad():
        net.fc.weight.fill_(1.0)
        net.pos.fill_(1.0)
    reinitialize_(net, 3)
    assert 0.015 < float(net.fc.weight.detach().std()) < 0.025  # N(0, 0.02), not Linear's U(+-1/sqrt(32)) (std 0.10)
    assert (net.fc.bias == 0).all() and float(net.pos.detach().abs().max()) < 0.2


def test_reinitialize_names_a_parameter_nothing_redraws_and_leaves_the_model_unchanged():
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
            self.scale = torch.nn.Parameter(torch.randn(2))

    torch.manual_seed(0)
    net = Scaled()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"cannot redraw parameters \['scale'\].*factory="):
        reinitialize_(net, 1)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    reinitialize_(net, 1, factory=Scaled)  # a factory redraws everything
    net.init_weights = lambda: torch.nn.init.zeros_(net.fc.bias)  # an initializer that skips some weights
    with pytest.raises(ValueError, match=r"cannot redraw parameters \['scale'\]: .* never wrote them"):
        reinitialize_(net, 1)
    torch.manual_seed(1)
    assert torch.equal(net.scale, Scaled().scale)


def test_reinitialize_from_a_zoo_spec_equals_a_fresh_seeded_model():
    from prunekit.zoo import get_model

    net = get_model("vit", seed=0, image_size=8, dim=8, depth=1, num_heads=2, head_dim=4, mlp_dim=8)
    spec = {"name": "vit", "kwargs": dict(image_size=8, dim=8, depth=1, num_heads=2, head_dim=4, mlp_dim=8)}
    fresh = get_model("vit", seed=5, **spec["kwargs"])
    reinitialize_(net, 5, factory=spec)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in net.state_dict().items())
    reinitialize_(net, 6)  # in place: the ViT's own reset_parameters redraws its class token and positions
    assert not torch.equal(net.pos_embed, fresh.pos_embed) and float(net.pos_embed.detach().std()) < 0.05
    with pytest.raises(ValueError, match="differs from the one to re-initialize"):
        reinitialize_(net, 5, factory={"name": "vit", "kwargs": dict(spec["kwargs"], dim=16)})


def test_reinitialize_rebuilds_a_transformers_model_from_its_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8)
    torch.manual_seed(0)
    net = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
    reinitialize_(net, 4)
    torch.manual_seed(4)
    fresh = transformers.GPT2LMHeadModel(cfg)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in net.state_dict().items())
    assert net.lm_head.weight is net.transformer.wte.weight  # ties kept


def test_imp_config_ends_exactly_at_its_sparsity_and_validates(tiny_net, tiny_data):
    from prunekit.registry import METHODS
    from prunekit.training import IMP, run_imp

    cfg = IMP(0.6, fraction=0.2, rewind_step=2)  # 0.2, 0.36, 0.488, 0.5904, then exactly 0.6 (not 0.67232)
    assert cfg.levels == 5 and METHODS.get("lottery").obj is run_imp
    res = run_imp(tiny_net, cfg, tiny_data, **RECIPE)
    total = sum(m.numel() for m in res.masks().values())
    kept = [sum(int(m.sum()) for m in lv.masks.values()) for lv in res.levels[1:]]
    assert kept == [round(f * total) for f in (0.8, 0.64, 0.512, 0.4096, 0.4)]
    assert res.settings["target_sparsity"] == 0.6 and res.rewind.step == 2
    with pytest.raises(ValueError, match="optimizer_state='rewind' needs rewind_step"):
        IMP(0.6, rewind_step=None, optimizer_state="rewind")
    with pytest.raises(ValueError, match="optimizer_state"):
        IMP(0.6, optimizer_state="momentum")
    with pytest.raises(ValueError, match="exact_target=True needs target_sparsity"):
        iterative_magnitude(tiny_net, tiny_data, rounds=1, exact_target=True, **RECIPE)


class Ends(Callback):
    """Records the weights at the end of every ``fit`` (each soup ingredient)."""

    def __init__(self) -> None:
        self.ends: list[dict] = []

    def on_fit_end(self, state):
        self.ends.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})


def test_sparse_model_soup_averages_ingredients_under_one_mask(tiny_net, tiny_data):
    from prunekit.training.lottery import average_states

    spy = Ends()
    res = iterative_magnitude(tiny_net, tiny_data, rounds=2, fraction=0.5, rewind_step=None, soup=3,
                              callbacks=[spy], **RECIPE)
    assert len(spy.ends) == 1 + 2 * 3  # dense level, then three ingredients per pruned level
    last = spy.ends[-3:]
    assert len({tuple(e["fc1.weight"].flatten().tolist()) for e in last}) == 3  # different batch orders
    want = average_states(last)
    got = tiny_net.state_dict()
    assert all(torch.allclose(got[k].float(), want[k].float()) for k in want)
    masks = res.masks()
    assert all(torch.equal(got[k] != 0, m) for k, m in masks.items())  # the soup keeps the mask exactly
    assert res.levels[-1].sparsity == pytest.approx(0.75) and res.settings["soup"] == 3
    assert res.levels[-1].metrics["soup_ingredients"] == 3


def test_average_states_by_hand():
    from prunekit.training.lottery import average_states

    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(5)}
    out = average_states([a, b])
    assert torch.equal(out["w"], torch.tensor([0.0, 3.0])) and int(out["n"]) == 3
    with pytest.raises(ValueError, match="soup must be an integer >= 1"):
        iterative_magnitude(torch.nn.Linear(2, 2), (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)), rounds=1,
                            soup=0, steps=1)
