"""ONNX export of a (slim) model, checked in onnxruntime against the PyTorch outputs."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..io import OutputExistsError, atomic_write_bytes
from .trace import call_model, input_tensors, output_tensors

log = logging.getLogger(__name__)


def _positional(example_inputs: Any) -> tuple[tuple, dict]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def onnx_bytes(model: nn.Module, example_inputs: Any, opset: int = 17) -> bytes:
    """The model as an ONNX file (TorchScript exporter: no ``torch._dynamo``, no onnxscript), eval mode."""
    args, kwargs = _positional(example_inputs)
    names = [f"input_{i}" for i in range(len(args))] + list(kwargs)
    buf = io.BytesIO()
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(model, args, buf, kwargs=kwargs or None, input_names=names, opset_version=opset,
                              dynamo=False, do_constant_folding=True)
    finally:
        model.train(was)
    return buf.getvalue()


def onnx_max_error(data: bytes, model: nn.Module, example_inputs: Any) -> float:
    """Largest absolute difference between onnxruntime's outputs of ``data`` and the model's on the inputs."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("checking an ONNX export needs onnxruntime: pip install 'prunekit[export]'") from e
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), input_tensors(example_inputs))}
    got = sess.run(None, feeds)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = [o for o in output_tensors(call_model(model, example_inputs))]
    finally:
        model.train(was)
    if len(got) != len(want):
        raise ValueError(f"the ONNX model returns {len(got)} outputs, the PyTorch model {len(want)}")
    errs = [float((torch.as_tensor(g) - w.detach().cpu().to(torch.as_tensor(g).dtype)).abs().max())
            if isinstance(w, Tensor) and w.numel() else 0.0 for g, w in zip(got, want)]
    return max(errs, default=0.0)


def export_onnx(model: nn.Module, example_inputs: Any, path: str | os.PathLike, *, opset: int = 17,
                check: bool = True, atol: float = 1e-4, overwrite: bool = False) -> dict[str, Any]:
    """Export ``model`` (e.g. slimmed by ``remove_``) to ONNX at ``path``, written atomically.

    With ``check`` the file is run in onnxruntime on ``example_inputs`` first; an output farther than ``atol`` from
    PyTorch's is an error and nothing is written. Returns ``{"path", "bytes", "max_abs_error"}``. Needs the
    ``export`` extra (onnx, onnxruntime) for the check.
    """
    out = Path(path)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True to replace it, or choose another path")
    if out.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(out)!r}")
    data = onnx_bytes(model, example_inputs, opset)
    err = onnx_max_error(data, model, example_inputs) if check else None
    if err is not None and not err <= atol:
        raise ValueError(f"the ONNX export differs from the PyTorch model by {err:.3g} (> atol={atol}) on the example "
                         f"inputs; nothing was written to {out}")
    atomic_write_bytes(out, data)
    log.info("exported ONNX to %s (%d bytes, max abs error %s)", out, len(data), err)
    return {"path": str(out), "bytes": len(data), "max_abs_error": err}
