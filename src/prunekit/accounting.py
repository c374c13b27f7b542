"""Parameters, non-zeros and multiply-accumulates (MACs) of a model, per layer and in total.

MACs are counted on one real forward pass: a ``TorchFunctionMode`` sees every torch call (``F.linear``,
convolutions, ``matmul``/``bmm``/``einsum``, ``scaled_dot_product_attention``,
``multi_head_attention_forward``, LSTM/GRU/RNN ...) and forward hooks keep a stack of the modules that are running, so
each MAC goes to the innermost module that ran it. A matmul written inside a non-leaf module's ``forward``
(an attention block's ``q @ k.T``) goes to that module.

*Dense* MACs are what a dense kernel does. *Sparse* MACs scale each MAC that multiplies by a weight by the
density of that weight (the fraction of non-zeros): what an ideal unstructured sparse kernel would do.
Products of two activations (``QK^T``, attention x V) are never scaled.

Counting switches the model to eval mode and no-grad for the pass and restores every module's flag
after, so BatchNorm statistics are untouched. The fused fast paths of ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` are skipped while counting (they see the mode), so their parts are counted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .layers import DEFAULT_EXCLUDE, LABELS, classify

log = logging.getLogger(__name__)

ExampleInputs = Tensor | tuple | list | Mapping[str, Any]
# One term of a MAC count: (dense MACs, the weight that multiplies them or None for activation x activation).
MacTerm = tuple[int, Tensor | None]

__all__ = [
    "LayerStats",
    "count_params",
    "count_nonzeros",
    "count_macs",
    "sparse_macs",
    "layer_table",
    "totals",
    "format_table",
    "einsum_macs",
    "call_with",
]


@dataclass(frozen=True)
class LayerStats:
    """One module's row: its own tensors, and the MACs attributed to it on one forward pass.

    ``macs`` counts every MAC (dense); ``sparse_macs`` only those by non-zero weights (what an ideal sparse
    kernel would do), the same naming as ``totals``.
    Both are 0 when the table was built without example inputs.
    """

    name: str
    kind: str  # module class name
    shape: tuple[int, ...]  # shape of the module's weight, () if it has none
    params: int
    nonzeros: int
    sparsity: float  # fraction of zeros among the module's own parameters (weights, biases, norms)
    macs: int
    sparse_macs: int


# ---------------------------------------------------------------------------------------------------------
# parameters and non-zeros


def _own_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The module's own parameters; a parametrized weight is read as its computed (e.g. masked) value."""
    own = dict(module.named_parameters(recurse=False))
    for name in getattr(module, "parametrizations", {}):
        own[name] = getattr(module, name)
    return own


def _tensors_of(model_or_params: Any, name: str = "model_or_params") -> list[Tensor]:
    """Unique tensors of a tensor, a module (parametrized weights as computed) or an iterable of tensors."""
    if isinstance(model_or_params, Tensor):
        return [model_or_params]
    if isinstance(model_or_params, nn.Module):
        found: list[Tensor] = []
        for mname, module in model_or_params.named_modules():
            if ".parametrizations." in f".{mname}.":
                continue  # the originals are read through their owner's computed tensor
            found.extend(_own_tensors(module).values())
        return _unique(found)
    if isinstance(model_or_params, Iterable) and not isinstance(model_or_params, (str, bytes, Mapping)):
        items = list(model_or_params)
        bad = [type(t).__name__ for t in items if not isinstance(t, Tensor)]
        if bad:
            raise TypeError(f"{name} must hold only tensors, got {bad[0]}")
        return _unique(items)
    raise TypeError(f"{name} must be a tensor, an nn.Module or an iterable of tensors, "
                    f"got {type(model_or_params).__name__}")


def _unique(tensors: list[Tensor]) -> list[Tensor]:
    """Drop repeated tensors (tied weights count once)."""
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def count_params(model_or_params: Tensor | nn.Module | Iterable[Tensor]) -> int:
    """Number of parameter entries (each shared tensor counted once)."""
    with torch.no_grad():
        return sum(t.numel() for t in _tensors_of(model_or_params))


