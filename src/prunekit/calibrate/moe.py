"""Expert removal of MoE transformers by router statistics: REAP, routing frequency, or random.

REAP (Lasby et al. 2025, "REAP the Experts: Why Pruning Prevails for One-Shot MoE Compression",
its router-weighted expert activation saliency): the saliency of expert j is the mean, over the
calibration tokens routed to it (X_j = tokens with j in their top-k), of its gate weight times the norm of its output,
S_j = 1/|X_j| sum_{x in X_j} g_j(x) * ||f_j(x)||_2. *frequency* is |X_j| (how often the router picks
j). *random* is a seeded random ranking (the control). Each MoE layer keeps the same number of experts
(the config holds one expert count), those of the highest score (ties to the lower index): the
router's rows and the experts' fused parameters are sliced, top-k is clipped to the experts left,
and the config's expert count is updated, so ``save_pretrained`` writes a model plain transformers
loads. An expert no calibration token reached has frequency and REAP saliency 0 (it goes first) and
is listed as ``unrouted`` in the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .experts import _bias, _matrix, routed_inputs

log = logging.getLogger(__name__)
SCORES = ("reap", "frequency", "random")
COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")  # config keys of the expert count
TOPK_KEYS = ("num_experts_per_tok", "top_k", "moe_topk")
FUSED = ("gate_up_proj", "up_proj", "down_proj")


@dataclass
class MoELayer:
    """One sparse MoE block: its router (``weight`` ``(E, H)``) and its fused experts module."""

    name: str
    block: nn.Module
    router: nn.Module
    experts: nn.Module

    @property
    def num_experts(self) -> int:
        return int(self.experts.num_experts)


@dataclass
class RouterStats:
    """Per-expert sums over calibration tokens of one MoE layer (all ``(E,)``)."""

    tokens: Tensor  # |X_j|: tokens routed to expert j
    reap_sum: Tensor  # sum_{x in X_j} g_j(x) * ||f_j(x)||_2 (float64)
    gate_sum: Tensor  # sum_{x in X_j} g_j(x) (float64)
    n_tokens: int = 0  # tokens that went through the layer

    def score(self, kind: str, seed: int = 0, layer: int = 0) -> Tensor:
        """The per-expert score ``kind`` (higher = keep)."""
        if kind == "frequency":
            return self.tokens.double()
        if kind == "reap":
            return self.reap_sum / self.tokens.clamp_min(1).double()
        if kind == "random":
            g = torch.Generator().manual_seed(seed * 1_000_003 + layer)
            return torch.rand(self.tokens.numel(), generator=g, dtype=torch.float64)
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {kind!r}")


@dataclass
class ExpertRemovalReport:
    """What ``remove_experts`` did: per layer the kept / removed experts, their scores and token counts."""

    score: str
    keep: float
    experts_before: int
    experts_after: int
    top_k_before: int | None
    top_k_after: int | None
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def find_moe_layers(model: nn.Module) -> list[MoELayer]:
    """Every module with a router (``gate`` / ``router`` holding ``weight`` ``(E, H)``) and fused ``experts``."""
    out = []
    for name, mod in model.named_modules():
        experts = getattr(mod, "experts", None)
        router = getattr(mod, "gate", None) if hasattr(mod, "gate") else getattr(mod, "router", None)
        if not isinstance(experts, nn.Module) or not isinstance(router, nn.Module):
            continue
        E = getattr(experts, "num_experts", None)
        w = getattr(router, "weight", None)
        fused = [a for a in FUSED if isinstance(getattr(experts, a, None), torch.Tensor)]
        if isinstance(E, int) and torch.is_tensor(w) and w.dim() == 2 and w.shape[0] == E and fused:
            out.append(MoELayer(name, mod, router, experts))
    return out


def _check_moe(model: nn.Module) -> list[MoELayer]:
    layers = find_moe_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no sparse MoE layer with a router and fused experts "
                         "(Mixtral, Qwen2-MoE, Qwen3-MoE layouts of transformers 5)")
    counts = {m.num_experts for m in layers}
    if len(counts) > 1:
        raise ValueError(f"MoE layers have different expert counts {sorted(counts)}; one count per model is needed")
    return layers


def expert_output_norms(mod: nn.Module, x: Tensor, top_k_index: Tensor, top_k_weights: Tensor, e: int
                        ) -> tuple[Tensor, Tensor]:
    """``(g_e(x), ||f_e(x)||_2)`` for the tokens routed to expert ``e``; ``x`` is ``(T, H)``, each ``(T_e,)``."""
    hit = top_k_index == e  # (T, k)
    tok = hit.any(dim=-1).nonzero().squeeze(-1)  # (T_e,)
    g = (top_k_weights.float() * hit).sum(-1)[tok]  # (T_e,) gate weight the model multiplies f_e(x) by
    act = routed_inputs(mod, x, top_k_index, e)["down_proj"]  # (T_e, I)
    f = nn.functional.linear(act, _matrix(mod, "down_proj", e), _bias(mod, "down_proj", e))  # (T_e, H)
    return g, f.float().norm(dim=-1)


def _stats_hook(stats: RouterStats) -> Any:
    def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["hidden_states"]
        idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
        w = args[2] if len(args) > 2 else kwargs["top_k_weights"]
        x = x.reshape(-1, x.shape[-1])
        idx, w = idx.reshape(x.shape[0], -1), w.reshape(x.shape[0], -1)
        stats.n_tokens += x.shape[0]
        for e in range(mod.num_experts):
            g, norm = expert_output_norms(mod, x, idx, w, e)
            stats.tokens[e] += g.numel()
            stats.reap_sum[e] += float((g * norm).double().sum())
            stats.gate_sum[e] += float(g.double().sum())

    return hook


def router_statistics(model: nn.Module, batches: list[Tensor]) -> dict[str, RouterStats]:
    """Run the (dense) model on the calibration batches; per MoE layer the REAP and frequency sums."""
    layers = _check_moe(model)
    stats = {m.name: RouterStats(torch.zeros(m.num_experts, dtype=torch.long),
                                 torch.zeros(m.num_experts, dtype=torch.float64),
                                 torch.zeros(m.num_experts, dtype=torch.float64)) for m in layers}
    handles = [m.experts.register_forward_pre_hook(_stats_hook(stats[m.name]), with_kwargs=True) for m in layers]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return stats


def keep_count(num_experts: int, keep: float) -> int:
    """Experts kept per layer: ``round(keep * E)``, at least 1."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction of experts in (0, 1], got {keep!r}")
    return max(1, min(num_experts, round(keep * num_experts)))


