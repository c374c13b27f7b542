"""Delta pruning and merging of fine-tuned models that share one base: pure functions on state dicts.

The *delta* (task vector, Ilharco et al. 2023, "Editing Models with Task Arithmetic", Eq. 1) of a
fine-tuned model is ``tau = theta_tuned - theta_base`` for every floating-point tensor. Pruning it:

- ``dare``: DARE (Yu et al. 2024, "Language Models are Super Mario", Eq. 2) drops each entry with
  probability ``p`` and rescales the survivors by ``1 / (1 - p)``, so the expected delta is unchanged.
- ``darex``: DAREx-q (Deng et al. 2024, "DARE the Extreme: Revisiting Delta-Parameter Pruning for
  Fine-Tuned Models", Sec. 4): the same drop with the survivors rescaled by ``1 / q``, ``q`` chosen on
  held-out data (``tune_q``); ``q = 1 - p`` is DARE, larger ``q`` shrinks the rescale that makes DARE
  fail at extreme ``p``.
- ``magnitude``: keep the ``1 - p`` largest ``|tau|`` entries of each tensor, no rescale.

A task model that wraps the base under a prefix and adds a new head (``BertForSequenceClassification``
over a ``BertModel`` base) is split with ``split_tuned`` (the head kept whole: it has no base to be a
delta of) and put back with ``rebuild``.

Merging: ``task_arithmetic`` adds ``lam * sum_i tau_i`` (Ilharco et al. 2023, Eq. 2), with each delta
DARE-dropped first if asked (Yu et al. 2024, Sec. 4.3); ``ties`` is TIES-merging (Yadav et al. 2023,
"TIES-Merging: Resolving Interference When Merging Models", Sec. 3): trim each delta to its top
``density`` magnitudes, elect a sign per entry from the summed trimmed deltas, average the entries that
agree with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .patterns import topk_mask

log = logging.getLogger(__name__)
State = Mapping[str, Tensor]
PRUNE_METHODS = ("dare", "darex", "magnitude")
MERGE_METHODS = ("task-arithmetic", "ties")


def _check_rate(rate: float, name: str = "rate") -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be a drop fraction in [0, 1), got {rate!r}")
    return float(rate)


def task_vector(base: State, tuned: State) -> dict[str, Tensor]:
    """``tuned - base`` for every floating tensor; other tensors must be equal; names and shapes must match."""
    missing, extra = sorted(set(base) - set(tuned)), sorted(set(tuned) - set(base))
    if missing or extra:
        raise ValueError(f"base and fine-tuned models differ in tensors: only in base {missing[:5]}, only in tuned "
                         f"{extra[:5]}; both must be fine-tuned from one base")
    out = {}
    for k, b in base.items():
        t = tuned[k]
        if t.shape != b.shape:
            raise ValueError(f"tensor {k!r} has shape {list(b.shape)} in base and {list(t.shape)} in the tuned model")
        if b.is_floating_point():
            out[k] = t.detach().float() - b.detach().float()
        elif not torch.equal(t, b):
            raise ValueError(f"non-floating tensor {k!r} differs between base and tuned model (cannot be a delta)")
    return out


def split_tuned(base: State, tuned: State, prefix: str | None = None) \
        -> tuple[dict[str, Tensor], dict[str, Tensor], str]:
    """``(shared, new, prefix)``: the tuned tensors the base has, named as in the base, and the others kept whole.

    A task model wraps its base under a prefix (``bert.`` in ``BertForSequenceClassification``) and adds a
    head the base lacks; the head has no delta, so it is returned whole in ``new`` (and logged). ``prefix``
    is found when not given: the one string that, put before every base name, names a tuned tensor.
    """
    if not base:
        raise ValueError("the base state dict is empty")
    if prefix is None:
        prefix = _find_prefix(base, tuned)
    missing = sorted(k for k in base if prefix + k not in tuned)
    if missing:
        raise ValueError(f"{len(missing)} base tensors have no tuned counterpart under prefix {prefix!r} "
                         f"(first {missing[:5]}); both must come from one base")
    shared = {k: tuned[prefix + k] for k in base}
    taken = {prefix + k for k in base}
    new = {k: v for k, v in tuned.items() if k not in taken}
    if new:
        log.info("%d tuned tensors (%d entries) are not in the base and are kept whole (no delta): %s",
                 len(new), sum(v.numel() for v in new.values()), sorted(new)[:8])
    return shared, new, prefix


def _find_prefix(base: State, tuned: State) -> str:
    """The prefix ``p`` with ``p + name`` in ``tuned`` for every base name ("" first); an error if none or two."""
    if all(k in tuned for k in base):
        return ""
    probe = max(base, key=len)  # the longest name gives the fewest accidental matches
    found = {t[: len(t) - len(probe)] for t in tuned if t.endswith("." + probe)}  # each ends with "."
    fits = sorted(p for p in found if all(p + k in tuned for k in base))
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise ValueError(f"no prefix maps the base tensors onto the tuned ones (e.g. base {probe!r} matches no "
                         "tuned name): both must come from one base")
    raise ValueError(f"several prefixes fit the base tensors ({fits}); pass prefix= explicitly")


def rebuild(base: State, delta: State, new: State | None = None, prefix: str = "", scale: float = 1.0) \
        -> dict[str, Tensor]:
    """The tuned model's state dict from ``split_tuned``'s parts: ``prefix + (base + scale * delta)`` and ``new``."""
    out = {prefix + k: v for k, v in apply_delta(base, delta, scale).items()}
    clash = sorted(set(out) & set(new or {}))
    if clash:
        raise ValueError(f"new tensors {clash[:5]} collide with base tensors under prefix {prefix!r}")
    return {**out, **{k: v.clone() for k, v in (new or {}).items()}}


def drop_masks(delta: State, rate: float, seed: int = 0) -> dict[str, Tensor]:
    """Bernoulli keep-masks (True = keep, probability ``1 - rate``), one per tensor, seeded by name order."""
    rate = _check_rate(rate)
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.rand(v.shape, generator=gen) >= rate for k, v in sorted(delta.items())}


def dare(delta: State, rate: float, seed: int = 0) -> dict[str, Tensor]:
    """DARE (Yu et al. 2024, Eq. 2): ``m * tau / (1 - p)`` with ``m ~ Bernoulli(1 - p)``."""
    return darex(delta, rate, 1.0 - _check_rate(rate), seed)


def darex(delta: State, rate: float, q: float, seed: int = 0) -> dict[str, Tensor]:
    """DAREx-q (Deng et al. 2024, Sec. 4): DARE's drop with the survivors rescaled by ``1 / q``, ``q`` in (0, 1]."""
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1] (q = 1 - rate is DARE), got {q!r}")
    masks = drop_masks(delta, rate, seed)
    return {k: v * masks[k] / q for k, v in delta.items()}


