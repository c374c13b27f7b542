"""How each ATen op couples the dimensions of its inputs and outputs: a closed table of rules.

Every rule receives the tracer (``t``), the op's positional and keyword arguments and its output, and
states the layout of every output dimension (``t.set``) and which input dimensions are the same space
(``t.A.unify``). Ops absent from the table and not tagged pointwise by PyTorch are *barriers*: their
outputs are new, unprunable spaces, and if one of their inputs carries a prunable channel the trace
fails with the module name (see :func:`prunekit.structured.graph.build_graph`). A new op is one
function and one ``@register_op`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .layout import Cat, Prod

if TYPE_CHECKING:
    from .trace import Tracer

Rule = Callable[[Any, tuple, dict, Any], None]
RULES: dict[str, Rule] = {}

# pointwise ops that PyTorch does not tag ``pointwise``
EXTRA_POINTWISE = {
    "floor_divide", "hardswish", "hardswish_", "type_as", "rsub", "fill_", "zero_", "bernoulli_", "copy_",
    "clone", "contiguous", "_to_copy", "to", "detach", "alias", "lift_fresh", "lift_fresh_copy", "_conj",
    "resolve_conj", "resolve_neg", "dropout", "feature_dropout", "native_dropout", "normal_", "uniform_",
    "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "requires_grad_",
    "masked_fill_", "hardtanh", "hardtanh_", "relu6", "_prelu_kernel", "silu_", "gelu_", "cumsum", "cumprod",
    "logcumsumexp", "_safe_softmax", "clamp_", "nan_to_num",
}
FACTORIES = {
    "arange", "zeros", "ones", "full", "empty", "empty_strided", "rand", "randn", "randint", "scalar_tensor",
    "linspace", "eye", "new_zeros", "new_ones", "new_empty", "new_full", "tensor", "randperm", "logspace",
    "_efficientzerotensor",
}
NO_OUTPUT = {"_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "is_same_size", "equal", "allclose",
             "_assert_async", "_assert_tensor_metadata", "record_stream", "_functional_assert_async"}
INDEXING = {"gather", "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce",
            "index_put", "index_put_", "_index_put_impl_", "masked_select", "masked_scatter", "nonzero",
            "take", "index_add", "index_add_", "index_copy", "index_fill", "bucketize", "searchsorted", "unique",
            "_unique2", "tril", "triu", "diagonal", "diag_embed", "unfold", "im2col", "col2im", "tril_", "triu_",
            "index_fill_", "masked_scatter_", "multinomial", "histc", "bincount", "put_"}
ATTENTION = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math",
             "scaled_dot_product_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_attention_math_for_mps", "_scaled_dot_product_fused_attention_overrideable"}


def register_op(*names: str) -> Callable[[Rule], Rule]:
    """Decorator filing a rule for the ATen ops ``names`` (overload packet names, e.g. ``"view"``)."""

    def deco(fn: Rule) -> Rule:
        """File ``fn`` under every name."""
        for n in names:
            RULES[n] = fn
        return fn

    return deco


def is_pointwise(func: Any) -> bool:
    """True for element-wise ops (tagged by PyTorch or in :data:`EXTRA_POINTWISE`)."""
    return torch.Tag.pointwise in func.tags or func.overloadpacket.__name__ in EXTRA_POINTWISE


def tensors_in(x: Any) -> list[Tensor]:
    """Tensors in ``x``, a tensor or a (nested) list/tuple of them."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in tensors_in(v)]
    return []


def _dim(d: int, n: int) -> int:
    return d + n if d < 0 else d


# ---------------------------------------------------------------------------------------------------
# element-wise and shape-preserving
def pointwise(t, args: tuple, kwargs: dict, out: Any) -> None:
    """Broadcasting element-wise op: equal-sized aligned dims are one space; size-1 dims broadcast."""
    ins = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
    for o in tensors_in(out):
        t.broadcast_into(o, ins)


