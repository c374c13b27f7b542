"""SliceGPT: rotate the residual stream of a pre-norm decoder LLM onto its principal directions, then slice it.

Ashkboos, Croci, Nascimento, Hoefler, Hensman, "SliceGPT: Compress Large Language Models by Deleting Rows
and Columns", ICLR 2024 (arXiv:2401.15024). Notation: a signal ``X`` is ``(tokens, D)``, rows are tokens.
The equations are the paper's, numbered (1)-(5) here in the order of its Sec. 3.

1. *Computational invariance* (Sec. 3.1): with a scale-free ``RMSNorm(x) = x / ||x||`` (here with the
   model's eps: ``x / sqrt(||x||^2 / D + eps)``) and an orthogonal ``Q``: (1) ``RMSNorm(X Q) Q^T = RMSNorm(X)``.
   A norm's scale ``diag(alpha)`` (and LayerNorm's shift ``beta``) are folded into the next linear layer
   first: ``W_in <- diag(alpha) W_in``, ``b_in <- b_in + beta W_in``.
2. *LayerNorm -> RMSNorm* (Sec. 3.2): (2) ``LayerNorm(X) = RMSNorm(X M) diag(alpha) sqrt(D) + 1 beta^T``
   with ``M = I - (1/D) 1 1^T``. ``M`` is folded into every matrix *writing* the residual stream
   (embeddings, attention output, MLP output: ``W_out <- W_out M``, ``b_out <- b_out M``), so the stream has
   zero mean and the LayerNorm becomes a scale-free RMSNorm (the ``sqrt(D)`` is the eps-form's ``1/D``).
3. *A transformation per block* (Sec. 3.3): at every norm input ``l`` (before each attention and MLP, and
   the final norm) (3) ``C_l = sum_i X_{l,i}^T X_{l,i}`` over the calibration sequences ``i``; ``Q_l`` holds
   its eigenvectors by decreasing eigenvalue. Readers of the stream get ``W_in <- Q_l^T W_in``, writers
   ``W_out <- W_out Q_l``, embeddings ``W_embd <- W_embd Q_0``, and the residual from norm input ``l`` to
   ``l + 1`` carries the shortcut (4) ``Q_l^T Q_{l+1}``. Without slicing the model computes the same function.
4. *Slicing* (Sec. 3.4): keep the first ``D' = (1 - fraction) D`` principal directions with the deletion
   matrix ``D_del = [I_{D'}; 0]``: (5) ``W_in <- D_del^T Q^T W_in``, ``W_out <- W_out Q D_del``, shortcuts
   ``D_del^T Q_l^T Q_{l+1} D_del``. The stream error is the dropped variance (the eigenvalues left out).
   As in the paper each ``Q_l`` is computed from the signal of the model already sliced before ``l``.

In PyTorch weights are ``(out, in)`` (``y = x W^T``), so a reader's weight becomes ``W Q`` and a writer's
``Q^T W``. The norms after slicing still divide by the dense width ``D`` (as the paper's code does), so the
kept channels are normalized exactly as before. Tied ``lm_head`` / embeddings are untied (the head reads
the stream at the last norm, the embedding writes the first one: different rotations); the report says so.

Supported: LLaMA-family (``model_type`` llama, mistral, qwen2, qwen3; RMSNorm) and OPT (LayerNorm,
``do_layer_norm_before=True``, ``word_embed_proj_dim == hidden_size``) causal LMs of transformers.
The sliced model keeps its class but its blocks carry shortcut matrices and scale-free norms, which plain
``from_pretrained`` cannot build: :func:`save_sliced` writes a folder (kind ``sliced``) that
:func:`load_sliced` rebuilds (dense ``config.json`` + ``sliced.safetensors`` + ``manifest.json``).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import check_sparsity
from .remove import Undo

log = logging.getLogger(__name__)

KIND = "sliced"
WEIGHTS = "sliced.safetensors"
SHORTCUTS = ("attn_shortcut", "mlp_shortcut")


# ------------------------------------------------------------------------------------------ architectures

def _llama_mlp(layer: nn.Module, h: Tensor) -> Tensor:
    return layer.mlp(h)


def _opt_mlp(layer: nn.Module, h: Tensor) -> Tensor:
    h = layer.fc2(layer.activation_fn(layer.fc1(h)))
    return nn.functional.dropout(h, p=layer.dropout, training=layer.training)


def _no_post(_layer: nn.Module, a: Tensor) -> Tensor:
    return a


def _opt_attn_out(layer: nn.Module, a: Tensor) -> Tensor:
    return nn.functional.dropout(a, p=layer.dropout, training=layer.training)


@dataclasses.dataclass(frozen=True)
class Family:
    """Where a pre-norm decoder family keeps its stream readers, writers and norms (module paths)."""

    name: str
    layers: str  # the ModuleList of decoder blocks
    embeddings: tuple[str, ...]  # modules whose outputs sum to the stream's start
    final_norm: str
    attn_norm: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_norm: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    layernorm: bool  # LayerNorm (mean subtraction folded into the writers) rather than RMSNorm
    mlp: Callable[[nn.Module, Tensor], Tensor]
    attn_post: Callable[[nn.Module, Tensor], Tensor] = _no_post  # dropout of the attention output (OPT)
    attn_kwargs_dropped: tuple[str, ...] = ()  # layer kwargs the block does not pass on to its attention
    head: str = "lm_head"


LLAMA = Family("llama", "model.layers", ("model.embed_tokens",), "model.norm", "input_layernorm",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj",
               "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", False, _llama_mlp)
OPT = Family("opt", "model.decoder.layers", ("model.decoder.embed_tokens", "model.decoder.embed_positions"),
             "model.decoder.final_layer_norm", "self_attn_layer_norm",
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj", "final_layer_norm",
             ("fc1",), "fc2", True, _opt_mlp, _opt_attn_out, ("use_cache",))
MODEL_TYPES = {"llama": LLAMA, "mistral": LLAMA, "qwen2": LLAMA, "qwen3": LLAMA, "opt": OPT}


def family_of(model: nn.Module) -> Family:
    """The :class:`Family` of a supported causal LM; ``ValueError`` naming ``model`` and the accepted ones."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    accepted = (f"accepted: transformers causal LMs with config.model_type in {sorted(MODEL_TYPES)} "
                "(pre-norm blocks; OPT with do_layer_norm_before=True and word_embed_proj_dim == hidden_size)")
    if mtype not in MODEL_TYPES or not isinstance(getattr(model, "lm_head", None), nn.Linear):
        raise ValueError(f"model: SliceGPT does not support {type(model).__name__} (model_type {mtype!r}); {accepted}")
    fam = MODEL_TYPES[mtype]
    if fam is OPT:
        if not cfg.do_layer_norm_before or getattr(cfg, "_remove_final_layer_norm", False):
            raise ValueError(f"model: OPT with post-norm blocks (do_layer_norm_before=False, e.g. opt-350m) is not "
                             f"supported: its norms sit on the residual stream itself; {accepted}")
        if cfg.word_embed_proj_dim != cfg.hidden_size:
            raise ValueError(f"model: OPT with word_embed_proj_dim={cfg.word_embed_proj_dim} != hidden_size="
                             f"{cfg.hidden_size} (project_in/out) is not supported; {accepted}")
    for path in (fam.layers, fam.final_norm, *fam.embeddings):
        _get(model, path, f"model: {type(model).__name__} lacks module {path!r}; {accepted}")
    for i in range(len(model.get_submodule(fam.layers))):
        for sub in (fam.attn_norm, fam.mlp_norm, *fam.attn_in, fam.attn_out, *fam.mlp_in, fam.mlp_out):
            _get(model, f"{fam.layers}.{i}.{sub}", f"model: block {i} lacks {sub!r} (not a standard "
                 f"{fam.name}-family block: MoE or fused projections?); {accepted}")
    return fam