def magnitude(delta: State, rate: float) -> dict[str, Tensor]:
    """Keep exactly ``round((1 - p) n)`` largest ``|tau|`` entries of each tensor (no rescale)."""
    rate = _check_rate(rate)
    return {k: v * topk_mask(v.abs(), rate, name=k) if v.numel() > 1 else v.clone() for k, v in delta.items()}


def prune_delta(delta: State, method: str, rate: float, seed: int = 0, q: float | None = None) -> dict[str, Tensor]:
    """Dispatch to ``dare``, ``darex`` (needs ``q``) or ``magnitude``."""
    if method == "dare":
        return dare(delta, rate, seed)
    if method == "darex":
        if q is None:
            raise ValueError("darex needs q (choose it on held-out data with tune_q)")
        return darex(delta, rate, q, seed)
    if method == "magnitude":
        return magnitude(delta, rate)
    raise ValueError(f"delta pruning method must be one of {', '.join(PRUNE_METHODS)}, got {method!r}")


def q_grid(rate: float, n: int = 9) -> list[float]:
    """Candidate ``q`` from ``1 - rate`` (DARE) to 1 (no rescale), geometric: DAREx-q's search range."""
    lo = 1.0 - _check_rate(rate)
    return [lo * (1.0 / lo) ** (i / (n - 1)) for i in range(n)] if n > 1 else [lo]


