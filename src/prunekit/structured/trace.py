"""Trace one forward pass at the ATen level and build the axis algebra of every tensor it touches.

Why ATen dispatch, not torch.fx, torch.export or the autograd graph: the model runs eagerly, so any
Python control flow works (Hugging Face models, which defeat ``torch.fx.symbolic_trace``); every op
arrives decomposed to a small closed set with exact arguments (view sizes, cat dims, conv groups),
unlike autograd node names; no gradients are needed, so frozen parameters and ``torch.no_grad`` models
trace too (both blind DepGraph's autograd walk); and nothing is compiled, so tracing costs one forward.
A ``TorchFunctionMode`` on top records which integer module attributes (``self.num_heads``) sized a
reshape, so they are updated after removal.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .layout import Atoms
from .ops import NO_OUTPUT, POOLS, RULES, is_pointwise, pointwise, spatial, tensors_in

log = logging.getLogger(__name__)

VIEW_LIKE = {"t", "transpose", "permute", "view", "_unsafe_view", "reshape", "expand", "detach", "alias",
             "_to_copy", "clone", "contiguous", "unsqueeze", "squeeze", "lift_fresh", "numpy_T"}


class TraceError(RuntimeError):
    """The model cannot be traced as given; the message names the module and what to do."""


class _SourcedInt(int):
    """An int seen while tracing that remembers where it came from: module attributes (``attrs``: ``(module,
    attribute)`` or ``(module, "attribute[i]")`` for an element of a tuple/list attribute), tensor dims whose
    size it was read from (``dims``: layout nodes), and whether arithmetic ``derived`` it from them."""

    attrs: frozenset
    dims: tuple
    derived: bool
    expr: tuple  # ("attr", src, value) | ("dim", node) | ("const", value) | (int method name, left, right)

    def __new__(cls, v: int, src: tuple[str, str] | None = None, dims: tuple = (), derived: bool = False,
                attrs: frozenset | None = None, expr: tuple | None = None) -> _SourcedInt:
        obj = super().__new__(cls, v)
        obj.attrs = frozenset([src]) if src is not None else (attrs or frozenset())
        obj.dims = tuple(dims)
        obj.derived = derived
        obj.expr = expr or (("attr", src, int(v)) if src is not None else ("dim", dims[0]) if dims else
                            ("const", int(v)))
        return obj

    @property
    def src(self) -> tuple[str, str]:
        """The one attribute a plain (not derived) attribute int came from."""
        return next(iter(self.attrs))

    def __reduce__(self):  # copies and pickles are plain ints
        return (int, (int(self),))


def _derive(name: str):
    base = getattr(int, name)

    def op(self: _SourcedInt, other: Any) -> Any:
        r = base(self, other)
        if type(r) is not int:
            return r
        rhs = other.expr if isinstance(other, _SourcedInt) else ("const", int(other))
        return _SourcedInt(r, attrs=self.attrs | getattr(other, "attrs", frozenset()),
                           dims=self.dims + getattr(other, "dims", ()), derived=True, expr=(name, self.expr, rhs))

    op.__name__ = name
    op.__doc__ = f"``int.{name}`` that keeps the sources of both operands (marked derived)."
    return op


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__floordiv__",
              "__rfloordiv__", "__mod__", "__rmod__"):
    setattr(_SourcedInt, _name, _derive(_name))


@dataclass
class Barrier:
    """An op without a coupling rule, and the spaces it received."""

    op: str
    module: str
    nodes: list


@dataclass
class TraceResult:
    """What one traced forward pass leaves behind (consumed by :class:`Graph`)."""

    atoms: Atoms
    tensors: dict[str, list]  # canonical state name -> per-dim layout
    aliases: dict[str, list[str]]  # canonical name -> every state name of that tensor (tied weights)
    is_param: dict[str, bool]
    macs: list[tuple[str, list]]  # (module, dims whose sizes multiply)
    module_attrs: dict[tuple[str, str], Any]  # (module, hyperparameter) -> layout(s)
    attr_uses: dict[tuple[str, str], list]  # (module, int attribute) -> layouts it sized
    heads: list[tuple[str, Any, Any]]  # (attention module, query-head layout, kv-head layout)
    barriers: list[Barrier]
    output_shapes: list[tuple[int, ...]]
    ignored: set[str] = field(default_factory=set)


def resolve_ignore(model: nn.Module, ignore: list[str] | tuple[str, ...]) -> set[str]:
    """Module names matching ``ignore`` (exact names or glob patterns); unknown entries are an error."""
    if isinstance(ignore, str) or not isinstance(ignore, (list, tuple)):
        raise ValueError(f"ignore must be a list of module names or glob patterns, got {ignore!r}")
    names = [n for n, _ in model.named_modules() if n]
    out: set[str] = set()
    for pat in ignore:
        hit = [n for n in names if n == pat or fnmatch.fnmatchcase(n, pat)]
        if not hit:
            close = [n for n in names if pat.split(".")[-1] in n][:8] or names[:8]
            raise ValueError(f"ignore: no module named {pat!r} in {type(model).__name__}; "
                             f"module names look like: {', '.join(close)}")
        out.update(hit)
    return out


class Tracer(TorchDispatchMode):
    """Applies the coupling rule of every ATen op to the layouts of its tensors."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Keep ``__torch_dispatch__`` unwrapped: PyTorch would otherwise wrap it in ``torch._dynamo.disable``,
        whose first call imports ``torch._dynamo`` (11-16 s on a small CPU); nothing is compiled while tracing."""
        return False

    def __init__(self, ignored: set[str]) -> None:
        super().__init__()
        self.A = Atoms()
        self.lay: dict[int, list] = {}
        self.alive: list[Tensor] = []
        self.param_like: set[int] = set()
        self.used: set[int] = set()
        self.stack: list[str] = []
        self.ignored = ignored
        self.func_name = ""
        self.macs_terms: list[tuple[str, list]] = []
        self.module_attrs: dict[tuple[str, str], Any] = {}
        self.attr_uses: dict[tuple[str, str], list] = {}
        self.heads: list[tuple[str, Any, Any]] = []
        self.barriers: list[Barrier] = []
        self.computed: list[tuple[_SourcedInt, Any, str]] = []  # (computed width, dim it sized, where)

    # ---- API used by the rules ---------------------------------------------------------------
    @property
    def module(self) -> str:
        """Path of the innermost module running now ("" for the top level)."""
        return self.stack[-1] if self.stack else ""

    def where(self, op: str) -> str:
        """``op`` and the current module, for messages."""
        return f"{op} in {self.module or 'the top-level model'}"

    def dims(self, x: Tensor) -> list:
        """Per-dim layout of ``x``; a tensor never seen before is a constant (unprunable)."""
        k = id(x)
        self.used.add(k)
        if k not in self.lay:
            self.fresh(x, f"constant tensor in {self.module or 'the model'}")
        return self.lay[k]

    def set(self, x: Tensor, lay: list) -> None:
        """Give ``x`` the per-dim layout ``lay`` (``None`` entries: new fixed spaces)."""
        if id(x) in self.lay and self.lay[id(x)] is not lay:  # in-place op: unify with what it was
            for a, b in zip(self.lay[id(x)], lay):
                if b is not None:
                    self.A.unify(a, b, self.where(self.func_name))
            return
        self.lay[id(x)] = [self.A.new(x.shape[i], "broadcast") if n is None else n for i, n in enumerate(lay)]
        self.alive.append(x)

    def fresh(self, x: Any, why: str) -> None:
        """New fixed spaces for every dim of the tensors in ``x`` that have no layout yet."""
        for o in tensors_in(x):
            if id(o) not in self.lay:
                self.lay[id(o)] = [self.A.new(s, why) for s in o.shape]
                self.alive.append(o)

    def fix_tensor(self, x: Tensor, why: str) -> None:
        """Mark every dim of ``x`` as not prunable."""
        for d in self.dims(x):
            self.A.fix(d, why)

    def broadcast_into(self, out: Tensor, ins: list[Tensor]) -> None:
        """Unify every aligned dim of equal size between ``out`` and ``ins`` (NumPy broadcasting)."""
        n = out.dim()
        if id(out) not in self.lay:
            lay: list = [None] * n
            for x in ins:
                xl = self.dims(x)
                for i in range(x.dim()):
                    j = n - x.dim() + i
                    if j >= 0 and lay[j] is None and x.shape[i] == out.shape[j]:
                        lay[j] = xl[i]
            self.set(out, lay)
        ol = self.lay[id(out)]
        for x in ins:
            xl = self.dims(x)
            for i in range(x.dim()):
                j = n - x.dim() + i
                if j >= 0 and x.shape[i] == out.shape[j] and xl[i] is not ol[j]:
                    self.A.unify(xl[i], ol[j], self.where(self.func_name))

    def is_param_like(self, x: Tensor) -> bool:
        """True for parameters, buffers and views of them."""
        return id(x) in self.param_like

    def macs(self, nodes: list) -> None:
        """Record a MAC term: the product of the sizes of ``nodes``."""
        self.macs_terms.append((self.module, list(nodes)))

    def record_attr(self, attr: str, node: Any) -> None:
        """Remember which layout the current module's hyperparameter ``attr`` counts."""
        self.module_attrs[(self.module, attr)] = node

    def keep_whole(self, s: _SourcedInt, node: Any, where: str) -> None:
        """A dim sized by a width the forward computed (``C // self.num_heads``, ``self.h * self.d``): noted,
        and checked once the trace is complete (:func:`_check_computed_widths`)."""
        if not s.attrs and all(self.A.fixed.get(a) for d in s.dims for a in self.A.leaves(d)):
            return  # computed from fixed sizes only (spatial, batch): it cannot change
        self.computed.append((s, node, where))

    def same_width(self, src: Any, node: Any, where: str) -> None:
        """A dim sized by another tensor's width (``x.shape[i]``): one space if both are plain channel
        spaces, else both stay whole (their widths could not follow each other)."""
        a, b = self.A.expand(src), self.A.expand(node)
        if a == b:
            return
        if isinstance(a, int) and isinstance(b, int):
            self.A.unify(a, b, where)
            return
        why = f"{where} sizes a dim by the width of a differently laid out dim (x.shape); kept whole"
        self.A.fix(a, why)
        self.A.fix(b, why)

    def record_heads(self, q: Any, k: Any) -> None:
        """Remember the query-head and kv-head layouts of an attention call."""
        self.heads.append((self.module, q, k))

    # ---- dispatch ------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace not in ("aten", "prims") or func.overloadpacket.__name__ in NO_OUTPUT:
            return out
        self.func_name = name = func.overloadpacket.__name__
        rule = RULES.get(name)
        if rule is None and is_pointwise(func):
            rule = pointwise
        if rule is None and any(p in name for p in POOLS):
            rule = spatial
        ins = tensors_in(list(args)) + tensors_in(list(kwargs.values()))
        if rule is None:
            self.barriers.append(Barrier(str(func), self.module, [d for x in ins for d in self.dims(x)]))
            self.fresh(out, f"output of {func} (no coupling rule)")
        else:
            try:
                rule(self, args, kwargs, out)
            except Exception as e:
                raise TraceError(f"prunekit's coupling rule for {func} failed in module "
                                 f"{self.module or 'the top-level model'!r}: {type(e).__name__}: {e}; this is a "
                                 f"prunekit bug, please report it (add that module to ignore=[...] meanwhile)") from e
            self.fresh(out, f"output of {func}")
        if name in VIEW_LIKE and ins and id(ins[0]) in self.param_like:
            self.param_like.update(id(o) for o in tensors_in(out))
        if any(m in self.ignored for m in self.stack):
            for x in ins + tensors_in(out):
                self.fix_tensor(x, f"inside ignored module {self._ignored_owner()}")
        return out

    def _ignored_owner(self) -> str:
        return next(m for m in self.stack if m in self.ignored)


