"""Block stacks and their captured inputs: replaying every block on what was captured gives exactly the
model's own forward (T5's shared position biases, BART's and T5's cross-attention, per-layer masks)."""

from __future__ import annotations

import logging

import pytest
import torch

from prunekit.calibrate.blocks import capture_stack, find_stacks, run_block, shift_right, stack_runner

from .test_hf_models import hf_config, ids


def _model(name: str):
    import transformers as T

    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    return getattr(T, name)(hf_config(name)).eval()


def _gemma2():
    import transformers as T

    torch.manual_seed(0)
    cfg = T.Gemma2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=96, head_dim=8, sliding_window=4,
                         max_position_embeddings=64, layer_types=["sliding_attention", "full_attention"])
    return T.Gemma2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("name", ["LlamaForCausalLM", "T5ForConditionalGeneration", "BartForConditionalGeneration",
                                  "gemma2"])
def test_replaying_captured_inputs_gives_the_model_output(name):
    model = _gemma2() if name == "gemma2" else _model(name)
    stacks = find_stacks(model)
    x = ids(n=4, seq=12)
    batches = list(x.split(2))
    for k, st in enumerate(stacks):
        real: list[torch.Tensor] = []

        def keep(_m, _a, out, real=real):
            real.append(out[0] if isinstance(out, tuple) else out)

        h = st.blocks[-1].register_forward_hook(keep)
        with torch.no_grad():
            for b in batches:
                stack_runner(model, stacks, k)(b)
        h.remove()
        cap = capture_stack(stack_runner(model, stacks, k), st.blocks, batches, torch.device("cpu"),
                            torch.device("cpu"))
        inputs = cap.first
        with torch.no_grad():
            for i, block in enumerate(st.blocks):
                outs = [run_block(block, inp) for inp in inputs]
                inputs = cap.for_block(i + 1, outs) if i + 1 < len(st.blocks) else None
        assert all(torch.equal(o, r) for o, r in zip(outs, real)), (name, st.prefix)
        assert cap.uniform is (name in ("LlamaForCausalLM", "BartForConditionalGeneration"))  # T5, Gemma2: per block
    if name == "T5ForConditionalGeneration":  # block 0 computes the position bias, later blocks receive it
        assert cap.extras[0][0][0][1] is None and torch.is_tensor(cap.extras[1][0][0][1])


def test_encoder_decoder_stacks_and_decoder_inputs():
    t5 = _model("T5ForConditionalGeneration")
    assert [(s.prefix, s.part) for s in find_stacks(t5)] == [("encoder.block", "encoder"), ("decoder.block", "decoder")]
    bart = _model("BartForConditionalGeneration")
    assert [s.prefix for s in find_stacks(bart)] == ["model.encoder.layers", "model.decoder.layers"]
    assert find_stacks(_model("LlamaForCausalLM"))[0].prefix == "model.layers"
    assert torch.equal(shift_right(torch.tensor([[5, 6, 7]]), 2), torch.tensor([[2, 5, 6]]))