@register_op(*FACTORIES)
def factory(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """A tensor made inside forward (``arange``, ``zeros`` ...): new spaces that may not be pruned."""
    for o in tensors_in(out):
        t.fresh(o, "tensor created inside forward")


@register_op(*INDEXING)
def indexing(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Gathers, scatters and masks move units between positions: every dim they touch stays whole."""
    for a in [*tensors_in(list(args)), *tensors_in(list(kwargs.values()))]:
        t.fix_tensor(a, "indexed by a gather/scatter/mask op")
    for o in tensors_in(out):
        t.fresh(o, "output of an indexing op")


@register_op("index", "_unsafe_index")
def index(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """``x[idx]`` with index tensors on some adjacent dims: those dims stay whole, every other dim passes
    through (a relative-position table ``table[index]`` keeps its heads dim, so the table follows its heads)."""
    x, idx = args[0], list(args[1])
    pos = [i for i, v in enumerate(idx) if v is not None]
    o = out if isinstance(out, Tensor) else None
    if o is None or not pos or pos != list(range(pos[0], pos[-1] + 1)):
        return indexing(t, args, kwargs, out)
    lay = t.dims(x)
    for i in pos:
        t.A.fix(lay[i], "indexed by a tensor")
    for v in idx:
        if isinstance(v, Tensor):
            t.fix_tensor(v, "index tensor")
    nb = o.dim() - (x.dim() - len(pos))  # broadcast index dims, in place of the (adjacent) indexed dims
    new = [*lay[:pos[0]], *[t.A.new(o.shape[pos[0] + k], "indexed") for k in range(max(nb, 0))],
           *lay[pos[-1] + 1:]]
    if nb >= 0 and len(new) == o.dim() and all(t.A.nsize(n) == s for n, s in zip(new, o.shape)):
        t.set(o, new)
    else:
        t.fresh(o, "output of an indexing op")


@register_op("flip", "roll", "sort", "topk", "argsort", "kthvalue", "median", "mode", "msort", "fliplr", "flipud")
def reorder(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Ops that reorder along some dims: those dims stay whole, the others pass through."""
    x = args[0]
    lay = list(t.dims(x))
    dims = _reorder_dims(args, kwargs, x.dim())
    for d in dims:
        t.A.fix(lay[d], "reordered by flip/roll/sort")
    for o in tensors_in(out):
        if tuple(o.shape) == tuple(x.shape):
            t.set(o, lay)
        else:
            t.set(o, [lay[i] if i not in dims else t.A.new(o.shape[i], "sorted") for i in range(o.dim())])


def _reorder_dims(args, kwargs, n: int) -> set[int]:
    dims = kwargs.get("dims", kwargs.get("dim"))
    if dims is None:
        rest = [a for a in args[1:] if isinstance(a, (int, list, tuple))]
        dims = rest[-1] if rest else list(range(n))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return {_dim(d, n) for d in dims} or set(range(n))


# ---------------------------------------------------------------------------------------------------
# shape ops
@register_op("view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "reshape_as", "_reshape_copy",
             "view_copy")
def view(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Reshape: the row-major product of the input dims equals that of the output dims."""
    x = args[0]
    if x.numel() == 0:
        t.fresh(out, "empty tensor")
        return
    new = [t.A.new(s) for s in out.shape]
    t.A.unify(Prod(tuple(t.dims(x))), Prod(tuple(new)), t.where("view"))
    t.set(out, new)


@register_op("permute")
def permute(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Permute: the dims' layouts are reordered."""
    lay = t.dims(args[0])
    t.set(out, [lay[_dim(d, len(lay))] for d in args[1]])


@register_op("transpose", "swapaxes", "swapdims")
def transpose(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Swap two dims' layouts."""
    lay = list(t.dims(args[0]))
    a, b = _dim(args[1], len(lay)), _dim(args[2], len(lay))
    lay[a], lay[b] = lay[b], lay[a]
    t.set(out, lay)


@register_op("t", "numpy_T")
def transpose2d(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """2-D transpose: the two layouts swap."""
    t.set(out, list(reversed(t.dims(args[0]))))


@register_op("unsqueeze")
def unsqueeze(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Insert a new size-1 dim."""
    lay = list(t.dims(args[0]))
    lay.insert(_dim(args[1], len(lay) + 1), t.A.new(1))
    t.set(out, lay)


@register_op("squeeze")
def squeeze(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Drop size-1 dims."""
    x, lay = args[0], t.dims(args[0])
    if len(args) > 1:
        ds = [args[1]] if isinstance(args[1], int) else list(args[1])
        drop = {_dim(d, x.dim()) for d in ds if x.shape[_dim(d, x.dim())] == 1}
    else:
        drop = {i for i, s in enumerate(x.shape) if s == 1}
    t.set(out, [l for i, l in enumerate(lay) if i not in drop])


@register_op("expand", "expand_as", "broadcast_to", "expand_copy")
def expand(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Broadcast dims (1 -> n) and new leading dims are copies, not channels: new fixed spaces."""
    x, lay = args[0], t.dims(args[0])
    lead = out.dim() - x.dim()
    res = [t.A.new(out.shape[i], "expanded") for i in range(lead)]
    for i in range(x.dim()):
        same = x.shape[i] == out.shape[lead + i]
        res.append(lay[i] if same else t.A.new(out.shape[lead + i], "expanded"))
    t.set(out, res)


@register_op("repeat")
def repeat(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Tiling: each repeated dim is ``Prod(copies, dim)``."""
    x, reps = args[0], list(args[1])
    lay = t.dims(x)
    lead = len(reps) - x.dim()
    res = [t.A.new(out.shape[i], "repeated") for i in range(lead)]
    for i in range(x.dim()):
        r = reps[lead + i]
        res.append(lay[i] if r == 1 else Prod((t.A.new(r, "repeated"), lay[i])))
    t.set(out, res)


def _take(t, x: Tensor, dim: int, start: int, length: int):
    """The layout of ``x[dim][start:start+length]``, refining ``x``'s dim into a concat."""
    n = x.shape[dim]
    mid = t.A.new(length)
    parts = [p for p in (t.A.new(start) if start else None, mid,
                         t.A.new(n - start - length) if n - start - length else None) if p is not None]
    t.A.unify(t.dims(x)[dim], Cat(tuple(parts)) if len(parts) > 1 else parts[0], t.where("slice"))
    return mid


@register_op("slice")
def slice_(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """A contiguous slice is a part of a concat of the input dim; a strided one stays whole."""
    x = args[0]
    dim = _dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), x.dim())
    start = args[2] if len(args) > 2 else kwargs.get("start")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    n = x.shape[dim]
    s = 0 if start is None else (start + n if start < 0 else start)
    s = min(max(s, 0), n)
    lay = list(t.dims(x))
    if step != 1:
        t.A.fix(lay[dim], "strided slice")
        lay[dim] = t.A.new(out.shape[dim], "strided slice")
    elif out.shape[dim] != n:
        lay[dim] = _take(t, x, dim, s, out.shape[dim])
    t.set(out, lay)


@register_op("select")
def select(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Selecting one index removes the dim (a size-1 part of it)."""
    x = args[0]
    dim = _dim(args[1], x.dim())
    idx = args[2] + x.shape[dim] if args[2] < 0 else args[2]
    lay = list(t.dims(x))
    if x.shape[dim] > 1:
        _take(t, x, dim, idx, 1)
    t.set(out, lay[:dim] + lay[dim + 1:])


@register_op("split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "unbind", "chunk",
             "tensor_split")
def split(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Split into consecutive parts: the input dim is the concat of the parts."""
    x, outs = args[0], list(out)
    if t.func_name == "unbind":
        d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    else:
        d = args[2] if len(args) > 2 else kwargs.get("dim", 0)
    dim = _dim(d, x.dim())
    squeezed = _is_unbind(x, outs)
    sizes = [1 if squeezed else o.shape[dim] for o in outs]
    lay = list(t.dims(x))
    parts = [t.A.new(s) for s in sizes]
    t.A.unify(lay[dim], Cat(tuple(parts)) if len(parts) > 1 else parts[0], t.where("split"))
    for o, p in zip(outs, parts):
        t.set(o, lay[:dim] + lay[dim + 1:] if squeezed else lay[:dim] + [p] + lay[dim + 1:])


def _is_unbind(x: Tensor, outs: list[Tensor]) -> bool:
    return bool(outs) and outs[0].dim() == x.dim() - 1


@register_op("cat", "concat", "concatenate")
def cat(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Concatenation: the output dim is the concat of the inputs' dims; the other dims are one space."""
    xs = [x for x in args[0] if not (x.dim() == 1 and x.numel() == 0)]
    dim = _dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    lays = [t.dims(x) for x in xs]
    res = list(lays[0])
    for lay in lays[1:]:
        for i in range(out.dim()):
            if i != dim:
                t.A.unify(res[i], lay[i], t.where("cat"))
    res[dim] = Cat(tuple(lay[dim] for lay in lays)) if len(lays) > 1 else lays[0][dim]
    t.set(out, res)


@register_op("stack")
def stack(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Stack: the inputs' dims are one space; the new dim is fixed."""
    xs = list(args[0])
    dim = _dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    lays = [t.dims(x) for x in xs]
    for lay in lays[1:]:
        for i in range(len(lay)):
            t.A.unify(lays[0][i], lay[i], t.where("stack"))
    res = list(lays[0])
    res.insert(dim, t.A.new(len(xs), "stacked"))
    t.set(out, res)


@register_op("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
             "replication_pad1d", "replication_pad2d", "replication_pad3d", "_pad_enum", "circular_pad")
def pad(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Zero padding along a channel dim is a concat with new fixed parts; others fix the dim."""
    x, p = args[0], list(args[1])
    lay = list(t.dims(x))
    const = t.func_name in ("constant_pad_nd", "pad")
    for k in range(len(p) // 2):
        d = x.dim() - 1 - k
        lo, hi = p[2 * k], p[2 * k + 1]
        if lo == 0 and hi == 0:
            continue
        if const and lo >= 0 and hi >= 0:
            parts = [q for q in (t.A.new(lo, "padding") if lo else None, lay[d],
                                 t.A.new(hi, "padding") if hi else None) if q is not None]
            lay[d] = Cat(tuple(parts))
        else:
            t.A.fix(lay[d], "non-constant or negative padding")
            lay[d] = t.A.new(out.shape[d], "padding")
    t.set(out, lay)


@register_op("pixel_shuffle")
def pixel_shuffle(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Pixel shuffle: input channels are ``Prod(out_channels, r, r)``."""
    x, r = args[0], args[1]
    lay = list(t.dims(x))
    c = t.A.new(out.shape[-3])
    t.A.unify(lay[-3], Prod((c, t.A.new(r, "pixel shuffle"), t.A.new(r, "pixel shuffle"))), t.where("pixel_shuffle"))
    t.set(out, lay[:-3] + [c] + [t.A.new(s, "spatial") for s in out.shape[-2:]])


@register_op("pixel_unshuffle")
def pixel_unshuffle(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Pixel unshuffle: output channels are ``Prod(in_channels, r, r)``."""
    x, r = args[0], args[1]
    lay = list(t.dims(x))
    c = Prod((lay[-3], t.A.new(r, "pixel shuffle"), t.A.new(r, "pixel shuffle")))
    t.set(out, lay[:-3] + [c] + [t.A.new(s, "spatial") for s in out.shape[-2:]])


@register_op("channel_shuffle", "native_channel_shuffle")
def channel_shuffle(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Channel shuffle (ShuffleNet): ``Prod(groups, per_group)`` becomes ``Prod(per_group, groups)``."""
    x, g = args[0], args[1]
    lay = list(t.dims(x))
    ga, ca = t.A.new(g), t.A.new(x.shape[1] // g)
    t.A.unify(lay[1], Prod((ga, ca)), t.where("channel_shuffle"))
    t.set(out, [lay[0], Prod((ca, ga)), *lay[2:]])


# ---------------------------------------------------------------------------------------------------
# reductions and normalizations
REDUCE_EXACT = {"sum", "nansum", "any", "all", "count_nonzero"}


@register_op("sum", "nansum", "mean", "nanmean", "amax", "amin", "max", "min", "var", "std", "var_mean",
             "std_mean", "prod", "logsumexp", "linalg_vector_norm", "norm", "any", "all", "argmax", "argmin",
             "count_nonzero", "aminmax")
def reduce(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Reduced dims vanish (or become size 1); a mean, max or variance over a channel dim mixes units."""
    x = args[0]
    if not isinstance(x, Tensor):
        return
    lay = t.dims(x)
    dims = _reduce_dims(t.func_name, args, kwargs, x.dim())
    keep = kwargs.get("keepdim", next((a for a in args[1:] if isinstance(a, bool)), False))
    for d in dims:
        if t.func_name not in REDUCE_EXACT:
            t.A.mark_inexact(lay[d], f"{t.func_name} over this dim in {t.module or 'the model'}")
    for o in tensors_in(out):
        if keep and o.dim() == x.dim():
            t.set(o, [t.A.new(1) if i in dims else lay[i] for i in range(x.dim())])
        elif o.dim() == x.dim() - len(dims):
            t.set(o, [lay[i] for i in range(x.dim()) if i not in dims])
        else:
            t.fresh(o, "reduction output")


def _reduce_dims(name: str, args: tuple, kwargs: dict, n: int) -> set[int]:
    if name in ("linalg_vector_norm", "norm"):
        d = kwargs.get("dim", args[2] if len(args) > 2 else None)
    else:
        d = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
    if isinstance(d, Tensor):  # max(x, other) etc. are pointwise, handled by callers' shapes
        d = None
    if d is None or (isinstance(d, (list, tuple)) and len(d) == 0):
        return set(range(n))
    ds = [d] if isinstance(d, int) else list(d)
    return {_dim(v, n) for v in ds}


@register_op("_softmax", "softmax", "_log_softmax", "log_softmax", "special_softmax")
def softmax(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Softmax: shape-preserving; its dim is mixed by the normalization (inexact)."""
    x = args[0]
    lay = t.dims(x)
    t.A.mark_inexact(lay[_dim(args[1], x.dim())], f"softmax in {t.module or 'the model'}")
    t.set(out, list(lay))


@register_op("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
             "_native_batch_norm_legit_functional", "batch_norm", "instance_norm", "cudnn_batch_norm",
             "miopen_batch_norm", "_batch_norm_impl_index", "native_batch_norm_legit")
def batch_norm(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """BatchNorm: per-channel statistics and affine, all on dim 1 (exact under removal)."""
    x = args[0]
    lay = t.dims(x)
    for p in args[1:5]:
        if isinstance(p, Tensor) and p.dim() == 1 and p.numel() == x.shape[1]:
            t.A.unify(t.dims(p)[0], lay[1], t.where("batch_norm"))
    if "instance" in t.func_name:
        t.A.mark_inexact(lay[1], "instance norm")
    outs = tensors_in(out)
    t.set(outs[0], list(lay))
    for o in outs[1:]:
        if o.dim() == 1 and o.numel() == x.shape[1]:
            t.set(o, [lay[1]])
    t.record_attr("num_features", lay[1])


@register_op("native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm")
def layer_norm(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """LayerNorm / RMSNorm over the last dims: statistics mix those units (inexact under removal)."""
    x, shape = args[0], list(args[1])
    lay = t.dims(x)
    k = len(shape)
    for p in args[2:4]:
        if isinstance(p, Tensor) and tuple(p.shape) == tuple(shape):
            for i, pl in enumerate(t.dims(p)):
                t.A.unify(pl, lay[x.dim() - k + i], t.where("layer_norm"))
    for d in lay[x.dim() - k:]:
        t.A.mark_inexact(d, f"normalized by {t.func_name} in {t.module or 'the model'}")
    outs = tensors_in(out)
    t.set(outs[0], list(lay))
    for o in outs[1:]:
        t.fresh(o, "norm statistics")
    t.record_attr("normalized_shape", list(lay[x.dim() - k:]))


@register_op("native_group_norm", "group_norm")
def group_norm(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """GroupNorm: channels are ``Prod(groups, per_group)``; whole groups are exact to remove."""
    x = args[0]
    g = args[6] if t.func_name == "native_group_norm" else args[1]
    lay = t.dims(x)
    ga, ca = t.A.new(g), t.A.new(x.shape[1] // g)
    t.A.unify(lay[1], Prod((ga, ca)), t.where("group_norm"))
    t.A.mark_inexact(ca, f"within a GroupNorm group in {t.module or 'the model'}")
    params = args[1:3] if t.func_name == "native_group_norm" else args[2:4]
    for p in params:
        if isinstance(p, Tensor) and p.dim() == 1:
            t.A.unify(t.dims(p)[0], lay[1], t.where("group_norm"))
    outs = tensors_in(out)
    t.set(outs[0], list(lay))
    for o in outs[1:]:
        t.fresh(o, "norm statistics")
    t.record_attr("num_groups", ga)
    t.record_attr("num_channels", lay[1])


# ---------------------------------------------------------------------------------------------------
# layers with weights
@register_op("convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
             "conv_transpose3d", "mkldnn_convolution", "_convolution_mode", "conv_tbc", "cudnn_convolution",
             "slow_conv2d_forward", "_slow_conv2d_forward", "thnn_conv2d")
def convolution(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Convolution, grouped and transposed: channels are ``Prod(groups, per_group)`` on both sides."""
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    transposed = bool(args[6]) if t.func_name in ("convolution", "_convolution") and len(args) > 6 else (
        "transpose" in t.func_name)
    groups = _conv_groups(t.func_name, args, kwargs)
    xl, wl = t.dims(x), t.dims(w)
    for d in wl[2:]:
        t.A.fix(d, "convolution kernel")
    cin_w, cout_w = (wl[0], wl[1]) if transposed else (wl[1], wl[0])  # (per-group in, out) layouts
    if groups == 1:
        t.A.unify(xl[1], cin_w, t.where("conv"))
        out_c = cout_w
    else:
        g = t.A.new(groups)
        if transposed:
            t.A.unify(xl[1], cin_w, t.where("conv"))
            t.A.unify(cin_w, Prod((g, t.A.new(x.shape[1] // groups))), t.where("conv"))
            out_c = Prod((g, cout_w))
        else:
            t.A.unify(xl[1], Prod((g, cin_w)), t.where("conv"))
            t.A.unify(cout_w, Prod((g, t.A.new(w.shape[0] // groups))), t.where("conv"))
            out_c = cout_w
        t.record_attr("groups", g)
    if isinstance(b, Tensor):
        t.A.unify(t.dims(b)[0], out_c, t.where("conv bias"))
    lay = [xl[0], out_c] + [t.A.new(s, "spatial") for s in out.shape[2:]]
    t.set(out, lay)
    t.macs([*(xl if transposed else lay), *wl[1:]])


def _conv_groups(name: str, args: tuple, kwargs: dict) -> int:
    if name in ("convolution", "_convolution"):
        return int(args[8]) if len(args) > 8 else 1
    if name.startswith("conv") and len(args) > 6:
        return int(args[-1]) if isinstance(args[-1], int) else 1
    return int(kwargs.get("groups", 1))


def _matmul(t, a: Tensor, b: Tensor, out: Tensor, batch: bool) -> None:
    al, bl = t.dims(a), t.dims(b)
    t.A.unify(al[-1], bl[-2], t.where("matmul"))
    if batch:
        for i in range(a.dim() - 2):
            t.A.unify(al[i], bl[i], t.where("bmm"))
    lay = [*al[:-1], bl[-1]]
    t.set(out, lay)
    t.macs([*lay, al[-1]])
    if not (t.is_param_like(a) or t.is_param_like(b)):  # attention-style product of two activations
        for lay_ in (al[-2:], bl[-2:]):
            for d in lay_:
                t.A.fix(d, f"attention product of activations in {t.module or 'the model'}")
        if batch:  # heads ride in the batch dims (eager attention): count the non-input leaves as heads
            heads = [lf for d in al[:-2] for lf in t.A.leaves(d) if t.A.fixed.get(lf) != "model input"]
            kv = [lf for d in bl[:-2] for lf in t.A.leaves(d) if t.A.fixed.get(lf) != "model input"]
            if heads and kv:
                t.record_heads(Prod(tuple(heads)), Prod(tuple(kv)))


@register_op("mm", "bmm", "matmul")
def mm(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Matrix product (batched or not): the contracted dims are one space."""
    _matmul(t, args[0], args[1], out, args[0].dim() > 2)


@register_op("addmm", "baddbmm", "_addmm_activation", "addbmm")
def addmm(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Bias plus matrix product (a Linear layer after decomposition)."""
    _matmul(t, args[1], args[2], out, args[1].dim() > 2)
    t.broadcast_into(out, [args[0]])


@register_op("linear")
def linear(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """``F.linear`` when it reaches dispatch undecomposed."""
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    xl, wl = t.dims(x), t.dims(w)
    t.A.unify(xl[-1], wl[1], t.where("linear"))
    lay = [*xl[:-1], wl[0]]
    t.set(out, lay)
    t.macs([*lay, xl[-1]])
    if isinstance(b, Tensor):
        t.broadcast_into(out, [b])


@register_op("embedding", "_embedding_bag", "embedding_bag")
def embedding(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Embedding rows are indexed by token ids (stay whole); the embedding dim is a channel."""
    w, idx = args[0], args[1]
    wl = t.dims(w)
    t.A.fix(wl[0], "embedding rows (vocabulary) are indexed")
    outs = tensors_in(out)
    if t.func_name == "embedding":
        t.set(outs[0], [*t.dims(idx), wl[1]])
    else:
        t.set(outs[0], [t.A.new(outs[0].shape[0], "bags"), wl[1]])
        for o in outs[1:]:
            t.fresh(o, "embedding bag indices")


@register_op("_prelu_kernel", "prelu")
def prelu(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """PReLU: a per-channel slope couples with dim 1."""
    x, w = args[0], args[1]
    if w.numel() > 1:
        t.A.unify(t.dims(w)[0], t.dims(x)[1], t.where("prelu"))
    t.set(out, list(t.dims(x)))


@register_op(*ATTENTION)
def attention(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Scaled dot-product attention (Vaswani et al. 2017, Eq. 1): heads are channels; with grouped-query
    attention the query heads are ``Prod(kv_heads, queries_per_kv)`` so removal keeps the ratio.
    Head dims (``E``) and sequence dims stay whole."""
    q, k, v = args[0], args[1], args[2]
    ql, kl, vl = t.dims(q), t.dims(k), t.dims(v)
    for i in range(q.dim() - 3):
        t.A.unify(ql[i], kl[i], t.where("attention"))
        t.A.unify(kl[i], vl[i], t.where("attention"))
    hq, hk = q.shape[-3], k.shape[-3]
    t.A.unify(kl[-3], vl[-3], t.where("attention"))
    if hq == hk:
        t.A.unify(ql[-3], kl[-3], t.where("attention"))
    elif hk and hq % hk == 0:
        t.A.unify(ql[-3], Prod((kl[-3], t.A.new(hq // hk, "queries per kv head"))), t.where("attention"))
    else:
        t.A.fix(ql[-3], "query and key head counts do not divide")
    t.A.unify(kl[-2], vl[-2], t.where("attention"))
    for d in (ql[-1], kl[-1], vl[-1]):
        t.A.fix(d, "attention head dimension")
    outs = tensors_in(out)
    t.set(outs[0], [*ql[:-1], vl[-1]])
    for o in outs[1:]:
        t.fresh(o, "attention statistics")
    mask = kwargs.get("attn_mask", kwargs.get("attn_bias"))
    if mask is None and t.func_name in ("_scaled_dot_product_attention_math", "scaled_dot_product_attention"):
        mask = args[3] if len(args) > 3 and isinstance(args[3], Tensor) else None
    if isinstance(mask, Tensor):
        _unify_mask(t, mask, [*ql[:-1], kl[-2]], [*q.shape[:-1], k.shape[-2]])
    t.macs([*ql[:-1], kl[-2], ql[-1]])
    t.macs([*ql[:-1], kl[-2], vl[-1]])
    t.record_heads(ql[-3], kl[-3])


def _unify_mask(t, mask: Tensor, lay: list, shape: list[int]) -> None:
    ml = t.dims(mask)
    off = len(shape) - mask.dim()
    for i in range(mask.dim()):
        if off + i >= 0 and mask.shape[i] == shape[off + i] and mask.shape[i] > 1:
            t.A.unify(ml[i], lay[off + i], t.where("attention mask"))


POOLS = ("pool", "upsample", "interpolate", "_upsample", "grid_sampler", "adaptive")


def spatial(t: Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """Pooling and resampling: batch and channel dims pass through; spatial dims are new."""
    x = args[0]
    k = 3 if "3d" in t.func_name else (1 if "1d" in t.func_name else 2)
    lay = t.dims(x)
    lead = x.dim() - k
    for o in tensors_in(out):
        t.set(o, [*lay[:lead], *[t.A.new(s, "spatial") for s in o.shape[lead:]]])