_SHAPE_GETTERS = ("shape", "size")
_POSITIONAL = {"view", "reshape", "expand", "new_zeros", "new_ones", "new_empty", "new_full", "zeros", "ones",
               "empty", "full", "rand", "randn", "repeat", "tile"}
_SPLITS = {"split", "split_with_sizes", "tensor_split"}


class _SizeSources(TorchFunctionMode):
    """Tags the sizes a forward reads (``x.shape``, ``x.size(d)``, int attributes) and, for every call they
    size, couples them with the output dims: an attribute is updated after removal, an input's width sizing
    a dim of the same space is that space, and a width the forward *computes* (``C // self.num_heads``) or
    reads from another space keeps the spaces involved whole (:meth:`Tracer.keep_whole`)."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.t = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _SHAPE_GETTERS or name == "__get__" and getattr(func, "__self__", None) is _SHAPE_DESCR:
            return self._tag(args[0], out)
        if name in ("chunk", "split") and isinstance(out, (tuple, list)) and len(out) > 1 and args \
                and isinstance(args[0], Tensor):
            self._equal_parts(name, args, kwargs, out)
        srcs = [v for v in _flatten((args, kwargs)) if isinstance(v, _SourcedInt)]
        if srcs:
            self._couple(name, args, kwargs, out, srcs)
        return out

    def _equal_parts(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """``x.chunk(n)`` and ``x.split(size)`` cut equal parts, recomputed at run time from the width (chunk) or
        from ``size``: the parts are one space (they shrink alike), and parts of a constant size stay whole."""
        x, parts = args[0], [o for o in out if isinstance(o, Tensor) and id(o) in self.t.lay]
        d = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        if not isinstance(d, int) or len(parts) != len(out):
            return
        d = d + x.dim() if d < 0 else d
        size = args[1] if len(args) > 1 else kwargs.get("split_size", kwargs.get("chunks"))
        if name == "split" and not isinstance(size, int):
            return  # a list of sizes: each part is its own space
        nodes = [self.t.lay[id(o)][d] for o in parts]
        where = f"{name} in {self.t.module or 'the top-level model'}"
        uneven = len({o.shape[d] for o in parts}) > 1
        if uneven or (name == "split" and not isinstance(size, _SourcedInt)):
            why = f"{where} cuts parts of a size that would not follow a removal; kept whole"
            for n in nodes:
                self.t.A.fix(n, why)
            return
        for n in nodes[1:]:
            self.t.A.unify(nodes[0], n, where)
        if name == "split" and isinstance(size, _SourcedInt) and not size.attrs and not size.derived:
            self.t.same_width(size.dims[0], nodes[0], where)

    def _tag(self, x: Any, out: Any) -> Any:
        lay = self.t.lay.get(id(x)) if isinstance(x, Tensor) else None
        if lay is None or len(lay) != x.dim():
            return out
        if isinstance(out, int) and not isinstance(out, _SourcedInt):  # size(d)
            d = next((i for i, n in enumerate(x.shape) if n == out), None)
            return _SourcedInt(out, dims=(lay[d],)) if d is not None and list(x.shape).count(out) == 1 else out
        if isinstance(out, torch.Size):
            return torch.Size([_SourcedInt(n, dims=(lay[i],)) for i, n in enumerate(out)])
        return out

    def _couple(self, name: str, args: tuple, kwargs: dict, out: Any, srcs: list) -> None:
        outs = [o for o in tensors_in(out if isinstance(out, (list, tuple)) else [out]) if id(o) in self.t.lay]
        pairs = self._pairs(name, args, kwargs, outs)
        where = f"{name} in {self.t.module or 'the top-level model'}"
        for s, node in pairs:
            if s.derived:
                self.t.keep_whole(s, node, where)
            elif s.attrs:
                self.t.attr_uses.setdefault(s.src, []).append(node)
            elif s.dims:
                self.t.same_width(s.dims[0], node, where)

    def _pairs(self, name: str, args: tuple, kwargs: dict, outs: list) -> list:
        """(sized int, output dim layout) pairs: by position for reshapes and splits, else by value."""
        rest = list(args[1:]) if args and isinstance(args[0], Tensor) else list(args)
        ints = [v for v in _flatten((rest, kwargs)) if isinstance(v, int) and not isinstance(v, bool)]
        if name in _POSITIONAL and len(outs) == 1 and len(ints) == outs[0].dim() and name not in ("repeat", "tile"):
            lay = self.t.lay[id(outs[0])]
            return [(v, lay[i]) for i, v in enumerate(ints) if isinstance(v, _SourcedInt) and outs[0].shape[i] > 1]
        if name in _SPLITS and len(outs) > 1:
            x = args[0]
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
            dim = dim + x.dim() if dim < 0 else dim
            sizes = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_size"))
            if isinstance(sizes, (list, tuple)) and len(sizes) == len(outs):
                return [(v, self.t.lay[id(o)][dim]) for v, o in zip(sizes, outs)
                        if isinstance(v, _SourcedInt) and o.shape[dim] > 1]
        if name == "__getitem__" and len(outs) == 1 and isinstance(args[0], Tensor):
            got = self._slices(args[0], args[1], outs[0])
            if got is not None:
                return got
        pairs = []
        for o in outs:  # by value: attributes as they always were; computed widths only where unambiguous
            lay = self.t.lay[id(o)]
            for v in ints:
                if isinstance(v, _SourcedInt) and v.attrs and not v.derived:
                    pairs += [(v, lay[i]) for i, n in enumerate(o.shape) if n == int(v) and n > 1]
                elif isinstance(v, _SourcedInt) and v.derived and list(o.shape).count(int(v)) == 1 and v > 1:
                    pairs.append((v, lay[list(o.shape).index(int(v))]))
        return pairs

    def _slices(self, x: Tensor, index: Any, out: Tensor) -> list | None:
        """Pairs for ``x[...]`` with slices: each sliced dim's length ``stop - start`` as an int that keeps
        its sources (None: an index this does not follow, e.g. a tensor)."""
        items = list(index) if isinstance(index, tuple) else [index]
        if any(isinstance(i, Tensor) or (i is not None and not isinstance(i, (int, slice)) and i is not Ellipsis)
               for i in items):
            return None
        n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
        pairs, d_in, d_out = [], 0, 0
        xl, ol = self.t.lay[id(x)], self.t.lay[id(out)]
        for i in items:
            if i is Ellipsis:
                skip = x.dim() - n_real
                d_in, d_out = d_in + skip, d_out + skip
            elif i is None:
                d_out += 1
            elif isinstance(i, slice):
                if d_in >= x.dim() or d_out >= out.dim():
                    return None
                srcs = [v for v in (i.start, i.stop) if isinstance(v, _SourcedInt)]
                if srcs and (i.step in (None, 1)) and out.shape[d_out] > 1:
                    pairs.append((self._length(i, x.shape[d_in], xl[d_in]), ol[d_out]))
                d_in, d_out = d_in + 1, d_out + 1
            else:
                d_in += 1
        return pairs

    @staticmethod
    def _length(sl: slice, size: int, node: Any) -> _SourcedInt:
        start, stop = sl.start, sl.stop
        if start in (None, 0) and isinstance(stop, _SourcedInt) and stop >= 0:
            return stop
        whole = _SourcedInt(size, dims=(node,))
        stop = whole if stop is None else (whole + stop if stop < 0 else stop)
        start = 0 if start is None else (whole + start if start < 0 else start)
        length = stop - start
        if not isinstance(length, _SourcedInt) or not length.derived:
            length = _SourcedInt(int(length), attrs=getattr(length, "attrs", frozenset()), derived=True,
                                 dims=getattr(length, "dims", ()), expr=("__sub__", _expr(stop), _expr(start)))
        return length


def _expr(v: Any) -> tuple:
    return v.expr if isinstance(v, _SourcedInt) else ("const", int(v))


_SHAPE_DESCR = Tensor.shape


def _flatten(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [v for y in x for v in _flatten(y)]
    if isinstance(x, slice):
        return [x.start, x.stop, x.step]
    if isinstance(x, dict):
        return [v for y in x.values() for v in _flatten(y)]
    return [x]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on ``inputs``: a tensor, a tuple/list of positional args, or a dict of keyword args."""
    if isinstance(inputs, dict):
        kw = dict(inputs)
        if "use_cache" not in kw and "use_cache" in _forward_params(model):
            kw["use_cache"] = False
        return model(**kw)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def run_with_hooks(model: nn.Module, inputs: Any, hooks: list[Any]) -> None:
    """One eval-mode, no-grad forward on ``inputs`` that the ``hooks`` observe; then remove them."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, inputs)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()


def _forward_params(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def output_tensors(out: Any) -> list[Tensor]:
    """Tensors in a model output: tensors, lists, tuples, dicts and ``ModelOutput``-like mappings."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        return [t for k in out.keys() for t in output_tensors(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in output_tensors(v)]
    return []


