"""``structured.source``: what structured pruning starts from (zoo name, checkpoint, HF folder) and its costs."""

import pytest

from prunekit.structured.source import load_source, measure


def test_zoo_source_with_model_kwargs_and_its_inputs():
    model, x, src = load_source("cnn1d", batch=3, model_kwargs={"channels": 8})
    assert model.convs[0].out_channels == 8 and tuple(x.shape) == (3, 40)
    assert src == {"zoo": "cnn1d", "kwargs": {"channels": 8}}


def test_unknown_source_names_the_three_accepted_kinds():
    with pytest.raises(ValueError, match="neither a zoo model .* checkpoint folder .* transformers folder"):
        load_source("nope")


def test_measure_reports_before_after_and_the_ideal_speedup():
    from torch import nn

    dense, slim = nn.Linear(8, 8, bias=False), nn.Linear(8, 4, bias=False)
    import torch

    m = measure(dense, slim, torch.randn(2, 8), repeats=2)
    assert (m["macs_before"], m["macs_after"]) == (2 * 64, 2 * 32) and (m["params_before"], m["params_after"]) == \
        (64, 32)
    assert m["ideal_speedup"] == 2.0 and m["latency_ms_before"] > 0 and m["speedup"] > 0