def count_nonzeros(model_or_params: Tensor | nn.Module | Iterable[Tensor]) -> int:
    """Number of non-zero parameter entries (each shared tensor counted once)."""
    with torch.no_grad():
        return sum(int(torch.count_nonzero(t)) for t in _tensors_of(model_or_params))


def _density(t: Tensor) -> float:
    """Fraction of non-zero entries of ``t``."""
    if t.numel() == 0:
        return 1.0
    with torch.no_grad():
        return int(torch.count_nonzero(t)) / t.numel()


# ---------------------------------------------------------------------------------------------------------
# MAC formulas: pure functions of the call's arguments and result, one per torch op


def _arg(args: tuple, kwargs: dict, i: int, key: str, default: Any = None) -> Any:
    """Positional argument ``i`` or keyword ``key`` of a torch call."""
    if len(args) > i:
        return args[i]
    return kwargs.get(key, default)


def _param_among(*tensors: Any) -> Tensor | None:
    """The sparsest ``nn.Parameter`` among the operands (the weight of a matmul), or None."""
    params = [t for t in tensors if isinstance(t, nn.Parameter)]
    return min(params, key=_density) if params else None


def _numel(out: Any) -> int:
    """Entries of a call's result (the first tensor when it returns several)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.numel() if isinstance(out, Tensor) else 0


def _linear(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``F.linear(x, W)``: every output entry is a dot product of length ``in`` = W.shape[-1]."""
    w = _arg(args, kwargs, 1, "weight")
    return [(_numel(out) * w.shape[-1], w)]  # out: (..., out_features)


