"""SliceGPT (``prunekit.structured.slice``) on tiny random LLaMA-family and OPT models (no download)."""

import copy
import json

import pytest
import torch

from prunekit.structured import Structured, load_sliced, remove_units_, save_sliced, select_units, slice_
from prunekit.structured.slice import RMSNorm, SlicedBlock, fold_norms_

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 96
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def _make(kind: str, seed: int = 0) -> torch.nn.Module:
    t = transformers
    cfgs = {
        "llama": lambda: t.LlamaConfig(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "mistral": lambda: t.MistralConfig(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "qwen2": lambda: t.Qwen2Config(**SMALL, intermediate_size=64, num_key_value_heads=2),
        "qwen3": lambda: t.Qwen3Config(**SMALL, intermediate_size=64, num_key_value_heads=2, head_dim=8),
        "opt": lambda: t.OPTConfig(**SMALL, ffn_dim=64, word_embed_proj_dim=32),
    }
    torch.manual_seed(seed)
    model = t.AutoModelForCausalLM.from_config(cfgs[kind]()).eval()
    with torch.no_grad():  # trained-looking norms: scales and shifts that the fold must carry
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, 16), generator=torch.Generator().manual_seed(seed))


CALIB, X = _ids(8, 0), _ids(2, 1)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=X).logits


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_rotation_only_reproduces_dense_logits(kind):
    model = _make(kind).double()
    dense = _logits(model)
    emb_before = model.get_input_embeddings().weight.detach().clone()
    report = slice_(model, CALIB, 0.0)
    assert report.hidden_before == report.hidden_after == 32
    assert all(isinstance(b, SlicedBlock) and b.attn_shortcut.shape == (32, 32) for b in
               model.get_submodule("model.layers" if kind == "llama" else "model.decoder.layers"))
    assert not torch.allclose(model.get_input_embeddings().weight, emb_before)  # really rotated
    assert all(v == pytest.approx(1.0) for v in report.kept_variance.values())
    assert (_logits(model) - dense).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "qwen3"])
def test_rotation_only_other_llama_families(kind):
    model = _make(kind).double()
    dense = _logits(model)
    slice_(model, CALIB, 0.0)
    assert (_logits(model) - dense).abs().max() < 1e-4


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_norm_fold_alone_is_exact(kind):
    model = _make(kind)  # float32
    dense = _logits(model)
    info = fold_norms_(model)
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    assert len(norms) == info["norms"] == 5
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert (_logits(model) - dense).abs().max() < 1e-5


def test_layernorm_fold_centers_every_writer():
    model = _make("opt")
    fold_norms_(model)
    dec = model.model.decoder
    assert dec.embed_tokens.weight.mean(-1).abs().max() < 1e-6
    assert dec.layers[0].fc2.weight.mean(0).abs().max() < 1e-6
    assert model.lm_head.bias is not None and model.lm_head.weight is not dec.embed_tokens.weight  # untied


def _normalized_removal(model: torch.nn.Module, fraction: float) -> tuple[torch.nn.Module, int]:
    """``prune_normalized=True``'s choice for the hidden (norm-mixed) group only, removed: the same width."""
    x = {"input_ids": X}
    graph, keep = select_units(model, x, Structured(sparsity=fraction, prune_normalized=True))
    hidden = next(g for g in graph.groups(include_inexact=True) if g.inexact is not None and g.size == 32)
    slim = copy.deepcopy(model)
    remove_units_(slim, x, graph, {hidden.id: keep[hidden.id]})
    return slim, len(keep[hidden.id])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_slicing_beats_normalized_removal_at_the_same_width(kind, seed):
    model = _make(kind, seed)
    dense = _logits(model)
    slim, width = _normalized_removal(model, 0.25)
    sliced = copy.deepcopy(model)
    report = slice_(sliced, CALIB, 0.25)
    assert report.hidden_after == width == 24
    assert sliced.get_input_embeddings().weight.shape == (VOCAB, 24)
    assert all(0 < v < 1 for v in report.kept_variance.values())
    err_slice, err_norm = _rel(_logits(sliced), dense), _rel(_logits(slim), dense)
    assert err_slice < err_norm, (err_slice, err_norm)