def tune_q(loss_at: Callable[[float], float], rate: float, grid: Sequence[float] | None = None) \
        -> tuple[float, list[tuple[float, float]]]:
    """The ``q`` of ``grid`` (default ``q_grid(rate)``) with the lowest held-out ``loss_at(q)``; and the table."""
    table = [(float(q), float(loss_at(q))) for q in (grid or q_grid(rate))]
    best = min(table, key=lambda t: t[1])
    log.info("DAREx-q: q=%.4g (loss %.4g; DARE's q=%.4g)", best[0], best[1], 1 - rate)
    return best[0], table


def apply_delta(base: State, delta: State, scale: float = 1.0) -> dict[str, Tensor]:
    """``base + scale * delta`` in the base's dtypes (tensors without a delta copied unchanged)."""
    return {k: (v.float() + scale * delta[k]).to(v.dtype) if k in delta else v.clone() for k, v in base.items()}


def ties(deltas: Sequence[State], density: float) -> dict[str, Tensor]:
    """TIES-merging (Yadav et al. 2023, Sec. 3): trim to the top ``density`` magnitudes, elect the sign of the
    summed trimmed deltas, average the entries that agree with it (disjoint mean)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    trimmed = [magnitude(d, 1.0 - density) if density < 1.0 else dict(d) for d in deltas]
    out = {}
    for k in trimmed[0]:
        t = torch.stack([d[k] for d in trimmed])  # (tasks, ...)
        sign = torch.sign(t.sum(0))  # elected sign per entry
        agree = (torch.sign(t) == sign) & (t != 0)
        out[k] = (t * agree).sum(0) / agree.sum(0).clamp_min(1)
    return out


def merge_deltas(deltas: Sequence[State], method: str = "task-arithmetic", lam: float = 1.0,
                 rate: float = 0.0, density: float = 0.2, seed: int = 0) -> dict[str, Tensor]:
    """One merged delta of several fine-tunings of one base: task arithmetic (each DARE-dropped at ``rate``
    first when ``rate > 0``) scaled by ``lam``, or TIES at ``density`` scaled by ``lam``."""
    if len(deltas) < 2:
        raise ValueError(f"merging needs at least two deltas, got {len(deltas)}")
    keys = set(deltas[0])
    if any(set(d) != keys for d in deltas):
        raise ValueError("the deltas cover different tensors: merge fine-tunings of one base")
    if method == "ties":
        merged = ties(deltas, density)
    elif method == "task-arithmetic":
        parts = [dare(d, rate, seed + i) if rate > 0 else d for i, d in enumerate(deltas)]
        merged = {k: sum(p[k] for p in parts) for k in keys}
    else:
        raise ValueError(f"merge method must be one of {', '.join(MERGE_METHODS)}, got {method!r}")
    return {k: lam * v for k, v in merged.items()}


def delta_stats(delta: State, pruned: State) -> dict[str, Any]:
    """Entries of the delta, how many are nonzero before and after pruning, and the kept fraction."""
    n = sum(v.numel() for v in delta.values())
    before = sum(int((v != 0).sum()) for v in delta.values())
    after = sum(int((v != 0).sum()) for v in pruned.values())
    return {"delta_entries": n, "nonzero_before": before, "nonzero_after": after,
            "kept_fraction": after / max(1, before)}


# ---------------------------------------------------------------- model folders (zoo checkpoints, HF folders)

DELTA_RECORD = "delta.json"


def load_folder(path: str | Any) -> tuple[Any, str, dict[str, Any]]:
    """``(model, kind, manifest)`` of a zoo checkpoint folder (kind ``zoo``) or a ``save_pretrained`` folder
    (kind ``hf``)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model folder {p} does not exist")
    if (p / "config.json").is_file():
        from .calibrate.io import load_model

        return load_model(p), "hf", {}
    from .checkpoint import load_checkpoint

    model, man, _ = load_checkpoint(p)
    return model, "zoo", man


