"""2:4 export to torch.sparse semi-structured tensors: needs a CUDA GPU, skipped cleanly without one."""

import pytest
import torch
from torch import nn

from prunekit.calibrate.semi_structured import export_semi_structured_, semi_structured_available
from prunekit.patterns import NM, topk_mask

gpu = pytest.mark.skipif(not semi_structured_available(), reason="needs a CUDA GPU with compute capability >= 8.0")


def test_without_gpu_the_error_is_clear():
    if semi_structured_available():
        pytest.skip("a capable GPU is present")
    with pytest.raises(RuntimeError, match="CUDA"):
        export_semi_structured_(nn.Sequential(nn.Linear(64, 32)))


@gpu
def test_export_matches_dense_output():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64).half().cuda()
    with torch.no_grad():
        lin.weight.mul_(topk_mask(lin.weight.abs().float(), None, NM(2, 4)))
    x = torch.randn(64, 128, dtype=torch.half, device="cuda")
    ref = lin(x)
    model = nn.Sequential(lin)
    assert export_semi_structured_(model) == ["0"]
    assert torch.allclose(model(x), ref, atol=1e-2, rtol=1e-2)


@gpu
def test_dense_layers_are_left_alone():
    lin = nn.Linear(128, 64).half().cuda()  # not 2:4
    assert export_semi_structured_(nn.Sequential(lin)) == []
