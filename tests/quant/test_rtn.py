"""Group-wise RTN: hand-computed codes, the mask kept exactly, int4 packing round trip."""

from __future__ import annotations

import pytest
import torch

from prunekit.quant import pack4, quantize, unpack4


def test_codes_by_hand():
    W = torch.tensor([[-1.0, 0.0, 0.5, 2.0], [0.3, 0.0, 0.0, 0.6]])
    qw = quantize(W, 4, 4)
    # row 0: lo -1, hi 2 -> scale 3/15 = 0.2, zero round(5) = 5; codes round(w / 0.2) + 5
    assert qw.scale[0, 0].item() == pytest.approx(0.2) and qw.zero[0, 0].item() == 5
    assert qw.q[0].tolist() == [0, 5, 8, 15]
    # row 1: range widened to include 0: lo 0, hi 0.6 -> scale 0.04, zero 0
    assert qw.zero[1, 0].item() == 0 and qw.q[1].tolist() == [8, 0, 0, 15]
    assert torch.allclose(qw.dequantize(), torch.tensor([[-1.0, 0.0, 0.6, 2.0], [0.32, 0.0, 0.0, 0.6]]))


@pytest.mark.parametrize("bits", [4, 8])
def test_mask_kept_and_range_from_kept_weights_only(bits):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 64, generator=g)
    mask = torch.rand(16, 64, generator=g) > 0.5
    W[~mask] = 100.0  # a pruned weight must not widen the range
    qw = quantize(W, bits, 32, mask)
    d = qw.dequantize()
    assert torch.all(d[~mask] == 0)
    step = qw.scale.repeat_interleave(32, dim=1)  # (out, in) the group's step
    assert torch.all((d - W).abs()[mask] <= step[mask] / 2 + 1e-6)  # round to nearest: half a step at most
    assert float(qw.scale.max()) < 10 / (2**bits - 1)  # from the kept N(0, 1) weights, not the 100s


def test_pack4_round_trip_and_errors():
    c = torch.tensor([1, 15, 0, 7, 9], dtype=torch.uint8)
    p = pack4(c)
    assert p.tolist() == [1 | 15 << 4, 0 | 7 << 4, 9] and torch.equal(unpack4(p, 5), c)
    with pytest.raises(ValueError, match="bits must be one of"):
        quantize(torch.zeros(2, 4), 3, 4)
    with pytest.raises(ValueError, match="group=3 must divide"):
        quantize(torch.zeros(2, 4), 4, 3)
