"""Model-folder steps around the calibration engine: checks before loading, the run manifest, evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def check_seq_len(model_dir: Path, seq_len: int, name: str = "--seq-len") -> None:
    """Check ``seq_len`` against the model config's maximum length before loading any weight."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    limit = next((cfg[k] for k in ("max_position_embeddings", "n_positions") if isinstance(cfg.get(k), int)), None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"{name} {seq_len} is beyond the model's maximum sequence length {limit}")


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer saved with the model (offline); a clear error if there is none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises several error types for a missing tokenizer
        raise ValueError(f"{model_dir} has no usable tokenizer ({e}); save one with the model") from e


def run_manifest(report: Any, model_dir: Path) -> dict[str, Any]:
    """Method, config, calibration and per-layer details of a pruning run."""
    import transformers

    import prunekit

    layers = {r.name: {"target": r.target, "error": r.error, "seconds": r.seconds} for r in report.layers}
    return {"method": report.method, "calibration": report.extra["calibration"], "blocks": report.extra["blocks"],
            "owl": report.extra.get("owl"), "source_model": str(model_dir), "sparsity": report.sparsity,
            "seconds": report.seconds, "layers": layers, "prunekit": getattr(prunekit, "__version__", "0"),
            "transformers": transformers.__version__}


def layers_markdown(model_dir: Path) -> str:
    """Per-layer sparsity, target and relative reconstruction error from a pruned model's manifest."""
    from .io import load_manifest

    rows = ["| layer | shape | sparsity | target | rel. error |", "|---|---|---:|---:|---:|"]
    for name, d in load_manifest(model_dir)["layers"].items():
        err = "" if d.get("error") is None else f"{d['error']:.4g}"
        tgt = "" if d.get("target") is None else f"{d['target']:.4f}"
        rows.append(f"| {name} | {'x'.join(map(str, d['shape']))} | {d['sparsity']:.4f} | {tgt} | {err} |")
    return "\n".join(rows)


def evaluate_model(model: Any, tok: Any, texts: list[str], name: str, dense: Path | None, seq_len: int,
                   max_windows: int | None, batch_size: int, progress: Any = None) -> dict[str, Any]:
    """Perplexity of a causal LM, or mean cosine fidelity of an encoder's pooled embeddings to ``dense``
    (``progress(stage, done, total)`` after every batch)."""
    from . import evaluate as ev
    from . import io
    from .data import tokenize_stream

    if hasattr(model, "lm_head") or type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return ev.perplexity(model, tokenize_stream(texts, tok), seq_len, batch_size, max_windows, dataset=name,
                             tokenizer=type(tok).__name__, progress=progress)
    if dense is None:
        raise ValueError("an encoder is evaluated by fidelity to its dense model: pass --dense DIR")
    texts = texts[: max_windows or len(texts)]
    ids, am = ev.encode_texts(tok, texts, seq_len)
    ref = ev.pooled_embeddings(io.load_model(io.check_model_dir(dense)), ids, am, batch_size, progress, "dense")
    fid = ev.embedding_fidelity(ref, ev.pooled_embeddings(model, ids, am, batch_size, progress, "pruned"))
    return {"fidelity": fid, "texts": len(texts), "protocol": {"dataset": name, "max_len": seq_len,
            "pooling": "mean", "metric": "mean cosine to dense"}}