def load_family(base: Any, tuned: Sequence[Any]) -> tuple[Any, str, dict[str, Any], list[dict[str, Tensor]]]:
    """The base model (its kind and manifest) and the state dicts of the fine-tuned folders; kinds must agree."""
    model, kind, man = load_folder(base)
    states = []
    for t in tuned:
        m, k, _ = load_folder(t)
        if k != kind:
            raise ValueError(f"{t} is a {k} folder but the base {base} is a {kind} folder: fine-tunings of one "
                             "base share its format")
        states.append({n: v.detach() for n, v in m.state_dict().items()})
    return model, kind, man, states


def save_folder(model: Any, kind: str, manifest: dict[str, Any], out: Any, record: dict[str, Any], *,
                tokenizer_from: Any = None, overwrite: bool = False) -> Any:
    """Write ``model`` in the base's format (zoo checkpoint or ``save_pretrained`` + tokenizer) with the delta
    ``record`` (manifest ``delta`` entry for zoo, ``delta.json`` for HF), atomically."""
    from .io import atomic_dir, write_json

    if kind == "zoo":
        from .checkpoint import save_checkpoint

        extra = {k: v for k, v in manifest.items() if k not in ("format", "version", "kind", "model", "has_masks")}
        return save_checkpoint(out, model, manifest["model"], None, extra={**extra, "delta": record},
                               overwrite=overwrite)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_from is not None:
            _copy_tokenizer(tokenizer_from, tmp)
        write_json(tmp / DELTA_RECORD, record)
    return out


def _copy_tokenizer(src: Any, dst: Any) -> None:
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(dst)
    except Exception as e:  # noqa: BLE001 - transformers raises several error types for a missing tokenizer
        log.warning("no tokenizer copied from %s (%s)", src, e)


def output_change(model: Any, base: State, delta: State, inputs: Tensor, reference: Tensor,
                  batch_size: int = 256) -> float:
    """Mean squared difference between the outputs of ``base + delta`` and ``reference`` (the fine-tuned
    model's) on ``inputs``: DAREx-q's label-free criterion for ``q``."""
    model.load_state_dict(apply_delta(base, delta))
    with torch.no_grad():
        out = torch.cat([_logits(model, x) for x in inputs.split(batch_size)])
    return float((out - reference).pow(2).mean())


def _logits(model: Any, x: Tensor) -> Tensor:
    y = model(input_ids=x) if not x.is_floating_point() else model(x)
    out = y.logits if hasattr(y, "logits") else getattr(y, "last_hidden_state", y)  # an encoder's own output
    return out.float()


def tune_q_unlabeled(model: Any, base: State, tuned: State, delta: State, rate: float, inputs: Tensor,
                     seed: int = 0, grid: Sequence[float] | None = None) -> tuple[float, list[tuple[float, float]]]:
    """DAREx-q without labels: the ``q`` whose pruned model's outputs on held-out ``inputs`` are closest to the
    fine-tuned model's (``model`` is reloaded; it holds the tuned weights afterwards)."""
    model.load_state_dict(dict(tuned))
    model.eval()
    with torch.no_grad():
        ref = torch.cat([_logits(model, x) for x in inputs.split(256)])
    masks = drop_masks(delta, rate, seed)
    best = tune_q(lambda q: output_change(model, base, {k: v * masks[k] / q for k, v in delta.items()}, inputs, ref),
                  rate, grid)
    model.load_state_dict(dict(tuned))
    return best