def _get(model: nn.Module, path: str, error: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(error) from None


@dataclasses.dataclass(frozen=True)
class Point:
    """One place where the residual stream is read: a norm, the linears after it, the writers into it."""

    norm: str
    readers: tuple[str, ...]
    writers: tuple[str, ...]
    shortcut: tuple[str, str] | None  # (block path, attribute) of the residual that arrives here


def points(model: nn.Module, fam: Family) -> list[Point]:
    """The ``2 L + 1`` norm inputs in forward order: each block's attention and MLP norm, then the final norm."""
    n = len(model.get_submodule(fam.layers))
    out = []
    for i in range(n):
        b = f"{fam.layers}.{i}"
        prev = (f"{fam.layers}.{i - 1}", "mlp_shortcut") if i else None
        out.append(Point(f"{b}.{fam.attn_norm}", tuple(f"{b}.{r}" for r in fam.attn_in),
                         (f"{fam.layers}.{i - 1}.{fam.mlp_out}",) if i else fam.embeddings, prev))
        out.append(Point(f"{b}.{fam.mlp_norm}", tuple(f"{b}.{r}" for r in fam.mlp_in), (f"{b}.{fam.attn_out}",),
                         (b, "attn_shortcut")))
    last = (f"{fam.layers}.{n - 1}", "mlp_shortcut") if n else None
    out.append(Point(fam.final_norm, (fam.head,), (f"{fam.layers}.{n - 1}.{fam.mlp_out}",) if n else fam.embeddings,
                     last))
    return out


# ------------------------------------------------------------------------------------------ modules

class RMSNorm(nn.Module):
    """Scale-free RMSNorm over a fixed width ``dim``: ``x / sqrt(||x||^2 / dim + eps)`` (SliceGPT Sec. 3.1).

    ``dim`` stays the dense width after slicing, so the kept channels are scaled as the dense norm scaled them.
    """

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim, self.eps = int(dim), float(eps)

    def forward(self, x: Tensor) -> Tensor:
        h = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return (h * torch.rsqrt(h.pow(2).sum(-1, keepdim=True) / self.dim + self.eps)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class SlicedBlock(nn.Module):
    """Forward of a pre-norm block whose two residuals carry shortcut matrices (SliceGPT Sec. 3.3):
    ``z = x S_attn + Attn(norm(x))``, ``y = z S_mlp + MLP(norm(z))`` (a missing ``S`` is the identity).

    Mixed in front of the transformers block class (``SlicedLlamaDecoderLayer`` ...), so parameter names stay."""

    slice_family: str = ""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        fam = MODEL_TYPES[self.slice_family]
        kwargs = _keywords(type(self), args, kwargs)
        attn_kw = {k: v for k, v in kwargs.items() if k not in fam.attn_kwargs_dropped}
        x = hidden_states
        a = self.self_attn(hidden_states=getattr(self, fam.attn_norm)(x), **attn_kw)[0]
        z = _through(x, self._parameters.get("attn_shortcut")) + fam.attn_post(self, a)
        m = fam.mlp(self, getattr(self, fam.mlp_norm)(z))
        return _through(z, self._parameters.get("mlp_shortcut")) + m


def _through(x: Tensor, s: Tensor | None) -> Tensor:
    return x if s is None else x @ s.to(x.dtype)


def _keywords(cls: type, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional arguments after ``hidden_states`` named by the transformers block's own signature."""
    if not args:
        return kwargs
    base = next(c for c in cls.__mro__[1:] if c is not SlicedBlock and "forward" in vars(c))
    names = [p for p in inspect.signature(base.forward).parameters if p not in ("self", "hidden_states")]
    return {**dict(zip(names, args)), **kwargs}


_CLASSES: dict[type, type] = {}


def sliced_class(base: type) -> type:
    """``Sliced<Base>``: the transformers block class with :class:`SlicedBlock`'s forward (cached)."""
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Sliced{base.__name__}", (SlicedBlock, base), {"__module__": __name__})
    return _CLASSES[base]


# ------------------------------------------------------------------------------------------ journaled edits

class _Journal(Undo):
    """:class:`Undo` plus class swaps, so a failure leaves the model exactly as it was."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: list[tuple[nn.Module, type]] = []

    def swap_class(self, module: nn.Module, cls: type) -> None:
        self._classes.append((module, type(module)))
        module.__class__ = cls

    def rollback(self) -> None:
        super().rollback()
        for module, cls in reversed(self._classes):
            module.__class__ = cls
        self._classes.clear()


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, name = path.rpartition(".")
    return (model.get_submodule(head) if head else model), name


def _set_param(module: nn.Module, name: str, value: Tensor, j: _Journal) -> None:
    """Replace parameter ``name`` by a new one (never in place) and keep the width attributes true."""
    old = module._parameters.get(name)
    j.set(module._parameters, name, nn.Parameter(value.detach().contiguous(),
                                                 requires_grad=True if old is None else old.requires_grad))
    if name != "weight":
        return
    if isinstance(module, nn.Linear):
        j.set(module.__dict__, "out_features", value.shape[0])
        j.set(module.__dict__, "in_features", value.shape[1])
    elif isinstance(module, nn.Embedding):
        j.set(module.__dict__, "embedding_dim", value.shape[1])


def _set_module(model: nn.Module, path: str, new: nn.Module, j: _Journal) -> None:
    parent, name = _parent(model, path)
    j.set(parent._modules, name, new)


# ------------------------------------------------------------------------------------------ (a) fold the norms

def _norm_eps(norm: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon"):
        if isinstance(getattr(norm, attr, None), (int, float)):
            return float(getattr(norm, attr))
    raise ValueError(f"norm {type(norm).__name__} has no eps / variance_epsilon attribute")


def _untie(model: nn.Module, fam: Family, j: _Journal) -> bool:
    """Give ``lm_head`` its own weight if it shares the input embedding's; True if it did."""
    head, emb = model.get_submodule(fam.head), model.get_submodule(fam.embeddings[0])
    if head.weight is not emb.weight and head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    _set_param(head, "weight", head.weight.detach().clone(), j)
    if getattr(model.config, "tie_word_embeddings", False):
        j.set_attr(model.config, "tie_word_embeddings", False)
    log.warning("SliceGPT: lm_head was tied to the input embeddings; untied (the head reads the last norm's "
                "rotation, the embeddings write the first): %d more parameters", head.weight.numel())
    return True


def _center_writers(model: nn.Module, fam: Family, j: _Journal) -> None:
    """Fold LayerNorm's mean subtraction ``M = I - 1 1^T / D`` into every writer (SliceGPT Sec. 3.2, (2))."""
    n = len(model.get_submodule(fam.layers))
    for path in fam.embeddings:
        e = model.get_submodule(path)
        w = e.weight.detach()  # (rows, D)
        _set_param(e, "weight", w - w.mean(-1, keepdim=True), j)
    for i in range(n):
        for sub in (fam.attn_out, fam.mlp_out):
            lin = model.get_submodule(f"{fam.layers}.{i}.{sub}")
            w = lin.weight.detach()  # (D, h): output rows
            _set_param(lin, "weight", w - w.mean(0, keepdim=True), j)
            if lin.bias is not None:
                b = lin.bias.detach()
                _set_param(lin, "bias", b - b.mean(), j)


def _fold_point(model: nn.Module, pt: Point, j: _Journal) -> None:
    """``W_in <- W_in diag(alpha)``, ``b_in <- b_in + W_in beta``; the norm becomes a scale-free RMSNorm."""
    norm = model.get_submodule(pt.norm)
    width = next(t.shape[-1] for t in (getattr(norm, "weight", None), model.get_submodule(pt.readers[0]).weight)
                 if isinstance(t, Tensor))
    alpha, beta = getattr(norm, "weight", None), getattr(norm, "bias", None)
    for r in pt.readers:
        lin = model.get_submodule(r)
        w = lin.weight.detach()  # (out, D)
        if isinstance(beta, Tensor):  # a reader without a bias gets one (OPT's lm_head), zero or not
            shift = w.double() @ beta.detach().double()  # (out,)
            b = shift if lin.bias is None else lin.bias.detach().double() + shift
            _set_param(lin, "bias", b.to(w.dtype), j)
        if isinstance(alpha, Tensor):
            _set_param(lin, "weight", (w.double() * alpha.detach().double()).to(w.dtype), j)
    _set_module(model, pt.norm, RMSNorm(width, _norm_eps(norm)), j)


def _fold(model: nn.Module, fam: Family, j: _Journal) -> bool:
    untied = _untie(model, fam, j)
    if fam.layernorm:
        _center_writers(model, fam, j)
    for pt in points(model, fam):
        if not isinstance(model.get_submodule(pt.norm), RMSNorm):
            _fold_point(model, pt, j)
    return untied


def fold_norms_(model: nn.Module) -> dict[str, Any]:
    """Fold every residual norm's scale (and LayerNorm's shift and mean subtraction) into the adjacent linears.

    The model then computes the same function with scale-free :class:`RMSNorm` s (SliceGPT Sec. 3.1-3.2);
    returns ``{"family", "untied_lm_head", "norms"}``. On any error the model is left as it was.
    """
    fam = family_of(model)
    j = _Journal()
    try:
        with torch.no_grad():
            untied = _fold(model, fam, j)
    except BaseException:
        j.rollback()
        raise
    return {"family": fam.name, "untied_lm_head": untied, "norms": len(points(model, fam))}


# ------------------------------------------------------------------------------------------ (b, c) rotate, slice

@dataclasses.dataclass
class SliceReport:
    """What :func:`slice_` did: widths, parameters, kept variance per norm input, calibration, time."""

    family: str
    fraction: float
    hidden_before: int
    hidden_after: int
    params_before: int
    params_after: int
    shortcuts: int
    untied_lm_head: bool
    calibration_tokens: int
    kept_variance: dict[str, float]  # norm input -> fraction of sum x^T x eigenvalues kept
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceReport:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward pass is not needed."""


def _signals(model: nn.Module, paths: list[str], ids: Tensor, batch_size: int, stop: bool = True
             ) -> dict[str, Tensor]:
    """``C = sum_i X_i^T X_i`` (float64 ``(D, D)``) of the input of each module in ``paths`` over the calibration
    ids; with ``stop`` the forward pass ends at the last of them."""
    acc: dict[str, Tensor] = {}  # running sums, one addition per batch
    seen = dict.fromkeys(paths, 0)

    def hook(path: str) -> Callable[[nn.Module, tuple], None]:
        def add(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])  # (tokens, D)
            acc[path] = x.T @ x + acc[path] if path in acc else x.T @ x
            seen[path] += 1
            if stop and path == paths[-1]:
                raise _Stop
        return add

    handles = [model.get_submodule(p).register_forward_pre_hook(hook(p)) for p in paths]
    try:
        for batch in ids.split(batch_size):
            try:
                model(input_ids=batch.to(_device(model)), use_cache=False)
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
    missed = [p for p, n in seen.items() if n != math.ceil(ids.shape[0] / batch_size)]
    if missed:
        raise RuntimeError(f"SliceGPT: the forward pass never reached {missed[0]!r}")
    return acc


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _principal(c: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (decreasing, clamped at 0) and eigenvectors ``Q`` (columns) of a symmetric ``C``."""
    vals, vecs = torch.linalg.eigh(c)
    order = torch.argsort(vals, descending=True)
    return vals[order].clamp_min(0), vecs[:, order]


def _rotate_readers(model: nn.Module, pt: Point, q: Tensor, j: _Journal) -> None:
    """``W_in <- W_in Q D_del``: every linear reading the stream at ``pt`` reads the kept directions."""
    for r in pt.readers:
        lin = model.get_submodule(r)
        w = lin.weight.detach()  # (out, D)
        _set_param(lin, "weight", (w.double() @ q.to(w.device)).to(w.dtype), j)  # (out, D')


def _rotate_writers(model: nn.Module, pt: Point, q: Tensor, j: _Journal) -> None:
    """Writers into ``pt``: ``W_embd <- W_embd Q D_del`` (rows, D'), ``W_out <- D_del^T Q^T W_out`` (D', h)."""
    for path in pt.writers:
        m = model.get_submodule(path)
        w = m.weight.detach()
        qd = q.to(w.device)
        if isinstance(m, nn.Embedding):
            _set_param(m, "weight", (w.double() @ qd).to(w.dtype), j)
            continue
        _set_param(m, "weight", (qd.T @ w.double()).to(w.dtype), j)
        if m.bias is not None:
            _set_param(m, "bias", (m.bias.detach().double() @ qd).to(w.dtype), j)


def _set_shortcut(model: nn.Module, where: tuple[str, str] | None, s: Tensor, j: _Journal) -> None:
    if where is None:
        return
    block = model.get_submodule(where[0])
    dtype = next(p.dtype for p in block.parameters() if p.is_floating_point())
    _set_param(block, where[1], s.to(dtype), j)


def _install_blocks(model: nn.Module, fam: Family, j: _Journal) -> None:
    for block in model.get_submodule(fam.layers):
        if not isinstance(block, SlicedBlock):
            j.swap_class(block, sliced_class(type(block)))
        j.set(block.__dict__, "slice_family", model.config.model_type)


def _kept_width(d: int, fraction: float, round_to: int) -> int:
    k = int(round((1.0 - fraction) * d))
    if round_to > 1:
        k = max(round_to, int(round(k / round_to)) * round_to)
    return max(1, min(d, k))


def _check_ids(ids: Any, model: nn.Module) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.numel() == 0 or ids.is_floating_point():
        got = f"{type(ids).__name__} {tuple(ids.shape)} {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"calibration_ids must be a non-empty integer tensor (samples, seq_len) of token ids, "
                         f"got {got}")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"calibration_ids must be token ids in [0, {vocab}), got values in [{int(ids.min())}, "
                         f"{int(ids.max())}]")
    return ids.long()


def _check_args(fraction: Any, batch_size: Any, round_to: Any) -> float:
    frac = check_sparsity(fraction, "fraction")  # in [0, 1)
    for name, v in (("batch_size", batch_size), ("round_to", round_to)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return float(frac)  # type: ignore[arg-type]


def slice_(model: nn.Module, calibration_ids: Tensor, fraction: float, *, batch_size: int = 8,
           round_to: int = 1, shortcuts: bool = True) -> SliceReport:
    """SliceGPT (Ashkboos et al. 2024) in place: fold the norms, rotate every block onto the principal
    directions of its calibration signal and keep ``(1 - fraction)`` of the hidden width (module docstring).

    ``calibration_ids``: ``(samples, seq_len)`` token ids, run ``batch_size`` samples at a time.
    ``fraction`` in [0, 1) of the hidden width removed (0: rotation only, the same function); the kept
    width is rounded to a multiple of ``round_to``. ``shortcuts=False``: one rotation for the whole stream
    (the eigenvectors of ``sum_l C_l``, the single-``Q`` form of Sec. 3.1), no shortcut matrices, so a
    LLaMA-family model saves as a plain transformers folder. On any error the model is left as it was.
    """
    frac = _check_args(fraction, batch_size, round_to)
    if not isinstance(shortcuts, bool):
        raise ValueError(f"shortcuts must be True (a rotation per norm input) or False (one rotation), "
                         f"got {shortcuts!r}")
    fam = family_of(model)
    ids = _check_ids(calibration_ids, model)
    if any(isinstance(b, SlicedBlock) for b in model.get_submodule(fam.layers)):
        raise ValueError("model: already sliced (its blocks carry shortcut matrices); slice the dense model")
    t0, j = time.perf_counter(), _Journal()
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            report = _slice(model, fam, ids, frac, batch_size, round_to, shortcuts, j)
    except BaseException:
        j.rollback()
        raise
    finally:
        model.train(was)
    report.seconds = round(time.perf_counter() - t0, 3)
    log.info("SliceGPT: hidden %d -> %d, parameters %d -> %d", report.hidden_before, report.hidden_after,
             report.params_before, report.params_after)
    return report


def _slice(model: nn.Module, fam: Family, ids: Tensor, frac: float, batch_size: int, round_to: int,
           shortcuts: bool, j: _Journal) -> SliceReport:
    params_before = sum(p.numel() for p in model.parameters())
    untied = _fold(model, fam, j)
    _install_blocks(model, fam, j)
    pts = points(model, fam)
    d = model.get_submodule(pts[0].norm).dim
    k = _kept_width(d, frac, round_to)
    kept = (_rotate_per_point if shortcuts else _rotate_shared)(model, pts, ids, k, batch_size, j)
    return SliceReport(fam.name, frac, d, k, params_before, sum(p.numel() for p in model.parameters()),
                       2 * len(model.get_submodule(fam.layers)) if shortcuts else 0, untied, int(ids.numel()),
                       kept, 0.0)


def _kept(vals: Tensor, k: int) -> float:
    return float(vals[:k].sum() / vals.sum()) if float(vals.sum()) > 0 else 1.0


def _rotate_per_point(model: nn.Module, pts: list[Point], ids: Tensor, k: int, batch_size: int,
                      j: _Journal) -> dict[str, float]:
    """Sec. 3.3-3.4: ``Q_l`` from each norm input's signal in turn, shortcuts ``Q_l^T Q_{l+1}``; kept variance."""
    kept: dict[str, float] = {}
    lift: Tensor | None = None  # D_del^T Q^T of the previous point: its residual, back in dense coordinates
    for i, pt in enumerate(pts):
        vals, q = _principal(_signals(model, [pt.norm], ids, batch_size)[pt.norm])
        qk = q[:, :k]  # (D, D')
        kept[pt.norm] = _kept(vals, k)
        _rotate_writers(model, pt, qk, j)
        _rotate_readers(model, pt, qk, j)
        if lift is not None:
            _set_shortcut(model, pt.shortcut, lift @ qk, j)  # Q_l^T Q_{l+1}, sliced: (D', D')
        lift = qk.T  # (D', D)
        if i + 1 < len(pts):
            _set_shortcut(model, pts[i + 1].shortcut, lift, j)  # until the next point is rotated
    return kept


def _rotate_shared(model: nn.Module, pts: list[Point], ids: Tensor, k: int, batch_size: int,
                   j: _Journal) -> dict[str, float]:
    """One ``Q`` from ``sum_l C_l`` of the dense (folded) model for every reader and writer: no shortcuts."""
    c = _signals(model, [pt.norm for pt in pts], ids, batch_size)
    _, q = _principal(sum(c.values()))
    qk = q[:, :k]  # (D, D')
    for pt in pts:
        _rotate_writers(model, pt, qk, j)
        _rotate_readers(model, pt, qk, j)
    return {p: float(torch.trace(qk.T @ c[p] @ qk) / torch.trace(c[p])) if float(torch.trace(c[p])) > 0 else 1.0
            for p in c}


slicegpt = slice_  # the method's name, as an alias


# ------------------------------------------------------------------------------------------ save / load

def save_sliced(model: nn.Module, report: SliceReport, directory: str | os.PathLike, *, tokenizer: Any = None,
                overwrite: bool = False) -> Path:
    """Write a sliced model as a folder (kind ``sliced`` in ``manifest.json``, the report in it), atomically.

    With shortcut matrices (the default of :func:`slice_`): the dense ``config.json`` it was built from and
    ``sliced.safetensors`` (every tensor, shortcuts included); plain ``from_pretrained`` refuses the folder
    (no ``model.safetensors``), :func:`load_sliced` rebuilds it. Without shortcuts (``shortcuts=False``) a
    LLaMA, Mistral or Qwen2 model is saved as a plain ``save_pretrained`` folder of its class with
    ``hidden_size`` = the kept width, ``head_dim`` pinned, the norms' ``sqrt(D / D')`` in their weights and
    ``rms_norm_eps * D / D'`` (the same function). Written with ``prunekit.io.atomic_dir``: whole or not at
    all; an existing folder is replaced only with ``overwrite``. ``tokenizer`` is saved with it if given.
    """
    from ..io import atomic_dir, save_tensors, write_manifest

    fam = family_of(model)
    if not isinstance(report, SliceReport):
        raise TypeError(f"report must be the SliceReport slice_ returned, got {type(report).__name__}")
    if not all(isinstance(b, SlicedBlock) for b in model.get_submodule(fam.layers)):
        raise ValueError("model: not sliced; run slice_ first")
    plain = _plain_model(model, fam, report)
    body = {"method": "slicegpt", "model_class": type(model).__name__, "family": fam.name,
            "layout": "plain" if plain is not None else "shortcuts",
            "weights": "model.safetensors" if plain is not None else WEIGHTS, "hidden_size": report.hidden_before,
            "sliced_hidden_size": report.hidden_after, "report": report.to_dict()}
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        if plain is not None:
            plain.save_pretrained(tmp, safe_serialization=True)
        else:
            model.config.save_pretrained(tmp)
            save_tensors(tmp / WEIGHTS, model.state_dict(), metadata={"format": "prunekit", "kind": KIND})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, KIND, body)
    return Path(directory)


def _plain_model(model: nn.Module, fam: Family, report: SliceReport) -> nn.Module | None:
    """The sliced model as a plain instance of its class, or None where only the shortcut format holds it
    (shortcut matrices, OPT's LayerNorm layout, Qwen3's head norms sharing ``rms_norm_eps``)."""
    pts = points(model, fam)
    norms = [model.get_submodule(p.norm) for p in pts]
    eps = {n.eps for n in norms}
    has_shortcuts = any(model.get_submodule(fam.layers)[0]._parameters.get(a) is not None for a in SHORTCUTS)
    if has_shortcuts or fam is not LLAMA or model.config.model_type == "qwen3" or len(eps) != 1:
        return None
    d, k = report.hidden_before, report.hidden_after
    cfg = copy.deepcopy(model.config)
    cfg.hidden_size, cfg.rms_norm_eps, cfg.tie_word_embeddings = k, eps.pop() * d / k, False
    cfg.head_dim = model.get_submodule(f"{fam.layers}.0.self_attn").head_dim
    state = model.state_dict()
    for p in pts:  # HF's norm over D' channels with this weight and eps is the RMSNorm over D
        state[f"{p.norm}.weight"] = torch.full((k,), math.sqrt(d / k), dtype=state[f"{fam.head}.weight"].dtype)
    out = type(model)(cfg).to(state[f"{fam.head}.weight"].dtype).eval()
    out.load_state_dict(state, strict=True)
    return out


def is_sliced_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a folder in :func:`save_sliced`'s shortcut format (plain ones load as usual)."""
    return (Path(path) / WEIGHTS).is_file()


def load_sliced(directory: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_sliced`: the dense class from ``config.json``, the same norms and
    shortcut blocks, every tensor shape checked against the weights' header before it is read (a plain
    folder loads with ``from_pretrained``)."""
    import transformers

    from ..io import check_tensor_file, load_tensors, read_manifest

    d = Path(directory)
    man = read_manifest(d, kinds=(KIND,), what="sliced model")
    cls = getattr(transformers, str(man.get("model_class")), None)
    if not isinstance(cls, type):
        raise ValueError(f"{d / 'manifest.json'}: model_class {man.get('model_class')!r} is not a transformers class")
    if man.get("layout") == "plain":
        return cls.from_pretrained(d, local_files_only=True).eval()
    cfg = transformers.AutoConfig.from_pretrained(d, local_files_only=True)
    file = d / WEIGHTS
    head = check_tensor_file(file, None, what="sliced model weights")
    model = cls(cfg).eval().to(_saved_dtype(head))
    fam = family_of(model)
    j = _Journal()
    with torch.no_grad():
        _fold(model, fam, j)
        _install_blocks(model, fam, j)
        _reshape_to(model, head, j)
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    check_tensor_file(file, expected, what="sliced model weights")
    tensors, _ = load_tensors(file, "sliced model weights")
    model.load_state_dict(tensors, strict=True)
    return model


def _saved_dtype(head: dict[str, tuple[tuple[int, ...], str]]) -> torch.dtype:
    """The floating dtype most of the saved elements have (the model is built in it)."""
    codes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    count: dict[str, int] = {}
    for shape, code in head.values():
        if code in codes:
            count[code] = count.get(code, 0) + math.prod(shape)
    return codes[max(count, key=count.__getitem__)] if count else torch.float32


def _reshape_to(model: nn.Module, head: dict[str, tuple[tuple[int, ...], str]], j: _Journal) -> None:
    """Give every parameter the shape the weights file holds (shortcuts created), before loading them."""
    params = dict(model.named_parameters())
    for name, (shape, _dtype) in head.items():
        if name in params and tuple(params[name].shape) == tuple(shape):
            continue
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if name not in params and not (attr in SHORTCUTS and isinstance(module, SlicedBlock)) and \
                not (attr == "bias" and isinstance(module, nn.Linear)):
            continue  # an unknown name: check_tensor_file reports it
        dtype = next(iter(params.values())).dtype
        _set_param(module, attr, torch.zeros(shape, dtype=dtype), j)