def _conv(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``F.convNd``: each output entry sums ``in/groups * prod(kernel)`` products."""
    w = _arg(args, kwargs, 1, "weight")  # (out, in/groups, *kernel)
    return [(_numel(out) * w[0].numel(), w)]


def _conv_transpose(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``F.conv_transposeNd``: each input entry meets ``out/groups * prod(kernel)`` weights."""
    x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")  # w: (in, out/groups, *kernel)
    return [(x.numel() * w[0].numel(), w)]


def _matmul(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``a @ b`` (matmul, mm, bmm, mv, dot): each output entry is a dot product over a's last dim."""
    a, b = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "other", kwargs.get("mat2", kwargs.get("vec")))
    return [(_numel(out) * a.shape[-1], _param_among(a, b))]


def _rmatmul(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``other @ self`` reached through ``Tensor.__rmatmul__``."""
    return _matmul((args[1], args[0]), {}, out)


def _addmm(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``beta*C + m1 @ m2`` (addmm, baddbmm): the product's MACs, as for matmul."""
    m1, m2 = _arg(args, kwargs, 1, "mat1", kwargs.get("batch1")), _arg(args, kwargs, 2, "mat2", kwargs.get("batch2"))
    return [(_numel(out) * m1.shape[-1], _param_among(m1, m2))]


def _addmv(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``beta*y + M @ v``: one MAC per entry of M."""
    mat, vec = _arg(args, kwargs, 1, "mat"), _arg(args, kwargs, 2, "vec")
    return [(mat.numel(), _param_among(mat, vec))]


def _addbmm(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``beta*C + sum_b B1[b] @ B2[b]``: (b, n, m) x (b, m, p) -> b*n*m*p MACs."""
    b1, b2 = _arg(args, kwargs, 1, "batch1"), _arg(args, kwargs, 2, "batch2")
    return [(b1.numel() * b2.shape[-1], _param_among(b1, b2))]


def _outer(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """Outer products (outer, ger, addr): one multiply per output entry."""
    return [(_numel(out), None)]


def _bilinear(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``F.bilinear(x1, x2, W)`` with W (out, in1, in2): ``in1 * in2`` MACs per output entry."""
    w = _arg(args, kwargs, 2, "weight")
    return [(_numel(out) * w[0].numel(), w)]


def _sdpa(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``F.scaled_dot_product_attention``: QK^T is (.., L, E)x(.., E, S), then (.., L, S)x(.., S, Ev).

    Vaswani et al. 2017, "Attention Is All You Need", Eq. 1; a causal mask is counted dense (as the
    dense kernel computes it).
    """
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    L, E, S, Ev = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    batch = q.numel() // max(L * E, 1)  # (B, H) of the query, so GQA counts every query head
    return [(batch * L * S * E, None), (batch * L * S * Ev, None)]


def _mha(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``F.multi_head_attention_forward`` (nn.MultiheadAttention): projections, QK^T, attention x V, out.

    Vaswani et al. 2017, Eq. 1 and the MultiHead equation of Sec. 3.2.2. Inputs are (L, N, E) or (L, E).
    """
    names = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
             "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight")
    a = {n: _arg(args, kwargs, i, n) for i, n in enumerate(names)}
    q, k, v, w_in = a["query"], a["key"], a["value"], a["in_proj_weight"]
    L, E, S = q.shape[0], q.shape[-1], k.shape[0]
    N = q.shape[1] if q.dim() == 3 else 1
    if kwargs.get("use_separate_proj_weight", False) or w_in is None:
        wq, wk, wv = kwargs.get("q_proj_weight"), kwargs.get("k_proj_weight"), kwargs.get("v_proj_weight")
    else:
        wq, wk, wv = w_in[:E], w_in[E:2 * E], w_in[2 * E:]  # (E, E) each
    static_k, static_v = kwargs.get("static_k"), kwargs.get("static_v")
    S_att = static_k.shape[1] if static_k is not None else S + (a["bias_k"] is not None) + bool(a["add_zero_attn"])
    terms: list[MacTerm] = [(N * L * E * E, wq)]
    terms += [] if static_k is not None else [(N * S * E * k.shape[-1], wk)]
    terms += [] if static_v is not None else [(N * S * E * v.shape[-1], wv)]
    terms += [(N * L * S_att * E, None), (N * L * S_att * E, None)]  # QK^T, attention x V, over all heads
    return terms + [(N * L * E * E, a["out_proj_weight"])]


def _letters(term: str, ndim: int) -> list[str]:
    """Index letters of one einsum operand; '...' becomes placeholders aligned from the right."""
    if "..." not in term:
        return list(term)
    head, tail = term.split("...")
    n_ell = ndim - len(head) - len(tail)
    return list(head) + [f"...{j}" for j in range(n_ell - 1, -1, -1)] + list(tail)


def einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> int:
    """MACs of ``torch.einsum(equation, *operands)`` contracted left to right, pairwise.

    Each pairwise step costs the product of the sizes of the indices of both operands once indices used
    nowhere else have been summed out (sums are additions, not MACs). One operand costs 0.
    """
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = [_letters(t, len(s)) for t, s in zip(lhs.split(","), shapes)]
    sizes: dict[str, int] = {}
    for letters, shape in zip(terms, shapes):
        for c, n in zip(letters, shape):
            sizes[c] = max(sizes.get(c, 1), n)
    if "->" in equation:
        n_ell = max((sum(c.startswith("...") for c in t) for t in terms), default=0)
        output = set(_letters(rhs, len(rhs.replace("...", "")) + n_ell))
    else:  # implicit output: indices seen once, plus the broadcast dims
        flat = [c for t in terms for c in t]
        output = {c for c in flat if flat.count(c) == 1 or c.startswith("...")}
    acc, macs = set(terms[0]), 0
    for i in range(1, len(terms)):
        later = output.union(*terms[i + 1:]) if i + 1 < len(terms) else set(output)
        left = {c for c in acc if c in later or c in terms[i]}
        right = {c for c in terms[i] if c in later or c in acc}
        macs += math.prod(sizes[c] for c in left | right)
        acc = {c for c in left | right if c in later}
    return macs


def _sublist_equation(args: tuple) -> tuple[str, list[Tensor]]:
    """Turn einsum's sublist form ``(op, [0, 1], op, [1, 2], [0, 2])`` into an equation string."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def word(sub: Any) -> str:
        return "".join("..." if s is Ellipsis else alphabet[s] for s in sub)

    has_out = len(args) % 2 == 1  # (op, sub, op, sub, ..., out)
    ops, subs = list(args[0:len(args) - has_out:2]), list(args[1::2])
    eq = ",".join(word(s) for s in subs)
    return (eq + "->" + word(args[-1]) if has_out else eq), ops


def _einsum(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``torch.einsum`` in string or sublist form; scaled by the density of a Parameter operand."""
    if isinstance(args[0], str):
        eq = args[0]
        ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    else:
        eq, ops = _sublist_equation(args)
    return [(einsum_macs(eq, [tuple(o.shape) for o in ops]), _param_among(*ops))]


def _tensordot(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``torch.tensordot``: free(a) * free(b) * contracted = sqrt(|a| * |b| * |out|)."""
    a, b = _arg(args, kwargs, 0, "a"), _arg(args, kwargs, 1, "b")
    return [(round(math.sqrt(a.numel() * b.numel() * _numel(out))), _param_among(a, b))]


def _rnn(args: tuple, kwargs: dict, out: Any) -> list[MacTerm]:
    """``torch.lstm`` / ``gru`` / ``rnn_tanh`` / ``rnn_relu``: every weight matrix meets every token once.

    Covers layers, directions and LSTM projections (each is one 2-D matrix in the flat parameter list);
    the gate products (Hochreiter & Schmidhuber 1997; Cho et al. 2014) are element-wise and not counted.
    """
    packed = isinstance(args[1], Tensor) and not args[1].is_floating_point()  # (data, batch_sizes, hx, ...)
    x, params = args[0], args[3 if packed else 2]
    tokens = x.shape[0] if packed else x.numel() // max(x.shape[-1], 1)
    return [(tokens * w.numel(), w) for w in params if isinstance(w, Tensor) and w.dim() == 2]


_RULES: dict[str, Callable[[tuple, dict, Any], list[MacTerm]]] = {
    "linear": _linear,
    **{f"conv{d}d": _conv for d in (1, 2, 3)},
    **{f"conv_transpose{d}d": _conv_transpose for d in (1, 2, 3)},
    **{n: _matmul for n in ("matmul", "__matmul__", "mm", "bmm", "mv", "dot", "vdot")},
    "__rmatmul__": _rmatmul,
    **{n: _addmm for n in ("addmm", "addmm_", "baddbmm", "baddbmm_")},
    **{n: _addmv for n in ("addmv", "addmv_")},
    **{n: _addbmm for n in ("addbmm", "addbmm_")},
    **{n: _outer for n in ("outer", "ger", "addr", "addr_")},
    "bilinear": _bilinear,
    "scaled_dot_product_attention": _sdpa,
    "multi_head_attention_forward": _mha,
    "einsum": _einsum,
    "tensordot": _tensordot,
    **{n: _rnn for n in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
}


# ---------------------------------------------------------------------------------------------------------
# the counting pass


class _MacCounter(TorchFunctionMode):
    """Adds up dense and sparse MACs of every counted torch call, under the innermost running module."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.dense: dict[str, int] = {}
        self.sparse: dict[str, float] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # this mode is off inside its own handler: no double counting
        rule = _RULES.get(getattr(func, "__name__", ""))
        if rule is not None:
            self._add(rule(args, kwargs, out))
        return out

    def _add(self, terms: list[MacTerm]) -> None:
        """Credit the terms to the module on top of the stack."""
        where = self.stack[-1] if self.stack else ""
        for macs, weight in terms:
            self.dense[where] = self.dense.get(where, 0) + int(macs)
            scale = 1.0 if weight is None else _density(weight)
            self.sparse[where] = self.sparse.get(where, 0.0) + macs * scale


def _check_inputs(model: Any, example_inputs: Any) -> None:
    """Raise before any work when the model or the inputs have the wrong type."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, (Tensor, tuple, list, Mapping)):
        raise TypeError("example_inputs must be a tensor, a tuple/list of positional inputs or a dict of "
                        f"keyword inputs, got {type(example_inputs).__name__}")


def call_with(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` on a tensor, a tuple/list of positional inputs or a dict of keyword inputs.

    Only a plain tuple or list is spread; a tuple subclass such as ``PackedSequence`` is one input.
    """
    if isinstance(example_inputs, Mapping):
        return model(**example_inputs)
    if type(example_inputs) in (tuple, list):
        return model(*example_inputs)
    return model(example_inputs)


class _ModuleStack:
    """Forward hooks that keep the names of the modules now running, innermost last."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[str] = []
        self.handles = []
        for name, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._push(name)))
            self.handles.append(module.register_forward_hook(self._pop, always_call=True))

    def _push(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any) -> None:
            self.stack.append(name)
        return hook

    def _pop(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()

    def remove(self) -> None:
        """Remove every hook."""
        for h in self.handles:
            h.remove()


@dataclass
class _Eval:
    """Context: the model in eval mode and no autograd, each module's training flag restored after."""

    model: nn.Module

    def __enter__(self) -> None:
        self.flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.no_grad.__exit__(*exc)
        for m, flag in self.flags.items():
            m.training = flag


def _trace(model: nn.Module, example_inputs: ExampleInputs) -> tuple[dict[str, int], dict[str, float]]:
    """Run one forward pass and return dense and sparse MACs per module name."""
    _check_inputs(model, example_inputs)
    modules = _ModuleStack(model)
    counter = _MacCounter(modules.stack)
    try:
        with _Eval(model), counter:
            call_with(model, example_inputs)
    finally:
        modules.remove()
    log.debug("counted %d MACs over %d modules", sum(counter.dense.values()), len(counter.dense))
    return counter.dense, counter.sparse


def count_macs(model: nn.Module, example_inputs: ExampleInputs, *,
               per_layer: bool = False) -> int | dict[str, int]:
    """Dense multiply-accumulates of one forward pass (in eval mode, no grad), total or per module name."""
    dense, _ = _trace(model, example_inputs)
    return dict(dense) if per_layer else sum(dense.values())


def sparse_macs(model: nn.Module, example_inputs: ExampleInputs, *,
                per_layer: bool = False) -> int | dict[str, int]:
    """MACs of one forward pass with each weight's MACs scaled by that weight's density."""
    _, sparse = _trace(model, example_inputs)
    if per_layer:
        return {k: round(v) for k, v in sparse.items()}
    return round(sum(sparse.values()))


# ---------------------------------------------------------------------------------------------------------
# tables


def _weight_shape(module: nn.Module, own: dict[str, Tensor]) -> tuple[int, ...]:
    """Shape of the module's weight, else of its first own tensor, else ()."""
    w = own.get("weight", next(iter(own.values()), None))
    return tuple(w.shape) if isinstance(w, Tensor) else ()


def _rows(model: nn.Module, dense: Mapping[str, int], sparse: Mapping[str, float]) -> Iterator[LayerStats]:
    """One row per module that holds tensors or ran MACs, in ``named_modules`` order."""
    for name, module in model.named_modules():
        if ".parametrizations." in f".{name}.":
            continue
        own_map = _own_tensors(module)
        own = _unique(list(own_map.values()))
        if not own and name not in dense:
            continue
        params = sum(t.numel() for t in own)
        nz = count_nonzeros(own) if own else 0
        yield LayerStats(name=name, kind=type(module).__name__, shape=_weight_shape(module, own_map),
                         params=params, nonzeros=nz, sparsity=(1 - nz / params) if params else 0.0,
                         macs=dense.get(name, 0), sparse_macs=round(sparse.get(name, 0.0)))


def layer_table(model: nn.Module, example_inputs: ExampleInputs | None = None) -> list[LayerStats]:
    """A row per module with its own parameters (Linear, Conv, Embedding, norms...) or with MACs.

    A tensor shared by two modules (tied embeddings) appears in both rows; ``totals`` counts it once.
    Without ``example_inputs`` the MAC columns are 0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    dense, sparse = _trace(model, example_inputs) if example_inputs is not None else ({}, {})
    return list(_rows(model, dense, sparse))


def totals(model: nn.Module, example_inputs: ExampleInputs | None = None,
           exclude: Iterable[str] = DEFAULT_EXCLUDE) -> dict[str, Any]:
    """Whole-model ``params``, ``nonzeros``, ``sparsity``, dense ``macs`` and ``sparse_macs`` (None without inputs).

    ``sparsity`` counts every parameter (biases and norms included, ``sparsity_label`` says so); the
    labelled ledger figures ``sparsity_pruned_weights`` (the prunable weights ``prune_`` reports, with
    ``exclude``), ``sparsity_all_weights`` (every weight matrix) and ``sparsity_all_parameters`` come with
    ``sparsity_line``, the same line a prune report prints.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    macs = sparse = None
    if example_inputs is not None:
        dense_by, sparse_by = _trace(model, example_inputs)
        macs, sparse = sum(dense_by.values()), round(sum(sparse_by.values()))
    params, nz = count_params(model), count_nonzeros(model)
    ledger = classify(model, exclude=exclude, strict=False).summary(model)
    return {"params": params, "nonzeros": nz, "sparsity": (1 - nz / params) if params else 0.0,
            "sparsity_label": LABELS["all_parameters"], "macs": macs, "sparse_macs": sparse,
            **{f"sparsity_{k}": v for k, v in ledger.sparsities().items()}, "sparsity_line": ledger.line()}


_COLUMNS = ("name", "kind", "shape", "params", "nonzeros", "sparsity", "MACs", "sparse MACs")


def _cells(r: LayerStats) -> list[str]:
    """The printed cells of one row."""
    shape = "x".join(map(str, r.shape)) if r.shape else "-"
    return [r.name or "(root)", r.kind, shape, f"{r.params:,}", f"{r.nonzeros:,}", f"{r.sparsity:.4f}",
            f"{r.macs:,}", f"{r.sparse_macs:,}"]


def _total_cells(rows: list[LayerStats]) -> list[str]:
    """The closing 'total' row (a shared tensor counts once per row that holds it)."""
    p, nz = sum(r.params for r in rows), sum(r.nonzeros for r in rows)
    sp = (1 - nz / p) if p else 0.0
    return ["total", "", "", f"{p:,}", f"{nz:,}", f"{sp:.4f}", f"{sum(r.macs for r in rows):,}",
            f"{sum(r.sparse_macs for r in rows):,}"]


TABLE_NOTE = ("sparsity: zeros over all of a row's own parameters (weights, biases, norms); "
              "the labelled figures over pruned weights and weight matrices are in totals()")


def format_table(rows: list[LayerStats], fmt: str = "markdown", note: bool = True) -> str:
    """Render rows (plus a total row) as a Markdown table or as aligned plain text, then what sparsity counts."""
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt must be one of 'markdown', 'text', got {fmt!r}")
    if not all(isinstance(r, LayerStats) for r in rows):
        raise TypeError("rows must be a list of LayerStats (from layer_table)")
    body = [_cells(r) for r in rows] + [_total_cells(rows)]
    right = [False, False, False, True, True, True, True, True]
    if fmt == "markdown":
        lines = ["| " + " | ".join(_COLUMNS) + " |",
                 "|" + "|".join("---:" if r else "---" for r in right) + "|"]
        tail = ["", TABLE_NOTE] if note else []
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body] + tail)
    widths = [max(len(row[i]) for row in [list(_COLUMNS), *body]) for i in range(len(_COLUMNS))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    tail = [TABLE_NOTE] if note else []
    return "\n".join([line(list(_COLUMNS)), line(["-" * w for w in widths])] + [line(c) for c in body] + tail)