def test_params_shrink_and_tied_head_is_reported():
    model = _make("opt")
    report = slice_(model, CALIB, 0.25)
    assert report.untied_lm_head and not model.config.tie_word_embeddings
    assert report.params_after == sum(p.numel() for p in model.parameters()) < report.params_before + VOCAB * 32
    llama = _make("llama")
    rep = slice_(llama, CALIB, 0.5, round_to=8)
    assert rep.hidden_after == 16 and not rep.untied_lm_head and rep.params_after < rep.params_before


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_saved_model_reloads_with_the_same_logits(kind, tmp_path):
    model = _make(kind)
    report = slice_(model, CALIB, 0.25)
    out = save_sliced(model, report, tmp_path / "sliced")
    assert not (out / "model.safetensors").exists()  # plain from_pretrained must not half-load it
    again = load_sliced(out)
    assert type(again) is type(model)
    assert torch.equal(_logits(again), _logits(model))
    with pytest.raises(FileExistsError):
        save_sliced(model, report, out)


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5, "0.2", True, float("nan")])
def test_bad_fraction_names_the_argument(fraction):
    model = _make("llama")
    with pytest.raises(ValueError, match=r"fraction .*\[0, 1\)"):
        slice_(model, CALIB, fraction)


def test_bad_inputs_change_nothing():
    model = _make("llama")
    dense = _logits(model)
    with pytest.raises(ValueError, match="calibration_ids"):
        slice_(model, CALIB.float(), 0.2)
    with pytest.raises(ValueError, match=r"calibration_ids.*\[0, 96\)"):
        slice_(model, CALIB + VOCAB, 0.2)
    with pytest.raises(ValueError, match="round_to"):
        slice_(model, CALIB, 0.2, round_to=0)
    assert torch.equal(_logits(model), dense)
    bert = transformers.BertModel(transformers.BertConfig(intermediate_size=64, **SMALL))
    with pytest.raises(ValueError, match=r"model: .*BertModel.*'llama'.*'opt'"):
        slice_(bert, CALIB, 0.2)
    post = transformers.OPTForCausalLM(transformers.OPTConfig(**SMALL, ffn_dim=64, do_layer_norm_before=False))
    with pytest.raises(ValueError, match="do_layer_norm_before"):
        slice_(post, CALIB, 0.2)
    slice_(model, CALIB, 0.2)
    with pytest.raises(ValueError, match="already sliced"):
        slice_(model, CALIB, 0.2)


def test_failure_midway_rolls_back(monkeypatch):
    from prunekit.structured import slice as mod

    model = _make("opt")
    dense, state = _logits(model), {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def boom(c):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected")
        return real(c)

    real = mod._principal
    monkeypatch.setattr(mod, "_principal", boom)
    with pytest.raises(RuntimeError, match="injected"):
        slice_(model, CALIB, 0.25)
    assert not any(isinstance(m, (SlicedBlock, RMSNorm)) for m in model.modules())
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight and model.config.tie_word_embeddings
    assert set(model.state_dict()) == set(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(_logits(model), dense)


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_generation_with_kv_cache_matches_dense(kind):
    dense = _make(kind).double()
    rotated = copy.deepcopy(dense)
    slice_(rotated, CALIB, 0.0)
    want = dense.generate(X[:1, :8], max_new_tokens=6, do_sample=False, use_cache=True)
    assert torch.equal(rotated.generate(X[:1, :8], max_new_tokens=6, do_sample=False, use_cache=True), want)


def test_error_grows_with_the_sliced_fraction():
    model = _make("llama")
    dense = _logits(model)
    errs, kept = [], []
    for frac in (0.125, 0.25, 0.5):
        m = copy.deepcopy(model)
        rep = slice_(m, CALIB, frac)
        errs.append(_rel(_logits(m), dense))
        kept.append(min(rep.kept_variance.values()))
    assert errs == sorted(errs) and kept == sorted(kept, reverse=True) and errs[0] > 1e-3


@pytest.mark.parametrize("kind", ["llama", "opt"])
def test_one_shared_rotation_without_shortcuts(kind, tmp_path):
    model = _make(kind).double()
    dense = _logits(model)
    rotated = copy.deepcopy(model)
    assert slice_(rotated, CALIB, 0.0, shortcuts=False).shortcuts == 0
    assert (_logits(rotated) - dense).abs().max() < 1e-4
    sliced = _make(kind)
    rep = slice_(sliced, CALIB, 0.25, shortcuts=False)
    assert all(getattr(b, "attn_shortcut", None) is None for b in sliced.modules() if isinstance(b, SlicedBlock))
    out = save_sliced(sliced, rep, tmp_path / "s")
    man = json.loads((out / "manifest.json").read_text())
    assert man["layout"] == ("plain" if kind == "llama" else "shortcuts")
    if kind == "llama":  # a plain transformers folder: hidden 24, head_dim kept, same logits
        plain = transformers.LlamaForCausalLM.from_pretrained(out).eval()
        assert plain.config.hidden_size == 24 and plain.config.head_dim == 8
        assert (_logits(plain) - _logits(sliced)).abs().max() < 1e-5
    assert (_logits(load_sliced(out)) - _logits(sliced)).abs().max() < 1e-5