def input_tensors(inputs: Any) -> list[Tensor]:
    """Tensors among example inputs (tensor, tuple/list, or dict of keyword arguments)."""
    if isinstance(inputs, dict):
        return [t for v in inputs.values() for t in input_tensors(v)]
    return output_tensors(inputs)


def trace(model: nn.Module, example_inputs: Any, ignored: set[str]) -> TraceResult:
    """Run ``model`` once on ``example_inputs`` (eval mode, no grad) and return the coupled layouts."""
    t = Tracer(ignored)
    names, state = _register_state(model, t)
    for x in input_tensors(example_inputs):
        t.fresh(x, "model input")
    restore = _source_ints(model)
    hooks = _stack_hooks(model, t)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _SizeSources(t), t:
            out = call_model(model, example_inputs)
    except TraceError:
        raise
    except Exception as e:
        where = t.module or "the top-level model"
        raise TraceError(
            f"tracing failed inside module {where!r} ({_cls(model, where)}): {type(e).__name__}: {e}. "
            f"Check that example_inputs run through the model; if this module cannot run op by op, "
            f"add {where!r} to ignore=[...]") from e
    finally:
        for h in hooks:
            h.remove()
        restore()
        model.train(was_training)
    outs = output_tensors(out)
    for o in outs:
        t.fix_tensor(o, "model output")
    return _finish(model, t, names, state, [tuple(o.shape) for o in outs])


