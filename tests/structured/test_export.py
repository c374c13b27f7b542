"""A slim model exports to ONNX and runs in onnxruntime with the PyTorch outputs (1e-4)."""

import pytest
import torch

from prunekit.io import OutputExistsError
from prunekit.structured import Structured, export_onnx, remove_
from prunekit.zoo import example_inputs, get_model

pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name", ["lenet5", "vit"])
def test_slim_model_exports_to_onnx_with_the_same_outputs(name, tmp_path):
    x = example_inputs(name)
    m = get_model(name, seed=0)
    remove_(m, x, Structured(sparsity=0.5))
    info = export_onnx(m, x, tmp_path / "slim.onnx")
    assert info["max_abs_error"] <= 1e-4 and (tmp_path / "slim.onnx").stat().st_size == info["bytes"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])
    got = torch.as_tensor(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = m.eval()(x)
    assert got.shape == want.shape and float((got - want).abs().max()) <= 1e-4
    with pytest.raises(OutputExistsError, match="already exists"):
        export_onnx(m, x, tmp_path / "slim.onnx")
    with pytest.raises(ValueError, match="end in .onnx"):
        export_onnx(m, x, tmp_path / "slim.bin")
