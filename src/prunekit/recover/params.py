"""Which parameters a recovery run trains: PERP's biases + norms, row scales, or every kept weight.

PERP (Zimmer et al. 2023, "PERP: Rethinking the Prune-Retrain Paradigm in the Era of LLMs", Sec. 3)
retrains only the biases and the normalization layers' parameters after pruning (0.27-0.35% of the
parameters of the OPT models it studies), leaving every weight matrix and so its sparsity untouched.
``RowScales`` adds one trainable scale per output row of each pruned linear (``y = s * (W x + b)``), and with
``columns`` one per input column (rank-1 ScaleLoRA); merging multiplies rows / columns of ``W`` (and ``b`` by
the row scales), which keeps every zero of ``W`` a zero.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def is_norm(module: nn.Module) -> bool:
    """True for LayerNorm / GroupNorm / BatchNorm and the RMSNorm classes of transformers (``*Norm`` with a 1-D
    weight)."""
    if isinstance(module, NORM_TYPES):
        return True
    w = getattr(module, "weight", None)
    return type(module).__name__.endswith("Norm") and isinstance(w, nn.Parameter) and w.dim() == 1


def perp_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every bias and every normalization parameter of ``model`` (PERP's trainable set), by name."""
    out: dict[str, nn.Parameter] = {}
    for mod_name, mod in model.named_modules():
        for attr, p in mod.named_parameters(recurse=False):
            if attr == "bias" or is_norm(mod):
                out[f"{mod_name}.{attr}" if mod_name else attr] = p
    return out


class RowScales:
    """Trainable scales of listed ``nn.Linear`` layers: one per output row (``rows``: ``y = s * linear(x)``) and/or
    one per input column (``columns``: ``linear(t * x)``); ``merge`` folds them into the weights.

    Both together are PERP's ScaleLoRA at rank 1 (Zimmer et al. 2023, Sec. 3: ``W' = W * (b a^T)``, an element-wise
    product with a rank-one matrix, = ``diag(b) W diag(a)``): every zero of ``W`` stays a zero after the merge.
    """

    def __init__(self, model: nn.Module, layers: list[str], rows: bool = True, columns: bool = False) -> None:
        self.model, self._hooks = model, []
        self.scales: dict[str, nn.Parameter] = {}
        self.col_scales: dict[str, nn.Parameter] = {}
        for name in layers:
            mod = model.get_submodule(name)
            if not isinstance(mod, nn.Linear):
                raise ValueError(f"linear scale: {name!r} is a {type(mod).__name__}, not an nn.Linear")
            kw = {"dtype": mod.weight.dtype, "device": mod.weight.device}
            if rows:
                s = nn.Parameter(torch.ones(mod.out_features, **kw))
                self.scales[name] = s
                self._hooks.append(mod.register_forward_hook(lambda _m, _a, y, s=s: y * s))
            if columns:
                t = nn.Parameter(torch.ones(mod.in_features, **kw))
                self.col_scales[name] = t
                self._hooks.append(mod.register_forward_pre_hook(lambda _m, a, t=t: (a[0] * t, *a[1:])))

    def parameters(self) -> dict[str, nn.Parameter]:
        """The scales by ``<layer>.row_scale`` and ``<layer>.col_scale``."""
        return {**{f"{k}.row_scale": s for k, s in self.scales.items()},
                **{f"{k}.col_scale": t for k, t in self.col_scales.items()}}

    def merge(self) -> None:
        """Fold every scale into its layer (rows: weight and bias; columns: weight) and remove the hooks."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        with torch.no_grad():
            for name, s in self.scales.items():
                mod = self.model.get_submodule(name)
                mod.weight.mul_(s[:, None])  # (out, in): a zero stays a zero
                if mod.bias is not None:
                    mod.bias.mul_(s)
            for name, t in self.col_scales.items():
                self.model.get_submodule(name).weight.mul_(t[None, :])


class _ScaledWeight(nn.Module):
    """Parametrization ``W -> W * (B @ A)`` (element-wise), the product of rank ``B.shape[1]``."""

    def __init__(self, B: Tensor, A: Tensor) -> None:
        super().__init__()
        self.B, self.A = nn.Parameter(B), nn.Parameter(A)

    def forward(self, W: Tensor) -> Tensor:
        return W * (self.B @ self.A)


class ScaleLoRA:
    """PERP's ScaleLoRA (Zimmer et al. 2023, Sec. 3) at rank ``r``: ``W' = W * (B A)``, ``B`` (out, r), ``A`` (r, in).

    The element-wise product keeps every zero of ``W`` a zero, so the merged model has the pruned pattern
    exactly. Initialised to the identity (``B A`` all ones): ``B[:, 0] = 1``, ``A[0] = 1``, the other columns of
    ``B`` zero and the other rows of ``A`` standard normal (seeded), as LoRA starts its update at zero with one
    random factor. Rank 1 trains ``diag(b) W diag(a)`` (what ``RowScales`` with rows and columns does); a
    higher rank lets the per-entry scale vary beyond a row x column product. Applied through
    ``torch.nn.utils.parametrize``: one ``(out, in)`` product per layer and step, no second matmul.
    """

    def __init__(self, model: nn.Module, layers: list[str], rank: int, seed: int = 0) -> None:
        from torch.nn.utils import parametrize

        if rank < 1:
            raise ValueError(f"ScaleLoRA rank must be >= 1, got {rank}")
        self.model, self.layers = model, list(layers)
        self.factors: dict[str, _ScaledWeight] = {}
        gen = torch.Generator().manual_seed(seed)
        for name in self.layers:
            mod = model.get_submodule(name)
            if not isinstance(mod, nn.Linear):
                raise ValueError(f"ScaleLoRA: {name!r} is a {type(mod).__name__}, not an nn.Linear")
            kw = {"dtype": mod.weight.dtype, "device": mod.weight.device}
            B = torch.zeros(mod.out_features, rank, **kw)
            B[:, 0] = 1
            A = torch.randn(rank, mod.in_features, generator=gen).to(**kw)
            A[0] = 1
            f = _ScaledWeight(B, A)
            parametrize.register_parametrization(mod, "weight", f)
            self.factors[name] = f

    def parameters(self) -> dict[str, nn.Parameter]:
        """The factors by ``<layer>.scale_B`` / ``<layer>.scale_A``."""
        out: dict[str, nn.Parameter] = {}
        for name, f in self.factors.items():
            out[f"{name}.scale_B"], out[f"{name}.scale_A"] = f.B, f.A
        return out

    def merge(self) -> None:
        """Write ``W * (B A)`` into each layer's weight (a plain parameter again, frozen)."""
        from torch.nn.utils import parametrize

        for name in self.layers:
            mod = self.model.get_submodule(name)
            with torch.no_grad():
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
            mod.weight.requires_grad_(False)
        self.factors = {}


