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
    """An int module attribute that remembers where it lives while the model is traced."""

    src: tuple[str, str]

    def __new__(cls, v: int, src: tuple[str, str]) -> _SourcedInt:
        obj = super().__new__(cls, v)
        obj.src = src
        return obj


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


class _SizeSources(TorchFunctionMode):
    """Records which sourced int attributes sized which output dims of each torch function call."""

    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        self.t = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        srcs = [v for v in _flatten((args, kwargs)) if isinstance(v, _SourcedInt)]
        if srcs:
            for o in tensors_in(out if isinstance(out, (list, tuple)) else [out]):
                lay = self.t.lay.get(id(o))
                if lay is None:
                    continue
                for s in srcs:
                    nodes = [lay[i] for i, n in enumerate(o.shape) if n == int(s) and n > 1]
                    if nodes:
                        self.t.attr_uses.setdefault(s.src, []).extend(nodes)
        return out


def _flatten(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [v for y in x for v in _flatten(y)]
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
    swapped: list[tuple[nn.Module, str, int]] = []
    for path, m in model.named_modules():
        for k, v in list(vars(m).items()):
            if type(v) is int:
                swapped.append((m, k, v))
                m.__dict__[k] = _SourcedInt(v, (path, k))

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


def _finish(model: nn.Module, t: Tracer, names: dict[int, list[str]], state: dict[int, Tensor],
            output_shapes: list[tuple[int, ...]]) -> TraceResult:
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