def _cls(model: nn.Module, path: str) -> str:
    try:
        return type(model.get_submodule(path)).__name__ if path != "the top-level model" else type(model).__name__
    except AttributeError:
        return "?"


def _register_state(model: nn.Module, t: Tracer) -> tuple[dict[int, list[str]], dict[int, Tensor]]:
    names: dict[int, list[str]] = {}
    state: dict[int, Tensor] = {}
    for n, p in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if p is None:
            continue
        names.setdefault(id(p), []).append(n)
        if id(p) not in state:
            state[id(p)] = p
            t.lay[id(p)] = [t.A.new(s) for s in p.shape]
            t.param_like.add(id(p))
    return names, state


def _source_ints(model: nn.Module):
    """Swap int attributes of every module for :class:`_SourcedInt`; return the undo function."""
    swapped: list[tuple[nn.Module, str, Any]] = []
    for path, m in model.named_modules():
        for k, v in list(vars(m).items()):
            if type(v) is int:
                swapped.append((m, k, v))
                m.__dict__[k] = _SourcedInt(v, (path, k))
            elif type(v) in (tuple, list) and 0 < len(v) <= 64 and all(type(e) is int for e in v):
                swapped.append((m, k, v))  # split sizes (``self.split_indexes``): one source per element
                m.__dict__[k] = type(v)(_SourcedInt(e, (path, f"{k}[{i}]")) for i, e in enumerate(v))

    def restore() -> None:
        """Put the plain ints back."""
        for m, k, v in swapped:
            m.__dict__[k] = v

    return restore


