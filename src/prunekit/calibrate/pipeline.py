"""Prune a ``save_pretrained`` folder into another one: load the saved class, calibrate, save, check every tensor."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..masks import Report
from . import io
from .data import calibration_data
from .engine import clear_state, prune_blocks

log = logging.getLogger(__name__)


def load_tokenizer(model_dir: Path, required: bool = True) -> Any:
    """The folder's tokenizer; ``None`` (logged) when there is none and ``required`` is False."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises several error types for a missing tokenizer
        if required:
            raise ValueError(f"{model_dir} has no usable tokenizer ({e}); save one with the model") from e
        log.warning("%s has no usable tokenizer (%s); the pruned folder is saved without one", model_dir, e)
        return None


def manifest(report: Report, model_dir: Path) -> dict[str, Any]:
    """Method, config, calibration, per-layer details, experts, ledger and timing of a pruning run."""
    import transformers

    import prunekit

    layers = {r.name: {"target": r.target, "error": r.error, "seconds": r.seconds} for r in report.layers}
    ex = report.extra
    return {"method": report.method, "calibration": ex["calibration"], "blocks": ex["blocks"],
            "owl": ex.get("owl"), "source_model": str(model_dir), "model_class": ex.get("model_class"),
            "stacks": ex.get("stacks"), "sparsity": report.sparsity, "seconds": report.seconds,
            "runs": ex.get("runs"), "experts": ex.get("experts"), "expert_fallbacks": ex.get("expert_fallbacks"),
            "ledger": ex.get("ledger"), "layers": layers, "prunekit": getattr(prunekit, "__version__", "0"),
            "transformers": transformers.__version__}


def prune_model_dir(model_dir: str | Path, out: str | Path, solver: str, config: Any, *,
                    calibration: Any = None, calib: str | Path | None = None, nsamples: int = 128,
                    seq_len: int = 256, seed: int = 0, device: torch.device | str | None = None,
                    state_dir: str | Path | None = None, overwrite: bool = False,
                    progress: Any = None, attn_implementation: str | None = None) -> tuple[Report, Path]:
    """Prune the model of ``model_dir`` with ``solver`` / ``config`` and save it to ``out``; return the report.

    The model is loaded as the class its ``config.json`` names and saved as that class; every tensor
    of the saved folder is then compared with the source's (pruned or bit-identical, else nothing is
    written) and the result is in the manifest's ``tensors`` entry. ``calibration`` (token ids or a
    ``Calibration``) overrides the text source ``calib`` / ``nsamples`` / ``seq_len`` / ``seed``.
    Resume files live in ``state_dir`` (default ``.<out>.state`` beside ``out``) and are removed
    after a successful save. ``attn_implementation`` (``eager`` | ``sdpa``) is passed to ``io.load_model``.
    """
    model_dir, out = io.check_model_dir(model_dir), Path(out)
    io._check_out(out, overwrite)
    if calib is not None and not Path(calib).exists():
        raise FileNotFoundError(f"calib {calib} does not exist")
    tok = load_tokenizer(model_dir, required=calibration is None)
    model = io.load_model(model_dir, attn_implementation=attn_implementation)
    data = calibration if calibration is not None else calibration_data(tok, calib, nsamples, seq_len, seed)
    state = Path(state_dir) if state_dir is not None else out.parent / f".{out.name}.state"
    report = prune_blocks(model, solver, config, data, device=device, state_dir=state, progress=progress,
                          attach_masks=False)  # plain weights, pruned ones exactly zero; masks bit-packed
    report.extra["model_class"] = type(model).__name__
    masks = report.extra.pop("packed_masks")
    man = manifest(report, model_dir)
    saved = io.save_pruned(model, out, masks, man, tokenizer=tok, overwrite=overwrite, source_dir=model_dir)
    report.extra["tensors"] = io.load_manifest(saved)["tensors"]
    clear_state(state)
    return report, saved
