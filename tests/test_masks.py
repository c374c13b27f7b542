import pytest
import torch
from torch import nn

from prunekit.masks import attach, attached, load_masks, masks_from_zeros, masks_of, prunable_parameters, save_masks


def test_prunable_parameters_names(tiny_net):
    assert list(prunable_parameters(tiny_net)) == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert list(prunable_parameters(tiny_net, exclude=["fc2"])) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    with pytest.raises(ValueError, match="unknown prunable"):
        prunable_parameters(tiny_net, include=["fc9"])


def test_attach_zeroes_masks_grads_and_bakes():
    lin = nn.Linear(2, 2, bias=False)
    mask = torch.tensor([[True, False], [False, True]])
    ms = attach(lin, {"weight": mask})
    assert (lin.weight[~mask] == 0).all() and "weight_mask" not in lin.state_dict()
    lin(torch.ones(1, 2)).sum().backward()
    assert (lin.weight.grad[~mask] == 0).all() and (lin.weight.grad[mask] != 0).all()
    assert torch.equal(masks_of(lin)["weight"], mask)
    baked = ms.bake()
    assert torch.equal(baked["weight"], mask) and attached(lin) is None and masks_of(lin) == {}
    assert (lin.weight[~mask] == 0).all()


@pytest.mark.parametrize("opt_name", ["sgd", "adamw"])
def test_exact_zeros_and_moments_after_steps_with_user_loop(opt_name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3) if opt_name == "sgd"
           else torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(5):  # build momentum before pruning
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    masks = {k: torch.rand_like(p) > 0.7 for k, p in prunable_parameters(net).items()}
    ms = attach(net, masks).watch(opt)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for k, p in ms.params.items():
        assert (p[~masks[k]] == 0.0).all()
        for v in opt.state[p].values():
            if torch.is_tensor(v) and v.shape == p.shape:
                assert (v[~masks[k]] == 0.0).all()


def test_save_load_round_trip_and_corrupt_file(tmp_path, tiny_net):
    masks = {k: torch.rand_like(p) > 0.5 for k, p in prunable_parameters(tiny_net).items()}
    path = save_masks(tmp_path / "m.safetensors", masks, {"method": "magnitude"})
    loaded, meta = load_masks(path)
    assert meta == {"method": "magnitude"} and all(torch.equal(loaded[k], masks[k]) for k in masks)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        load_masks(bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_masks(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="torch.bool"):
        save_masks(tmp_path / "x.safetensors", {"a": torch.ones(2)})
    assert not (tmp_path / "x.safetensors").exists()


def test_masks_from_zeros(tiny_net):
    with torch.no_grad():
        tiny_net.fc2.weight[0] = 0
    m = masks_from_zeros(tiny_net)
    assert int((~m["fc2.weight"]).sum()) == 16


def test_watched_masks_gradients_in_the_step_pre_hook_and_weights_after_it():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    mask = torch.tensor([[True, False, True, False]] * 3)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5, momentum=0.9)
    ms = attach(lin, {"weight": mask}).watch(opt)
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        assert (lin.weight.grad[~mask] != 0).all()  # dense between backward and step (RigL reads them)
        opt.step()
        assert (lin.weight.grad[~mask] == 0).all() and (lin.weight[~mask] == 0).all()
        assert (opt.state[lin.weight]["momentum_buffer"][~mask] == 0).all()
    ms.update_({"weight": ~mask})  # swap: weights and momentum of the newly pruned half are zeroed
    assert (lin.weight[mask] == 0).all() and (opt.state[lin.weight]["momentum_buffer"][mask] == 0).all()
    opt.zero_grad()
    lin(x).pow(2).sum().backward()
    opt.step()
    assert (lin.weight[mask] == 0).all() and (lin.weight[~mask] != 0).all()  # the grown half trains


def test_masks_follow_the_model_to_another_dtype():
    lin = nn.Linear(4, 2)
    mask = torch.tensor([[True, False, True, False]] * 2)
    ms = attach(lin, {"weight": mask})
    lin.double()
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    ms.watch(opt)
    for _ in range(2):
        opt.zero_grad()
        lin(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
        opt.step()
    assert lin.weight.dtype == torch.float64 and (lin.weight[~mask] == 0).all()
    assert (opt.state[lin.weight]["exp_avg_sq"][~mask] == 0).all()