def _stack_hooks(model: nn.Module, t: Tracer) -> list:
    hooks = []
    for path, m in model.named_modules():
        def pre(_m: nn.Module, _a: Any, path: str = path) -> None:
            t.stack.append(path)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            if t.stack:
                t.stack.pop()

        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    return hooks


def _new_value(t: Tracer, expr: tuple, counts: dict[int, int]) -> int | None:
    """The value ``expr`` computes once leaf ``a`` keeps ``counts[a]`` units (None: cannot tell)."""
    kind = expr[0]
    if kind == "const":
        return expr[1]
    if kind == "dim":
        return t.A.new_size(expr[1], counts)
    if kind == "attr":
        new = {t.A.new_size(n, counts) for n in t.attr_uses.get(expr[1], [])} - {expr[2]}
        return expr[2] if not new else (new.pop() if len(new) == 1 else None)
    a, b = _new_value(t, expr[1], counts), _new_value(t, expr[2], counts)
    if a is None or b is None or (b == 0 and "div" in kind or "mod" in kind and b == 0):
        return None
    return getattr(int, kind)(a, b)


def _expr_leaves(t: Tracer, expr: tuple) -> list[int]:
    if expr[0] == "const":
        return []
    if expr[0] == "dim":
        return t.A.leaves(expr[1])
    if expr[0] == "attr":
        return [a for n in t.attr_uses.get(expr[1], []) for a in t.A.leaves(n)]
    return _expr_leaves(t, expr[1]) + _expr_leaves(t, expr[2])


