"""What structured pruning starts from and what it reports: a model with example inputs, and before/after costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def load_source(source: str, batch: int = 2, seq: int = 16,
                model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A model, example inputs and how to rebuild it, from a zoo name (with ``model_kwargs``), a prunekit
    checkpoint folder or a transformers folder (``config.json`` + weights)."""
    p = Path(source)
    if (p / "manifest.json").is_file():
        from ..checkpoint import load_checkpoint
        from ..zoo import example_inputs

        model, manifest, _ = load_checkpoint(p)
        spec = manifest["model"]
        return model, example_inputs(spec["name"], batch=batch, **spec.get("kwargs", {})), \
            {"zoo": spec["name"], "kwargs": spec.get("kwargs", {}), "dataset": manifest.get("dataset")}
    if (p / "config.json").is_file():
        return _load_hf(p, batch, seq)
    from ..zoo import MODELS, example_inputs, get_model

    if source not in MODELS:
        raise ValueError(f"source {source!r} is neither a zoo model ({', '.join(MODELS.names())}), a prunekit "
                         f"checkpoint folder (manifest.json) nor a transformers folder (config.json)")
    kw = dict(model_kwargs or {})
    return get_model(source, seed=0, **kw), example_inputs(source, batch=batch, **kw), {"zoo": source, "kwargs": kw}


def _load_hf(p: Path, batch: int, seq: int) -> tuple[nn.Module, Any, dict[str, Any]]:
    import transformers

    from . import hf

    cfg = transformers.AutoConfig.from_pretrained(p)
    arch = (getattr(cfg, "architectures", None) or ["AutoModel"])[0]
    cls = getattr(transformers, arch, transformers.AutoModel)
    model = cls.from_pretrained(p)
    return model, hf.example_inputs(model, batch=batch, seq=seq), {"hf": type(model).__name__}


def measure(dense: nn.Module, slim: nn.Module, inputs: Any, repeats: int = 20) -> dict[str, Any]:
    """MACs, parameters and interleaved CPU latency of the dense and the slim model."""
    from ..accounting import count_macs, count_params
    from ..bench.latency import compare_latency

    cmp = compare_latency({"dense": dense, "slim": slim}, inputs, warmup=3, repeats=repeats)
    out = {"macs_before": count_macs(dense, inputs), "macs_after": count_macs(slim, inputs),
           "params_before": count_params(dense), "params_after": count_params(slim),
           "latency_ms_before": cmp.results["dense"].median_ms, "latency_ms_after": cmp.results["slim"].median_ms}
    out["speedup"] = out["latency_ms_before"] / out["latency_ms_after"]
    out["ideal_speedup"] = out["macs_before"] / max(out["macs_after"], 1)
    return out
