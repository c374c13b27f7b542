"""What a weight is: the one module walker, each weight's orientation, the keep rules, the ledger.

Every floating parameter of rank >= 2 of a model is classified once, here, and every engine uses the
answer. It is either

- *prunable*, with a known orientation: seen as a stack of ``G`` matrices ``(out, in)`` so that N:M
  groups run along the input dimension and each expert of a fused MoE tensor is pruned on its own:

  ========================  ==========================  ======================
  kind                      stored as                   matrices (G, out, in)
  ========================  ==========================  ======================
  ``linear``                ``(out, in)``               ``(1, out, in)``
  ``conv``                  ``(out, in/groups, *k)``    ``(1, out, in*prod(k))``
  ``conv-transposed``       ``(in, out/groups, *k)``    ``(1, out, in*prod(k))``
  ``conv1d-gpt2``           ``(in, out)`` (GPT-2)       ``(1, out, in)``
  ``attention``             MHA ``in_proj_weight``      ``(1, 3E, E)``
  ``rnn``                   ``weight_ih/hh/hr_l*``      ``(1, gates*H, in)``
  ``experts``               ``(E, out, in)``            ``(E, out, in)``
  ``embedding``             ``(num, dim)`` on request   ``(1, num, dim)``
  ========================  ==========================  ======================

- or *kept* by a named rule (``KEEP_REASONS``): ``embedding``, ``position``, ``relative-bias``,
  ``token``, ``norm``, ``router``, ``bias``, ``parametrized``, ``head``, ``excluded``, ``not-included``,
  ``tied``, ``not-floating``, ``rank<2`` (and ``uncovered`` in read-only reports).

A rank >= 2 floating tensor that no rule covers raises :class:`UncoveredWeightError` naming it and the
``exclude`` entry that would keep it: nothing is skipped silently.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE: tuple[str, ...] = ("lm_head",)
PRUNABLE_KINDS = ("linear", "conv", "conv-transposed", "conv1d-gpt2", "attention", "rnn", "experts", "embedding")
KEEP_REASONS = ("embedding", "position", "relative-bias", "token", "norm", "router", "bias", "parametrized", "head",
                "excluded", "not-included", "tied", "uncovered", "not-floating", "rank<2")
# reasons that are not weights (kept without a word): biases and norm vectors, integer tensors
SMALL_REASONS = ("rank<2", "not-floating")
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
RNN_PREFIXES = ("weight_ih_l", "weight_hh_l", "weight_hr_l")
ROUTER_NAMES = ("gate", "router", "gating", "shared_expert_gate", "moe_gate", "wg")
POSITION_HINTS = ("pos_emb", "pos_embed", "position", "wpe", "embed_positions")
LABELS = {
    "pruned_weights": "sparsity (pruned weights)",
    "all_weights": "all weight matrices",
    "all_parameters": "all parameters incl. biases",
}


class UncoveredWeightError(ValueError):
    """A floating tensor of rank >= 2 that no prunable kind and no keep rule covers."""


# ----------------------------------------------------------------------------------------------------
# one weight


@dataclass(frozen=True)
class WeightInfo:
    """One prunable tensor: where it lives, its kind, and its view as ``G`` matrices ``(out, in)``."""

    name: str  # parameter name in model.named_parameters()
    module: str  # owning module's name ("" for the root)
    attr: str  # attribute on the owning module
    kind: str  # one of PRUNABLE_KINDS
    shape: tuple[int, ...]
    transposed: bool = False  # stored with in before out (GPT-2 Conv1D, transposed convs, some experts)
    experts: bool = False  # leading dim stacks independent expert matrices

    @property
    def groups(self) -> int:
        """Number of independent matrices: experts of a fused MoE tensor, else 1."""
        return self.shape[0] if self.experts else 1

    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        """``(G, out, in)`` of :meth:`as_matrices` (kernel dims folded into ``in``)."""
        g = self.groups
        body = self.shape[1:] if self.experts else self.shape
        out_dim = 1 if self.transposed else 0
        out = body[out_dim]
        return g, out, math.prod(body) // out

    def as_matrices(self, t: Tensor, keep_kernel: bool = False) -> Tensor:
        """``t`` (shaped like the weight) as ``(G, out, in)``; ``keep_kernel``: ``(G, out, in, *k)`` for convs."""
        if self.experts:  # (E, out, in) or (E, in, out)
            return t.transpose(1, 2) if self.transposed else t
        u = t.transpose(0, 1) if self.transposed else t  # (out, in, *k)
        if keep_kernel or u.dim() == 2:
            return u.unsqueeze(0)
        return u.reshape(1, u.shape[0], -1)

    def from_matrices(self, m: Tensor) -> Tensor:
        """Inverse of :meth:`as_matrices` (either form): back to the weight's own layout, contiguous."""
        if self.experts:
            return (m.transpose(1, 2) if self.transposed else m).contiguous()
        out_in = (self.shape[1], self.shape[0], *self.shape[2:]) if self.transposed else self.shape
        u = m[0].reshape(out_in)  # (out, in, *k)
        return (u.transpose(0, 1) if self.transposed else u).contiguous()

    def map_matrices(self, fn: Callable[[Tensor], Tensor], t: Tensor, keep_kernel: bool = True) -> Tensor:
        """Apply ``fn`` to each ``(out, in[, *k])`` matrix of ``t`` and reassemble in the weight's layout."""
        return self.from_matrices(torch.stack([fn(x) for x in self.as_matrices(t, keep_kernel)]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"kind": self.kind, "shape": list(self.shape), "matrices": list(self.matrix_shape),
                "transposed": self.transposed}


# ----------------------------------------------------------------------------------------------------
# the ledger


@dataclass(frozen=True)
class Count:
    """Tensors, entries and exact zeros of one set of tensors."""

    tensors: int = 0
    numel: int = 0
    zeros: int = 0

    @property
    def sparsity(self) -> float:
        """Fraction of exact zeros (0.0 when empty)."""
        return self.zeros / self.numel if self.numel else 0.0

    def __add__(self, other: Count) -> Count:
        return Count(self.tensors + other.tensors, self.numel + other.numel, self.zeros + other.zeros)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able counts with the sparsity."""
        return {"tensors": self.tensors, "numel": self.numel, "zeros": self.zeros, "sparsity": self.sparsity}


def _count(t: Tensor) -> Count:
    with torch.no_grad():
        return Count(1, t.numel(), t.numel() - int(torch.count_nonzero(t)))


@dataclass
class LedgerSummary:
    """Exact zeros over the pruned weights, over all weight matrices, over all parameters; kept per reason."""

    pruned_weights: Count
    all_weights: Count
    all_parameters: Count
    kept: dict[str, Count] = field(default_factory=dict)

    def sparsities(self) -> dict[str, float]:
        """``{"pruned_weights": s, "all_weights": s, "all_parameters": s}``."""
        return {k: getattr(self, k).sparsity for k in LABELS}

    def line(self) -> str:
        """One labelled line, e.g. ``sparsity (pruned weights) 0.9000 · all weight matrices 0.8854 · ...``."""
        return " · ".join(f"{LABELS[k]} {v:.4f}" for k, v in self.sparsities().items())

    def to_dict(self) -> dict[str, Any]:
        """Labelled sparsities and counts (JSON-able)."""
        out: dict[str, Any] = {f"sparsity_{k}": v for k, v in self.sparsities().items()}
        out["labels"] = dict(LABELS)
        out.update({k: getattr(self, k).to_dict() for k in LABELS})
        out["kept"] = {r: c.to_dict() for r, c in self.kept.items()}
        return out

    def to_markdown(self) -> str:
        """The labelled line and a table of kept tensors per reason."""
        lines = [self.line(), "", "| kept by rule | tensors | params | zeros |", "|---|---:|---:|---:|"]
        lines += [f"| {r} | {c.tensors} | {c.numel} | {c.zeros} |" for r, c in self.kept.items()]
        return "\n".join(lines)


@dataclass
class Ledger:
    """Which tensors are pruned (``prunable``: name -> WeightInfo) and which kept, with why (``kept``)."""

    prunable: dict[str, WeightInfo] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)  # name -> reason (one of KEEP_REASONS)
    measured: LedgerSummary | None = None  # set by measure(): the figures at that moment
    unmatched: list[str] = field(default_factory=list)  # exclude / heads patterns that matched no tensor

    def parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """``{name: Parameter}`` of the prunable tensors, in module order."""
        params = dict(model.named_parameters(remove_duplicate=False))
        return {k: params[k] for k in self.prunable}

    def kept_by_reason(self) -> dict[str, list[str]]:
        """``{reason: [names]}`` in ``KEEP_REASONS`` order."""
        out: dict[str, list[str]] = {}
        for reason in KEEP_REASONS:
            names = [n for n, r in self.kept.items() if r == reason]
            if names:
                out[reason] = names
        return out

    def summary(self, model: nn.Module) -> LedgerSummary:
        """Count exact zeros now: pruned weights, all weight matrices (rank >= 2), all parameters."""
        params = dict(model.named_parameters(remove_duplicate=False))
        pruned = sum((_count(params[k]) for k in self.prunable), Count())
        kept = {r: sum((_count(params[n]) for n in names), Count()) for r, names in self.kept_by_reason().items()}
        matrices = sum((c for r, c in kept.items() if r not in (*SMALL_REASONS, "tied")), Count())
        small = sum((c for r, c in kept.items() if r in SMALL_REASONS), Count())
        return LedgerSummary(pruned, pruned + matrices, pruned + matrices + small, kept)

    def measure(self, model: nn.Module) -> LedgerSummary:
        """:meth:`summary`, remembered in ``measured`` (reports carry it)."""
        self.measured = self.summary(model)
        return self.measured

    def log_kept(self, logger: logging.Logger = log) -> None:
        """One warning line with the count of kept weight matrices per reason (biases and norms not listed)."""
        counts = {r: len(n) for r, n in self.kept_by_reason().items() if r not in SMALL_REASONS}
        if counts:
            logger.warning("not pruned, kept by rule: %s (pruned %d tensors)",
                           ", ".join(f"{r} {n}" for r, n in counts.items()), len(self.prunable))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able ledger: pruned tensors with kind and layout, kept tensors by reason, and the figures."""
        out: dict[str, Any] = {"pruned": {k: w.to_dict() for k, w in self.prunable.items()},
                               "kept": self.kept_by_reason()}
        if self.unmatched:
            out["unmatched_exclude"] = list(self.unmatched)
        if self.measured is not None:
            out["summary"] = self.measured.to_dict()
        return out

    def to_markdown(self) -> str:
        """The labelled figures (when measured) and the kept tensors per reason."""
        if self.measured is not None:
            return self.measured.to_markdown()
        return "\n".join(f"kept ({r}): {len(n)} tensors" for r, n in self.kept_by_reason().items())


# ----------------------------------------------------------------------------------------------------
# rules


def _last(name: str) -> str:
    return name.rpartition(".")[2]


def _matches(patterns: Iterable[str], *names: str) -> bool:
    """True if a pattern names a module on the path (``fc``, ``blocks.0.attn``) or glob-matches a name."""
    for p in patterns:
        for n in names:
            if n and (f".{p}." in f".{n}." or fnmatch.fnmatchcase(n, p)):
                return True
    return False


def _is_experts(mod: nn.Module, mod_name: str) -> bool:
    cls = type(mod).__name__.lower()
    return hasattr(mod, "is_transposed") or cls.endswith("experts") or _last(mod_name) == "experts"


def _router_modules(model: nn.Module) -> set[str]:
    """Names of MoE routers: a class named *Router*, a ``gate``/``router`` beside experts, a one-output gate."""
    found = set()
    for name, mod in model.named_modules():
        children = dict(mod.named_children())
        has_experts = any(_is_experts(c, n) or n == "experts" for n, c in children.items())
        if "router" in type(mod).__name__.lower():
            found.add(name)
        for n, c in children.items():
            full = f"{name}.{n}" if name else n
            low = n.lower()
            beside_experts = has_experts and (low in ROUTER_NAMES or low.endswith("_router"))
            one_output = isinstance(c, nn.Linear) and c.out_features == 1 and "gate" in low and \
                not low.endswith("_proj")
            if beside_experts or one_output:
                found.add(full)
    return found


def _embedding_reason(mod_name: str, attr: str) -> str:
    full = f"{mod_name}.{attr}".lower()
    if "relative_attention_bias" in full or "rel_pos" in full:
        return "relative-bias"
    return "position" if any(h in full for h in POSITION_HINTS) else "embedding"


def _named_reason(mod_name: str, attr: str) -> str | None:
    """Keep rules read from names alone: position tables, learned tokens, biases."""
    a = attr.lower()
    if "relative_attention_bias" in a or a.startswith("rel_pos") or "relative_position" in a:
        return "relative-bias"
    if any(h in a for h in POSITION_HINTS):
        return "position"
    if a.endswith(("_token", "_tokens")) or a in ("cls", "cls_token", "register_tokens"):
        return "token"
    if a == "bias" or a.endswith("_bias") or a.startswith("bias_"):
        return "bias"
    if ".parametrizations." in f".{mod_name}." or a in ("weight_g", "weight_v"):
        return "parametrized"  # weight norm and other parametrizations: the computed weight is not a Parameter
    return None


def _prunable_kind(mod: nn.Module, mod_name: str, attr: str, t: Tensor) -> tuple[str, bool, bool] | None:
    """``(kind, transposed, experts)`` for a covered tensor, else None."""
    if isinstance(mod, nn.MultiheadAttention) and attr in MHA_WEIGHTS:
        return "attention", False, False
    if isinstance(mod, nn.RNNBase) and attr.startswith(RNN_PREFIXES):
        return "rnn", False, False
    if attr != "weight":
        if t.dim() == 3 and _is_experts(mod, mod_name):
            return "experts", bool(getattr(mod, "is_transposed", False)), True
        return None
    if isinstance(mod, nn.Linear):
        return "linear", False, False
    if isinstance(mod, nn.modules.conv._ConvTransposeNd):
        return "conv-transposed", True, False
    if isinstance(mod, nn.modules.conv._ConvNd):
        return "conv", False, False
    if type(mod).__name__ == "Conv1D" and t.dim() == 2:  # transformers.pytorch_utils.Conv1D: (in, out)
        return "conv1d-gpt2", True, False
    if t.dim() == 3 and _is_experts(mod, mod_name):  # e.g. JetMoE's ParallelExperts.weight
        return "experts", bool(getattr(mod, "is_transposed", False)), True
    return None


def _keep_rule(mod: nn.Module, mod_name: str, attr: str, embeddings: bool, routers: set[str]) -> str | None:
    """The keep reason for a rank >= 2 floating tensor, or None when it may be pruned."""
    if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
        reason = _embedding_reason(mod_name, attr)
        return None if reason == "embedding" and embeddings else reason
    if "norm" in type(mod).__name__.lower():
        return "norm"
    if mod_name in routers:
        return "router"
    return _named_reason(mod_name, attr)


def _uncovered_message(items: list[tuple[str, str, tuple[int, ...]]]) -> str:
    listed = "; ".join(f"{n} ({'x'.join(map(str, s))}, on {c})" for n, c, s in items)
    names = [n for n, _, _ in items]
    return (f"no rule covers {len(items)} weight tensor(s): {listed}. prunekit does not know their orientation "
            f"and will not skip them silently: keep them with exclude={names!r} (CLI: "
            f"{' '.join('--exclude ' + n for n in names)}), or hold them in nn.Linear / nn.Conv modules")


# ----------------------------------------------------------------------------------------------------
# the walker


def _walk(model: nn.Module) -> Iterable[tuple[str, nn.Module, str, str, Tensor]]:
    """``(param name, module, module name, attr, tensor)`` of every parameter, tied ones repeated."""
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod.named_parameters(recurse=False):
            yield (f"{mod_name}.{attr}" if mod_name else attr), mod, mod_name, attr, p


def _classify_one(mod: nn.Module, mod_name: str, attr: str, t: Tensor, exclude: tuple[str, ...],
                  embeddings: bool, routers: set[str]) -> str | tuple[str, bool, bool] | None:
    """A keep reason (str), a prunable ``(kind, transposed, experts)``, or None (uncovered)."""
    name = f"{mod_name}.{attr}" if mod_name else attr
    if not t.is_floating_point():
        return "not-floating"
    if t.dim() < 2:
        return "rank<2"
    if _matches(exclude, mod_name, name):
        return "excluded"
    kind = _prunable_kind(mod, mod_name, attr, t)
    if kind is not None and mod_name not in routers:
        return kind
    if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and attr == "weight" and embeddings:
        if _embedding_reason(mod_name, attr) == "embedding":
            return "embedding", False, False
    return _keep_rule(mod, mod_name, attr, embeddings, routers)


def _apply_include(ledger: Ledger, include: list[str]) -> None:
    """Keep only the prunable tensors named (module or parameter name) in ``include``; unknown names are errors."""
    missing = [n for n in include if not any(_matches([n], w.module, k) for k, w in ledger.prunable.items())]
    if missing:
        raise ValueError(f"include names unknown prunable layers {missing}; prunable: {sorted(ledger.prunable)}")
    for k, w in list(ledger.prunable.items()):
        if not _matches(include, w.module, k):
            del ledger.prunable[k]
            ledger.kept[k] = "not-included"


def classify(model: nn.Module, exclude: Iterable[str] = DEFAULT_EXCLUDE, include: Iterable[str] | None = None,
             embeddings: bool = False, strict: bool = True, heads: Iterable[str] = ()) -> Ledger:
    """Classify every parameter of ``model``: prunable with an orientation, or kept by a named rule.

    ``exclude``: module or parameter names (a dotted part of the path, e.g. ``lm_head``, ``blocks.0.attn``,
    ``attn.in_proj_weight``, or a glob) kept as ``excluded`` with everything inside; ``heads``: the
    same, kept as ``head``; ``include``: only these prunable tensors are pruned (the rest ``not-included``);
    ``embeddings=True`` prunes ``nn.Embedding`` tables (never position or relative-bias tables). A rank >= 2
    floating tensor no rule covers raises :class:`UncoveredWeightError`, or with ``strict=False`` is kept
    as ``uncovered`` (for read-only reports).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(exclude, str) or isinstance(include, str) or isinstance(heads, str):
        raise TypeError("exclude, include and heads must be lists of names, not one string")
    exclude, heads = tuple(exclude), tuple(heads)
    ledger, seen, uncovered = Ledger(), {}, []
    routers = _router_modules(model)
    asked = [q for q in (*exclude, *heads) if q not in DEFAULT_EXCLUDE]
    hit: set[str] = set()
    for name, mod, mod_name, attr, p in _walk(model):
        hit.update(q for q in asked if q not in hit and _matches([q], mod_name, name))
        if id(p) in seen:
            ledger.kept[name] = "tied"  # counted once, under its first name
            continue
        seen[id(p)] = name
        if heads and p.dim() >= 2 and _matches(heads, mod_name, name):
            ledger.kept[name] = "head"
            continue
        got = _classify_one(mod, mod_name, attr, p, exclude, embeddings, routers)
        if isinstance(got, str):
            ledger.kept[name] = got
        elif got is None:
            uncovered.append((name, type(mod).__name__, tuple(p.shape)))
            ledger.kept[name] = "uncovered"
        else:
            ledger.prunable[name] = WeightInfo(name, mod_name, attr, got[0], tuple(p.shape), got[1], got[2])
    if uncovered and strict:
        raise UncoveredWeightError(_uncovered_message(uncovered))
    if uncovered:
        log.warning(_uncovered_message(uncovered))
    ledger.unmatched = [q for q in asked if q not in hit]
    if ledger.unmatched:  # a typo would silently prune what the user meant to keep
        log.warning("exclude pattern(s) %s matched no tensor of %s; nothing was kept for them",
                    ledger.unmatched, type(model).__name__)
    if include is not None:
        _apply_include(ledger, list(include))
    return ledger


def ledger_of(model: nn.Module, names: Iterable[str]) -> Ledger:
    """The ledger entries of the named tensors (e.g. those a ``MaskSet`` holds), oriented as :func:`classify` does.

    No exclude or keep rule applies: the names were chosen already. A named tensor of no prunable kind
    (a mask attached by hand to, say, a router or a custom parameter) is seen as one plain ``(out, in[, *k])``
    matrix, with a warning naming it; an unknown name is an error.
    """
    wanted, ledger, plain = list(names), Ledger(), []
    found = {name: (mod, mod_name, attr, p) for name, mod, mod_name, attr, p in _walk(model) if name in wanted}
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ValueError(f"names {missing} are not parameters of the model")
    for name in wanted:
        mod, mod_name, attr, p = found[name]
        got = _prunable_kind(mod, mod_name, attr, p)
        if got is None:
            is_table = isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and attr == "weight"
            got = ("embedding" if is_table else "linear", False, False)
            if not is_table:
                plain.append(name)
        ledger.prunable[name] = WeightInfo(name, mod_name, attr, got[0], tuple(p.shape), got[1], got[2])
    if plain:
        log.warning("tensors of no prunable kind are masked as plain (out, in) matrices: %s", plain)
    return ledger