def select_experts(score: Tensor, n_keep: int) -> list[int]:
    """Indices of the ``n_keep`` highest scores (ties to the lower index), in ascending order."""
    order = torch.argsort(score, descending=True, stable=True)
    return sorted(order[:n_keep].tolist())


def _slice_rows(mod: nn.Module, E: int, kept: Tensor) -> list[str]:
    """Replace every direct parameter / buffer of ``mod`` whose first dimension is ``E`` by its ``kept`` rows."""
    done = []
    for name, p in list(mod.named_parameters(recurse=False)):
        if p.dim() >= 1 and p.shape[0] == E:
            setattr(mod, name, nn.Parameter(p.detach()[kept].clone(), requires_grad=p.requires_grad))
            done.append(name)
    for name, b in list(mod.named_buffers(recurse=False)):
        if b is not None and b.dim() >= 1 and b.shape[0] == E:
            mod._buffers[name] = b[kept].clone()
            done.append(name)
    return done


def _clip_top_k(obj: Any, n: int) -> None:
    for key in ("top_k", "num_experts_per_tok"):
        v = getattr(obj, key, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > n:
            setattr(obj, key, n)


def _shrink_layer(m: MoELayer, kept: list[int]) -> None:
    """Keep only experts ``kept`` of one MoE layer: router rows, fused expert parameters, counts, top-k."""
    E, idx = m.num_experts, torch.tensor(kept, dtype=torch.long)
    sliced_e = _slice_rows(m.experts, E, idx)
    sliced_r = _slice_rows(m.router, E, idx)
    if not any(a in sliced_e for a in FUSED) or "weight" not in sliced_r:
        raise RuntimeError(f"{m.name}: could not slice the experts ({sliced_e}) and router ({sliced_r})")
    n = len(kept)
    for obj in (m.experts, m.router):
        if isinstance(getattr(obj, "num_experts", None), int):
            obj.num_experts = n
    for obj in (m.block, m.router, m.experts):
        _clip_top_k(obj, n)


def _update_config(config: Any, n: int) -> tuple[int | None, int | None]:
    """Set the config's expert count to ``n`` and clip its top-k; return top-k before and after."""
    hit = [k for k in COUNT_KEYS if isinstance(getattr(config, k, None), int)]
    if not hit:
        raise ValueError(f"{type(config).__name__} names its expert count with none of {COUNT_KEYS}")
    for k in hit:
        setattr(config, k, n)
    before = after = None
    for k in TOPK_KEYS:
        v = getattr(config, k, None)
        if isinstance(v, int) and not isinstance(v, bool):
            before, after = v, min(v, n)
            setattr(config, k, after)
    return before, after


def remove_experts(model: nn.Module, keep: float, score: str, stats: dict[str, RouterStats] | None = None,
                   seed: int = 0) -> ExpertRemovalReport:
    """Remove, in place, the lowest-scoring experts of every MoE layer so ``round(keep * E)`` remain.

    ``stats`` (from :func:`router_statistics`) is needed for ``reap`` and ``frequency``; ``random`` uses
    ``seed``. Returns per layer the kept and removed experts, their scores and routed-token counts.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    layers = _check_moe(model)
    if score != "random" and stats is None:
        raise ValueError(f"score={score!r} needs router statistics (router_statistics(model, batches))")
    E = layers[0].num_experts
    n = keep_count(E, keep)
    params_before = sum(p.numel() for p in model.parameters())
    rep = ExpertRemovalReport(score, float(keep), E, n, None, None, params_before=params_before)
    for i, m in enumerate(layers):
        st = stats.get(m.name) if stats is not None else None
        s = st.score(score, seed, i) if st is not None else RouterStats(
            torch.zeros(E, dtype=torch.long), torch.zeros(E), torch.zeros(E)).score(score, seed, i)
        kept = select_experts(s, n)
        tokens = st.tokens.tolist() if st is not None else None
        rep.layers[m.name] = {"kept": kept, "removed": [e for e in range(E) if e not in kept],
                              "scores": [float(v) for v in s], "tokens": tokens,
                              "unrouted": [e for e, t in enumerate(tokens or []) if t == 0]}
        _shrink_layer(m, kept)
        log.info("%s: kept experts %s, removed %s (%s)", m.name, kept, rep.layers[m.name]["removed"], score)
    if getattr(model, "config", None) is not None:
        rep.top_k_before, rep.top_k_after = _update_config(model.config, n)
        if rep.top_k_before is not None and rep.top_k_after < rep.top_k_before:
            log.warning("top-k clipped from %d to %d: only %d experts are left per layer", rep.top_k_before,
                        rep.top_k_after, n)
    rep.params_after = sum(p.numel() for p in model.parameters())
    return rep


REPORT_FILE = "prunekit_experts.json"


def check_reload(out: Any, ids: Tensor) -> dict[str, Any]:
    """Load ``out`` with plain ``AutoModelForCausalLM`` and run ``ids`` through it; what it found."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError(f"the saved model {out} gives non-finite logits after reloading")
    layers = find_moe_layers(model)
    return {"class": type(model).__name__, "experts_per_layer": sorted({m.num_experts for m in layers}),
            "logits_shape": list(logits.shape)}


def remove_experts_dir(model_dir: Any, out: Any, keep: float, score: str = "reap", *, calibration: Any = None,
                       calib: Any = None, nsamples: int = 64, seq_len: int = 128, seed: int = 0,
                       batch_size: int = 8, overwrite: bool = False) -> tuple[ExpertRemovalReport, Any]:
    """Remove experts of the MoE model in ``model_dir`` and save it to ``out`` (as the class it was loaded as).

    Router statistics come from ``calibration`` (token ids) or the text ``calib`` (default: the
    built-in corpus, ``nsamples`` windows of ``seq_len`` tokens); the saved folder is reloaded with
    ``AutoModelForCausalLM`` and run once, and ``prunekit_experts.json`` records what was removed.
    """
    from pathlib import Path

    from ..io import atomic_dir, check_out, write_json
    from . import io
    from .data import as_calibration, calibration_data
    from .pipeline import load_tokenizer

    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    model_dir, out = io.check_model_dir(model_dir), Path(out)
    check_out(out, overwrite=overwrite, inputs=[model_dir])
    keep_count(2, keep)  # the range check, before any work
    tok = load_tokenizer(model_dir, required=calibration is None)
    model = io.load_model(model_dir)
    data = as_calibration(calibration) if calibration is not None else calibration_data(
        tok, calib, nsamples, seq_len, seed)
    vocab = getattr(model.config, "vocab_size", None)
    if isinstance(vocab, int) and int(data.input_ids.max()) >= vocab:
        raise ValueError(f"calibration token id {int(data.input_ids.max())} is outside the model's vocabulary "
                         f"({vocab}): the tokenizer of {model_dir} does not match its model")
    batches = data.batches(batch_size)
    stats = router_statistics(model, batches) if score != "random" else None
    rep = remove_experts(model, keep, score, stats, seed)
    body = {"format": "prunekit", "version": 1, "kind": "moe-experts", "source_model": str(model_dir),
            "model_class": type(model).__name__, "calibration": data.info, **rep.to_dict()}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
        body["reload"] = check_reload(tmp, batches[0][:2])
        write_json(tmp / REPORT_FILE, body)
    return rep, out
