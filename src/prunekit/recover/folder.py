"""Recover a pruned model folder into another: calibrated (kind ``hf``) or structured (kind ``structured``).

The dense source model is the folder the manifest records (``source_model``, calibrated output) or
``dense`` (needed for a structured folder: its plan rebuilds the architecture, not the dense weights,
and it carries no tokenizer). Perplexity is measured before and after (and of the dense model where
one is known) under one protocol; the result goes into the output's manifest and ``metrics.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..io import check_out, read_manifest, write_json
from .config import Recovery
from .core import recover_

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"


@dataclass
class Pruned:
    """A loaded pruned folder: model, masks (empty for a slim model), manifest, kind, plan, dense folder."""

    model: nn.Module
    masks: dict[str, Tensor]
    manifest: dict[str, Any]
    kind: str
    dense: Path | None
    plan: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def dense_of(manifest: dict[str, Any], dense: str | Path | None) -> Path | None:
    """``dense`` if given, else the manifest's ``source_model`` when that folder still exists (else None, logged)."""
    if dense is not None:
        p = Path(dense)
        if not p.is_dir():
            raise FileNotFoundError(f"--dense {p} does not exist")
        return p
    src = manifest.get("source_model")
    if isinstance(src, str) and Path(src).is_dir():
        return Path(src)
    if src:
        log.warning("the manifest's dense source %s is gone; pass --dense DIR for its perplexity / distillation", src)
    return None


def load_pruned_folder(path: str | Path, dense: str | Path | None = None) -> Pruned:
    """Load a folder written by calibrated (``hf``) or structured pruning, with its masks and dense source."""
    d = Path(path)
    man = read_manifest(d, kinds=("hf", "structured"), what="pruned model")
    if man["kind"] == "hf":
        from ..calibrate.io import load_pruned

        model, masks, man = load_pruned(d, attach_masks=False)
        return Pruned(model, masks, man, "hf", dense_of(man, dense))
    from ..structured.save import _read_plan, load_structured

    model = load_structured(d)
    if not hasattr(model, "config"):
        raise ValueError(f"{d} holds a structured {type(model).__name__}, not a transformers LM: recovery trains "
                         "causal LMs")
    return Pruned(model.eval(), {}, man, "structured", dense_of(man, dense), plan=_read_plan(d))


def tokenizer_for(pruned_dir: Path, dense: Path | None) -> Any:
    """The tokenizer of the pruned folder, else of the dense folder; a clear error when neither has one."""
    from transformers import AutoTokenizer

    for d in (pruned_dir, dense):
        if d is None:
            continue
        try:
            return AutoTokenizer.from_pretrained(d, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises several error types for a missing tokenizer
            log.info("no tokenizer in %s (%s)", d, e)
    raise ValueError(f"no tokenizer in {pruned_dir}" + (f" nor in {dense}" if dense else "") +
                     ": pass --dense DIR (the dense model folder, with its tokenizer)")


def perplexity_of(model: nn.Module, stream: Tensor, seq_len: int, max_windows: int | None) -> float:
    """Perplexity on non-overlapping windows (``calibrate.evaluate.perplexity``)."""
    from ..calibrate.evaluate import perplexity

    return float(perplexity(model, stream, seq_len, max_windows=max_windows)["ppl"])


def recover_dir(path: str | Path, out: str | Path, cfg: Recovery, *, texts: list[str], eval_texts: list[str],
                dense: str | Path | None = None, max_windows: int | None = 64, overwrite: bool = False,
                progress: Any = None) -> dict[str, Any]:
    """Recover the pruned folder ``path`` into ``out``; return the metrics (ppl before/after, counts, times)."""
    from ..calibrate.data import tokenize_stream

    src, out = Path(path), Path(out)
    check_out(out, overwrite=overwrite, inputs=[src])
    pr = load_pruned_folder(src, dense)
    if cfg.method == "distill" and pr.dense is None:
        raise ValueError(f"--method distill needs the dense model: {src}'s manifest records none that exists; "
                         "pass --dense DIR")
    tok = tokenizer_for(src, pr.dense)
    train_ids, eval_ids = tokenize_stream(texts, tok), tokenize_stream(eval_texts, tok)
    teacher = _load_dense(pr.dense) if pr.dense is not None else None
    m: dict[str, Any] = {"method": cfg.method, "source": str(src), "kind": pr.kind,
                         "dense": str(pr.dense) if pr.dense else None}
    if teacher is not None:
        m["ppl_dense"] = perplexity_of(teacher, eval_ids, cfg.seq_len, max_windows)
    m["ppl_before"] = perplexity_of(pr.model, eval_ids, cfg.seq_len, max_windows)
    t0 = time.perf_counter()
    m.update(recover_(pr.model, train_ids, cfg, pr.masks, teacher if cfg.method == "distill" else None,
                      progress=progress))
    m["recover_seconds"] = time.perf_counter() - t0
    m["ppl_after"] = perplexity_of(pr.model, eval_ids, cfg.seq_len, max_windows)
    if "ppl_dense" in m and m["ppl_before"] > m["ppl_dense"]:
        m["gap_closed"] = (m["ppl_before"] - m["ppl_after"]) / (m["ppl_before"] - m["ppl_dense"])
    m["config"], m["eval_windows"] = cfg.to_dict(), max_windows
    _save(pr, tok, out, src, m, overwrite)
    write_json(out / METRICS_FILE, m)
    return m


def _load_dense(d: Path) -> nn.Module:
    from ..calibrate.io import load_model

    return load_model(d)


def _save(pr: Pruned, tok: Any, out: Path, src: Path, metrics: dict[str, Any], overwrite: bool) -> None:
    """Write the recovered model in the input's format (masks and plan carried over)."""
    if pr.kind == "hf":
        from ..calibrate.io import save_hf_pruned

        body = {k: v for k, v in pr.manifest.items() if k not in ("format", "version", "kind", "tensors",
                                                                  "manifest_file", "legacy")}
        body["layers"] = {k: {a: b for a, b in v.items() if a not in ("shape", "sparsity")}
                          for k, v in body.get("layers", {}).items() if isinstance(v, dict)}
        save_hf_pruned(pr.model, out, pr.masks, {**body, "recovered_from": str(src), "recovery": metrics},
                       tokenizer=tok, overwrite=overwrite)
        return
    from ..structured.save import save_structured

    pr.plan.summary = {**pr.plan.summary, "recovery": metrics, "recovered_from": str(src)}
    save_structured(pr.model, pr.plan, out, overwrite=overwrite)