def _check_computed_widths(t: Tracer) -> None:
    """For every dim sized by a computed width: halve each group involved alone; where the forward would then
    compute a width other than the dim's new size, that group stays whole (and the reason names the op)."""
    for s, node, where in t.computed:
        for a in dict.fromkeys([*t.A.leaves(node), *_expr_leaves(t, s.expr)]):
            a = t.A.find(a)
            if a in t.A.fixed or t.A.size[a] < 2:
                continue
            counts = {a: t.A.size[a] // 2}
            if _new_value(t, s.expr, counts) != t.A.new_size(node, counts):
                names = [f"{m or 'model'}.{n}" for m, n in sorted(s.attrs)] + ["an input's width"] * bool(s.dims)
                t.A.fix(a, f"{where} sizes a dim by a width computed in forward from {' and '.join(names)}, "
                           f"which would not follow a removal; kept whole")


def _finish(model: nn.Module, t: Tracer, names: dict[int, list[str]], state: dict[int, Tensor],
            output_shapes: list[tuple[int, ...]]) -> TraceResult:
    _check_computed_widths(t)
    param_ids = {id(p) for p in model.parameters()}
    tensors, aliases, is_param = {}, {}, {}
    for k in state:
        key = names[k][0]
        tensors[key], aliases[key], is_param[key] = t.lay[k], names[k], k in param_ids
        if k not in t.used:
            for d in t.lay[k]:
                t.A.fix(d, "not used by the traced forward")
        owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in names[k]}
        hit = [o for o in owners if any(o == m or o.startswith(m + ".") for m in t.ignored)]
        if hit:
            for d in t.lay[k]:
                t.A.fix(d, f"in ignored module {hit[0]}")
    return TraceResult(t.A, tensors, aliases, is_param, t.macs_terms, t.module_attrs, t.attr_uses, t.heads,
                       t.barriers, output_shapes, set(t.ignored))
