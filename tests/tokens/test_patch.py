"""apply_ on a tiny random BERT and the zoo ViT: padding, special tokens, keep 1.0, real reduction."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.tokens import TokenPrune, apply_
from prunekit.zoo import ViT

METHODS = ("zero-tprune", "attention", "tome", "random")


def _bert(impl: str = "sdpa"):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=64, attn_implementation=impl)
    return T.BertModel(cfg, add_pooling_layer=False).eval()


def _ids(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (n,), generator=g)
    ids[0], ids[-1] = 1, 2  # [CLS] ... [SEP]
    return ids


def _batch(seqs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), t, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def _pooled(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask[..., None].float()
    return (h * w).sum(1) / w.sum(1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("impl", ("sdpa", "eager"))
def test_padded_batch_keeps_what_each_sequence_keeps_alone(method, impl):
    model = _bert(impl)
    patch = apply_(model, TokenPrune(method=method, keep=0.5, layers=(0, 1)))
    seqs = [_ids(20, 1), _ids(9, 2), _ids(14, 3)]
    batch = _batch(seqs)
    with torch.no_grad():
        h = model(**batch).last_hidden_state
        kept_batch = patch.last.kept_positions()
        pooled = _pooled(h, batch["attention_mask"])
        for i, s in enumerate(seqs):
            alone = model(input_ids=s[None]).last_hidden_state
            assert patch.last.kept_positions()[0] == kept_batch[i], (method, i)
            assert torch.allclose(alone.mean(1)[0], pooled[i], atol=1e-4), (method, i)


@pytest.mark.parametrize("method", METHODS)
def test_special_tokens_are_never_dropped(method):
    model = _bert()
    s = _ids(24, 4)
    s[7] = s[15] = 3  # two [SEP]-like ids inside the sequence
    patch = apply_(model, TokenPrune(method=method, keep=0.2, layers=(0, 1, 2), special_ids=(3,)))
    with torch.no_grad():
        model(**_batch([s, _ids(11, 5)]))
    kept = patch.last.kept_positions()
    assert {0, 7, 15, 23} <= set(kept[0]) and {0, 10} <= set(kept[1]), (method, kept)
    assert len(kept[0]) < 24 and len(kept[1]) < 11


@pytest.mark.parametrize("method", METHODS)
def test_keep_one_is_bit_identical(method):
    model = _bert()
    batch = _batch([_ids(12, 6), _ids(7, 7)])
    dense = copy.deepcopy(model)
    apply_(model, TokenPrune(method=method, keep=1.0, layers=(0, 1)))
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, dense(**batch).last_hidden_state)
    vit, vit_dense = ViT(image_size=8, patch_size=2, in_channels=1, depth=2), None
    vit_dense = copy.deepcopy(vit)
    apply_(vit, TokenPrune(method=method, schedule=(1.0, 1.0)))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(vit(x), vit_dense(x))


def test_dropped_tokens_leave_the_tensors():
    model = _bert()
    apply_(model, TokenPrune(method="zero-tprune", keep=0.5, layers=(0,)))
    seen = []
    model.encoder.layer[0].intermediate.register_forward_hook(lambda m, a, y: seen.append(a[0].shape))
    model.encoder.layer[2].register_forward_hook(lambda m, a, y: seen.append(y.shape))
    with torch.no_grad():
        out = model(input_ids=_ids(20, 8)[None]).last_hidden_state
    assert seen == [torch.Size([1, 10, 32]), torch.Size([1, 10, 32])] and out.shape == (1, 20, 32)


@pytest.mark.parametrize("method", METHODS)
def test_vit_keeps_the_class_token_and_the_count(method):
    torch.manual_seed(0)
    vit = ViT(image_size=8, patch_size=2, in_channels=1, num_classes=3, depth=2)
    patch = apply_(vit, TokenPrune(method=method, keep=0.5))  # 17 tokens -> round(8.5) = 9 after layer 0
    out = vit(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 3) and torch.isfinite(out).all()
    assert [len(k) for k in patch.last.kept_positions()] == [9] * 4
    assert all(k[0] == 0 for k in patch.last.kept_positions())
    assert patch.tokens_kept() == pytest.approx(9 / 17)


def test_bad_config_and_model_are_refused():
    with pytest.raises(ValueError, match="method must be one of"):
        TokenPrune(method="nope")
    with pytest.raises(ValueError, match="keep"):
        TokenPrune(keep=0.0)
    with pytest.raises(ValueError, match="layers"):
        apply_(ViT(image_size=8, patch_size=2, in_channels=1, depth=2), TokenPrune(layers=(5,)))
    with pytest.raises(TypeError, match="cannot prune tokens"):
        apply_(torch.nn.Linear(2, 2), TokenPrune())
    from prunekit.zoo import get_model

    with pytest.raises(TypeError, match="forward differs"):
        apply_(get_model("vit-softhgnn"), TokenPrune())
    cfg = TokenPrune(method="tome", keep=0.7, layers=(0, 2))
    assert TokenPrune.from_dict(cfg.to_dict()) == cfg


def test_roberta_and_a_task_head_are_patched_too():
    import transformers as T

    torch.manual_seed(0)
    cfg = T.RobertaConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=80, num_labels=3)
    model = T.RobertaForSequenceClassification(cfg).eval()
    batch = _batch([_ids(20, 9) + 1, _ids(12, 10) + 1])
    with torch.no_grad():
        dense = model(**batch).logits
        patch = apply_(model, TokenPrune(method="zero-tprune", keep=0.5))
        out = model(**batch).logits
    assert out.shape == dense.shape and torch.isfinite(out).all()
    assert [len(k) for k in patch.last.kept_positions()] == [10, 6]