BIAS_FLAGS = {"self_attn": "attention_bias", "mlp": "mlp_bias"}  # LLaMA-family config fields


def bias_flags_of(config: dict) -> list[str]:
    """The config fields that would declare added biases (``attention_bias``, ``mlp_bias``) it lacks; empty when
    the config can carry biases on every attention and MLP projection."""
    return [f for f in BIAS_FLAGS.values() if f not in config]


def add_biases(model: nn.Module) -> dict[str, nn.Parameter]:
    """Give every bias-free ``nn.Linear`` of the blocks' attention and MLP a zero bias and set the config's
    ``attention_bias`` / ``mlp_bias`` so the saved folder loads them (the model's output does not change).

    PERP trains the biases and norms; a model without biases (LLaMA, Mistral) then trains its norms only
    (0.07% of the zoo LM) and recovers little. A zero bias per output row is the additive twin of a row
    scale: it can absorb the mean shift the pruned weights leave in each output (E[x] . w_pruned). Only
    configs that declare biases by these two fields are accepted (a bias the config does not declare would
    be dropped on loading); every projection the fields govern gets one, pruned or not.
    """
    cfg = getattr(model, "config", None)
    missing = bias_flags_of(cfg.to_dict() if cfg is not None else {})
    if missing:
        raise ValueError(f"add_bias: the model's config has no {' / '.join(missing)} field, so added biases would "
                         "not load from the saved folder (LLaMA-family configs have both)")
    out: dict[str, nn.Parameter] = {}
    used = set()
    for name, mod in model.named_modules():
        part = next((k for k in BIAS_FLAGS if f".{k}." in f".{name}"), None)
        if part is None or not isinstance(mod, nn.Linear):
            continue
        used.add(part)
        if mod.bias is None:
            mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=mod.weight.dtype, device=mod.weight.device))
            out[f"{name}.bias"] = mod.bias
    for part in used:
        setattr(cfg, BIAS_FLAGS[part], True)
    log.info("add_bias: %d zero biases added (%d values)", len(out), sum(p.numel() for p in out.values()))
    return out


def freeze_all(model: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad_(False)


def enforce_masks(params: dict[str, nn.Parameter], masks: dict[str, Tensor]) -> None:
    """Zero the pruned entries (mask False) of every masked parameter, in place."""
    with torch.no_grad():
        for name, m in masks.items():
            if name in params:
                params[name].mul_(m.to(params[name].dtype))


def count(params: dict[str, nn.Parameter] | list[nn.Parameter]) -> int:
    """Number of scalars in ``params``."""
    values = params.values() if isinstance(params, dict) else params
    return sum(p.numel() for p in values)
