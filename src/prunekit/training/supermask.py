"""Supermasks: train a mask (or a sign) over frozen weights; gradients reach only the scores.

Three methods share one callback, ``Supermask``, on the plain ``fit`` loop:

- ``edge-popup`` (Ramanujan et al. 2020, "What's Hidden in a Randomly Weighted Neural Network?"): every
  weight w_uv has a score s_uv; the forward pass uses W_eff = W * h(S), h(S)_uv = 1 if |s_uv| is among the
  top k of its layer (Sec. 3, Eq. 1), else 0; the backward pass treats h as the identity (straight-through,
  Eq. 3): dL/d|s_uv| = dL/dW_eff_uv * w_uv. Scores start Kaiming-uniform.
- ``sign-supermask`` (Vallapuram et al. 2022, "HideNseek"): the weights that survive pruning at
  initialization (SynFlow by default, data-free) are kept; each one gets a sign sigma = sign(s) in {-1, +1}
  (sign(0) = +1) with the straight-through estimator dL/ds = dL/dsigma; W_eff = W * M_pai * sigma.
  Scores start positive (every sign +1: the pruned network as initialized).
- ``jackpot`` (Zhang et al. 2022, "Lottery Jackpots Exist in Pre-trained Models"): edge-popup over a
  *trained* model's frozen weights with scores initialised from the magnitudes |W| (so the search starts at
  magnitude pruning) and the short-restriction rule: only weights whose magnitude rank lies within
  ``restriction * n`` of the layer's keep boundary k may change state; the top ``k - r n`` stay kept, the
  rest below ``k + r n`` stay pruned.

Every weight of the model (biases, norms included) is frozen while the scores train; the frozen tensors
are bit-identical after training. At the end the model holds plain dense weights W * M * sigma (the
export) with its keep mask attached, and ``Supermask.state`` holds the frozen weights, masks and signs,
which ``save_supermask`` writes as bits (``np.packbits``, one bit per weight for masks, one bit per kept
weight for signs).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import check_choice, check_sparsity
from ..masks import DEFAULT_EXCLUDE, attach, attached
from .distributed import unwrap
from .loop import Callback, TrainState, as_dataset

log = logging.getLogger(__name__)

MODES = ("edge-popup", "sign", "jackpot")
WEIGHT_INITS = ("model", "kaiming-normal", "signed-constant")
DEFAULT_INIT = {"edge-popup": "signed-constant", "sign": "kaiming-normal", "jackpot": "model"}
PAI_SOURCES = ("synflow", "magnitude", "random", "attached")
KIND = "supermask"
FROZEN_FILE, BITS_FILE = "frozen.safetensors", "bits.safetensors"


class _StraightThrough(torch.autograd.Function):
    """Forward: the given hard value (a 0/1 mask or a +-1 sign); backward: the gradient to the scores as is."""

    @staticmethod
    def forward(ctx: Any, scores: Tensor, hard: Tensor) -> Tensor:  # type: ignore[override]
        return hard

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def topk_keep(scores: Tensor, k: int, fixed_keep: Tensor | None = None, fixed_drop: Tensor | None = None) -> Tensor:
    """Keep-mask of the ``k`` largest |scores| (edge-popup's h, Ramanujan et al. 2020 Eq. 1); fixed sets forced."""
    s = scores.detach().abs().reshape(-1).clone()  # (n,)
    if fixed_keep is not None:
        s[fixed_keep.reshape(-1)] = math.inf
    if fixed_drop is not None:
        s[fixed_drop.reshape(-1)] = -math.inf
    keep = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
    if k > 0:
        keep[torch.topk(s, k, sorted=False).indices] = True
    return keep.view(scores.shape)


def sign_of(scores: Tensor) -> Tensor:
    """sigma = sign(s) in {-1, +1}, with sign(0) = +1 (HideNseek's sign supermask)."""
    return torch.where(scores.detach() >= 0, 1.0, -1.0).to(scores.dtype)


class _Masked(nn.Module):
    """The parametrization W -> W * h(S) (binary) or W * M * sign(S) (sign) of one weight."""

    def __init__(self, scores: Tensor, mode: str, k: int, keep: Tensor | None, fixed_keep: Tensor | None = None,
                 fixed_drop: Tensor | None = None, stochastic: bool = False) -> None:
        super().__init__()
        self.scores = nn.Parameter(scores.clone())
        self.mode, self.k, self.stochastic = mode, k, stochastic
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("fixed_keep", fixed_keep, persistent=False)
        self.register_buffer("fixed_drop", fixed_drop, persistent=False)

    def hard(self) -> tuple[Tensor, Tensor | None]:
        """The current keep mask and, in sign mode, the signs (both without gradient)."""
        if self.mode == "sign":
            if self.stochastic:  # sigma ~ 2 Bernoulli(sigmoid(s)) - 1
                p = torch.sigmoid(self.scores.detach())
                return self.keep, torch.where(torch.rand_like(p) < p, 1.0, -1.0).to(p.dtype)
            return self.keep, sign_of(self.scores)
        return topk_keep(self.scores, self.k, self.fixed_keep, self.fixed_drop), None

    def forward(self, w: Tensor) -> Tensor:
        keep, sign = self.hard()
        if sign is not None:
            soft = 2 * torch.sigmoid(self.scores) - 1 if self.stochastic else self.scores  # STE through E[sigma]
            return w * keep.to(w.dtype) * _StraightThrough.apply(soft, sign)
        return w * _StraightThrough.apply(self.scores.abs(), keep.to(w.dtype))  # h ranks |s|: d|s|/ds = sign(s)


@dataclass
class SupermaskState:
    """What a trained supermask is: frozen weights, keep masks (True = keep) and signs (+-1, sign mode only)."""

    mode: str
    sparsity: float
    frozen: dict[str, Tensor]  # every floating tensor of the state dict, as frozen
    masks: dict[str, Tensor]  # "<module>.weight" -> bool
    signs: dict[str, Tensor] = field(default_factory=dict)  # "<module>.weight" -> bool (True = +1), full shape

    def export(self) -> dict[str, Tensor]:
        """Plain dense weights: W * M * sigma for every masked weight, the frozen value for the rest."""
        out = dict(self.frozen)
        for k, m in self.masks.items():
            w = self.frozen[k] * m.to(self.frozen[k].dtype)
            if k in self.signs:
                w = w * torch.where(self.signs[k], 1.0, -1.0).to(w.dtype)
            out[k] = w
        return out


@dataclass
class Supermask(Callback):
    """Train supermask scores over frozen weights (``mode``: edge-popup, sign, jackpot); see the module doc.

    ``pai`` (sign mode): where the kept weights come from: ``synflow`` (data-free, Tanaka et al. 2020),
    ``magnitude``, ``random``, or ``attached`` (the masks attached to the model, e.g. a server's); ``input_shape``
    is one example's shape (SynFlow; else read from ``data``). ``weight_init`` re-draws the weights once
    before they freeze (``model`` keeps them; default: signed-constant for edge-popup, kaiming-normal for
    sign, model for jackpot, which searches a trained model). ``init_scores`` replaces the initial scores
    (federated clients start from the server's). ``restriction`` is the jackpot short-restriction width, a
    fraction of each layer. ``stochastic`` (sign mode): sigma ~ 2 Bernoulli(sigmoid(s)) - 1 at every forward
    pass, gradients straight through its mean 2 sigmoid(s) - 1 (the probabilistic masks of FedPM, Isik et al.
    2023, applied to signs); the final signs are one sample. ``rescale`` (sign mode, re-drawn weights only):
    after the PaI mask is chosen, scale each layer so its kept weights carry Kaiming's variance
    (``rescale_kept_``); without it the SynFlow-pruned network's logits reach std 20-70 and at 90% sparsity the
    sign supermask stays at chance (docs/results/federated.md).
    """

    mode: str
    sparsity: float
    data: Any = None
    pai: str = "synflow"
    input_shape: Sequence[int] | None = None
    synflow_iterations: int = 100
    restriction: float = 0.1
    weight_init: str | None = None
    stochastic: bool = False
    scope: str = "layer"
    seed: int = 0
    exclude: Sequence[str] = DEFAULT_EXCLUDE
    init_scores: Mapping[str, Tensor] | None = None
    rescale: bool = True
    state: SupermaskState | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", MODES)
        check_sparsity(self.sparsity)
        check_choice(self.pai, "pai", PAI_SOURCES)
        self.weight_init = self.weight_init or DEFAULT_INIT[self.mode]
        check_choice(self.weight_init, "weight_init", WEIGHT_INITS)
        if not 0.0 <= float(self.restriction) <= 1.0:
            raise ValueError(f"restriction must be in [0, 1], got {self.restriction!r}")
        self._masked: dict[str, _Masked] = {}

    # ---------------------------------------------------------------- start: freeze, parametrize
    def on_fit_start(self, state: TrainState) -> None:
        net = unwrap(state.model)
        if self.weight_init != "model":
            reinit_weights_(self._weights(net), self.weight_init, 1.0 - self.sparsity, self.seed)
        keep = self._initial_keep(net) if self.mode == "sign" else None
        if keep is not None and self.weight_init != "model" and self.rescale:
            factors = rescale_kept_(self._weights(net), keep)
            log.info("sign supermask: kept weights rescaled to Kaiming variance per layer (factors %s)",
                     ", ".join(f"{k} {f:.3g}" for k, f in factors.items()))
        ms = attached(net)
        if ms is not None:
            ms.bake()  # its zeros stay; supermask forward passes take over from here
        self._frozen = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
        self._grad = {n: p.requires_grad for n, p in net.named_parameters()}
        for p in net.parameters():
            p.requires_grad_(False)
        weights = self._weights(net)
        counts = _layer_counts(weights, self.sparsity, keep, self.scope)
        for name, w in weights.items():
            self._parametrize(net, name, w, counts[name], None if keep is None else keep[name])
        scores = [m.scores for m in self._masked.values()]
        _add_param_group(state, scores)
        log.info("%s supermask over %d frozen tensors, sparsity %.4f", self.mode, len(weights), self.sparsity)

    def _weights(self, net: nn.Module) -> dict[str, nn.Parameter]:
        from ..layers import classify

        ledger = classify(net, exclude=self.exclude)
        if not ledger.prunable:
            raise ValueError("the model has no prunable layers for a supermask")
        return ledger.parameters(net)

    def _initial_keep(self, net: nn.Module) -> dict[str, Tensor]:
        """The PaI keep masks the sign supermask trains over (HideNseek: SynFlow at the server)."""
        if self.pai == "attached":
            ms = attached(net)
            if ms is None:
                raise ValueError("sign-supermask with pai='attached' needs masks attached to the model (prune it at "
                                 "initialization first), got none")
            return {k: m.detach().clone() for k, m in ms.masks.items()}
        from .pai import magnitude_masks, random_masks, synflow_masks

        if self.pai == "synflow":
            shape = self.input_shape or (tuple(as_dataset(self.data)[0][0].shape) if self.data is not None else None)
            if shape is None:
                raise ValueError("sign-supermask with pai='synflow' needs input_shape=(...) or data to read it from")
            return synflow_masks(net, self.sparsity, tuple(shape), iterations=self.synflow_iterations,
                                 exclude=self.exclude)
        if self.pai == "magnitude":
            return magnitude_masks(net, self.sparsity, exclude=self.exclude)
        return random_masks(net, self.sparsity, seed=self.seed, exclude=self.exclude)

    def _parametrize(self, net: nn.Module, name: str, w: Tensor, k: int, keep: Tensor | None) -> None:
        mod_name, _, attr = name.rpartition(".")
        module = net.get_submodule(mod_name) if mod_name else net
        scores = self._scores(name, w, k)
        fixed_keep = fixed_drop = None
        if self.mode == "jackpot" and self.restriction < 1.0:
            fixed_keep, fixed_drop = short_restriction(w.detach(), k, self.restriction)
        masked = _Masked(scores, self.mode, k, None if keep is None else keep.to(w.device), fixed_keep, fixed_drop,
                         self.stochastic)
        parametrize.register_parametrization(module, attr, masked.to(w.device))
        self._masked[name] = module.parametrizations[attr][0]

    def _scores(self, name: str, w: Tensor, k: int) -> Tensor:
        if self.init_scores is not None and name in self.init_scores:
            s = self.init_scores[name].to(w.device, w.dtype)
            if s.shape != w.shape:
                raise ValueError(f"init_scores[{name!r}] has shape {list(s.shape)}, the weight {list(w.shape)}")
            return s
        if self.mode == "jackpot":
            return w.detach().abs().clone()  # magnitude initialisation (Zhang et al. 2022)
        g = torch.Generator().manual_seed(self.seed + _stable_hash(name))
        bound = 1.0 / math.sqrt(max(1, w[0].numel()))  # Kaiming-uniform bound over the fan-in
        u = torch.rand(w.shape, generator=g).to(w.device, w.dtype)
        return (u * bound) if self.mode == "sign" else (2 * u - 1) * bound

    # ---------------------------------------------------------------- end: unparametrize, export
    def on_fit_end(self, state: TrainState) -> None:
        net = unwrap(state.model)
        masks, signs = self.current()
        for name in self._masked:
            mod_name, _, attr = name.rpartition(".")
            module = net.get_submodule(mod_name) if mod_name else net
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        after = {k: v for k, v in net.state_dict().items() if k in self._frozen}
        moved = [k for k, v in after.items() if not torch.equal(v, self._frozen[k])]
        if moved:
            raise RuntimeError(f"supermask training changed frozen tensors {moved}: they must stay bit-identical")
        self.state = SupermaskState(self.mode, float(self.sparsity), self._frozen, masks, signs)
        with torch.no_grad():
            params = dict(net.named_parameters())
            for k, w in self.state.export().items():
                if k in masks:
                    params[k].copy_(w)
        for n, p in net.named_parameters():
            p.requires_grad_(self._grad.get(n, True))
        _drop_param_group(state, [m.scores for m in self._masked.values()])
        attach(net, masks)
        self._masked = {}

    def current(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The keep masks and signs (bool, True = +1) the scores give now."""
        masks, signs = {}, {}
        for name, m in self._masked.items():
            keep, sign = m.hard()
            masks[name] = keep.detach().clone()
            if sign is not None:
                signs[name] = sign > 0
        return masks, signs

    def scores(self) -> dict[str, Tensor]:
        """The current scores (detached copies), by weight name."""
        return {k: m.scores.detach().clone() for k, m in self._masked.items()}


@torch.no_grad()
def reinit_weights_(weights: Mapping[str, Tensor], rule: str, density: float, seed: int = 0) -> None:
    """Re-draw the weights once before they freeze: Kaiming normal, or its signed constant +-std, scaled by
    1/sqrt(density) so the kept subnetwork keeps the signal's variance (Ramanujan et al. 2020, Sec. 4.1)."""
    check_choice(rule, "weight_init", WEIGHT_INITS)
    for name, w in weights.items():
        g = torch.Generator().manual_seed(seed + _stable_hash(name))
        std = math.sqrt(2.0 / max(1, w[0].numel())) / math.sqrt(max(density, 1e-12))  # fan-in = w[0].numel()
        z = torch.randn(w.shape, generator=g)
        w.copy_((z * std if rule == "kaiming-normal" else torch.sign(z) * std).to(w.device, w.dtype))


def rescale_kept_(weights: Mapping[str, Tensor], keep: Mapping[str, Tensor]) -> dict[str, float]:
    """Scale each layer's frozen weights so that its kept weights carry Kaiming's variance: the mean over the
    output units that keep any weight of sum_j (M_ij W_ij)^2 becomes 2 (He et al. 2015, Var(w) fan_in = 2).

    Edge-popup's 1/sqrt(density) factor (Ramanujan et al. 2020, Sec. 4.1) keeps the signal's variance only when
    each layer keeps a uniform random fraction of its weights. A pruning-at-initialization mask (SynFlow,
    magnitude) keeps different fractions per layer and the larger weights, so the subnetwork's logits grow
    with depth (std ~20 on the zoo MLP at 90% SynFlow). One positive factor per layer changes no sign and no
    mask; it is computed from the frozen weights and the mask alone (no data, no bytes on a federated wire).
    Returns the factor applied to each layer."""
    factors = {}
    with torch.no_grad():
        for name, w in weights.items():
            kept = (w * keep[name].to(w.dtype)).reshape(w.shape[0], -1)
            energy = (kept ** 2).sum(1)
            live = energy > 0
            f = math.sqrt(2.0 / float(energy[live].mean())) if bool(live.any()) else 1.0
            w.mul_(f)
            factors[name] = f
    return factors


def short_restriction(w: Tensor, k: int, restriction: float) -> tuple[Tensor, Tensor]:
    """Lottery Jackpots' short restriction: by magnitude rank, the top k - r n stay kept, ranks past k + r n pruned."""
    n = w.numel()
    r = int(round(restriction * n))
    order = torch.argsort(w.abs().reshape(-1), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=w.device)
    return (rank < max(0, k - r)).view(w.shape), (rank >= min(n, k + r)).view(w.shape)


def _layer_counts(weights: Mapping[str, Tensor], sparsity: float, keep: Mapping[str, Tensor] | None,
                  scope: str) -> dict[str, int]:
    """Kept weights per layer: the PaI masks' counts (sign), else a per-layer uniform allocation, exact in total."""
    if keep is not None:
        return {k: int(keep[k].sum()) for k in weights}
    from .pai import select_masks

    check_choice(scope, "scope", ("layer",))
    any_scores = {k: torch.rand(w.shape, generator=torch.Generator().manual_seed(0)) for k, w in weights.items()}
    chosen = select_masks(any_scores, sparsity, scope="layer", allocation="uniform")  # counts depend on shapes only
    return {k: int(m.sum()) for k, m in chosen.items()}


def _add_param_group(state: TrainState, scores: list[Tensor]) -> None:
    """Give the scores to the running optimizer (same hyper-parameters) and to its learning-rate schedule."""
    opt = state.optimizer
    opt.add_param_group({"params": scores})
    group = opt.param_groups[-1]
    group.setdefault("initial_lr", group["lr"])
    sched = state.scheduler
    if sched is not None and hasattr(sched, "base_lrs"):
        sched.base_lrs.append(group["initial_lr"])
        if hasattr(sched, "lr_lambdas"):
            sched.lr_lambdas.append(sched.lr_lambdas[0])
        group["lr"] = group["initial_lr"] * (sched.get_last_lr()[0] / sched.base_lrs[0] if sched.base_lrs[0] else 1.0)


def _drop_param_group(state: TrainState, scores: list[Tensor]) -> None:
    ids = {id(s) for s in scores}
    opt = state.optimizer
    for i, g in enumerate(opt.param_groups):
        if any(id(p) in ids for p in g["params"]):
            del opt.param_groups[i]
            for p in g["params"]:
                opt.state.pop(p, None)
            sched = state.scheduler
            if sched is not None and hasattr(sched, "base_lrs") and len(sched.base_lrs) > len(opt.param_groups):
                del sched.base_lrs[i]
                if hasattr(sched, "lr_lambdas"):
                    del sched.lr_lambdas[i]
            return


def _stable_hash(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % 100_003


# ---------------------------------------------------------------- bits on disk and on the wire

def pack_bits(mask: Tensor) -> np.ndarray:
    """One bit per element of a bool tensor (``np.packbits`` of its flattened values), uint8."""
    return np.packbits(mask.detach().reshape(-1).cpu().numpy().astype(np.bool_))


def unpack_bits(bits: np.ndarray | bytes, shape: Sequence[int]) -> Tensor:
    """The bool tensor of ``shape`` that ``pack_bits`` packed; a wrong length is an error naming both sizes."""
    arr = np.frombuffer(bits, dtype=np.uint8) if isinstance(bits, (bytes, bytearray)) else np.asarray(bits, np.uint8)
    n = math.prod(shape)
    if arr.size != (n + 7) // 8:
        raise ValueError(f"bit payload holds {arr.size} bytes; shape {list(shape)} needs {(n + 7) // 8}")
    return torch.from_numpy(np.unpackbits(arr, count=n).astype(np.bool_).copy()).view(*shape)


def kept_signs(sign: Tensor, keep: Tensor) -> Tensor:
    """The signs of the kept weights only, flattened in order (what is stored and sent)."""
    return sign.reshape(-1)[keep.reshape(-1)]


def spread_signs(values: Tensor, keep: Tensor) -> Tensor:
    """Inverse of ``kept_signs``: a full-shape bool tensor, +1 (True) where pruned."""
    out = torch.ones(keep.numel(), dtype=torch.bool)
    out[keep.reshape(-1).cpu()] = values.cpu()
    return out.view(keep.shape)


def save_supermask(folder: str | os.PathLike, state: SupermaskState, body: Mapping[str, Any] | None = None, *,
                   overwrite: bool = False) -> Path:
    """Write ``state`` as the folder ``folder`` atomically: frozen weights, bits, manifest (kind supermask).

    Masks take one bit per weight and signs one bit per kept weight (``np.packbits``, uint8 tensors)."""
    from ..io import atomic_dir

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        write_supermask(tmp, state, body)
    return Path(folder)


def write_supermask(folder: Path, state: SupermaskState, body: Mapping[str, Any] | None = None) -> Path:
    """The files of ``save_supermask`` into ``folder``, a new folder inside one being written atomically."""
    from ..io import save_tensors, write_manifest

    folder.mkdir(exist_ok=True)
    bits = {f"{k}.mask": torch.from_numpy(pack_bits(m)) for k, m in state.masks.items()}
    bits.update({f"{k}.sign": torch.from_numpy(pack_bits(kept_signs(s, state.masks[k])))
                 for k, s in state.signs.items()})
    save_tensors(folder / FROZEN_FILE, state.frozen, {"format": "prunekit", "kind": KIND})
    save_tensors(folder / BITS_FILE, bits, {"format": "prunekit", "kind": KIND})
    layers = {k: {"shape": list(m.shape), "kept": int(m.sum()), "signs": k in state.signs}
              for k, m in state.masks.items()}
    write_manifest(folder, KIND, {**dict(body or {}), "mode": state.mode, "sparsity": state.sparsity,
                                  "layers": layers, "mask_bytes": sum(int(b.numel()) for b in bits.values())})
    return folder


def load_supermask(folder: str | os.PathLike) -> SupermaskState:
    """Read a folder written by ``save_supermask`` back (manifest checked first)."""
    from ..io import load_tensors, read_manifest

    folder = Path(folder)
    man = read_manifest(folder, kinds=(KIND,), what="supermask folder")
    frozen, _ = load_tensors(folder / FROZEN_FILE, "supermask frozen weights")
    bits, _ = load_tensors(folder / BITS_FILE, "supermask bits")
    masks, signs = {}, {}
    for name, info in man["layers"].items():
        masks[name] = unpack_bits(bits[f"{name}.mask"].numpy(), info["shape"])
        if info.get("signs"):
            vals = unpack_bits(bits[f"{name}.sign"].numpy(), [int(masks[name].sum())])
            signs[name] = spread_signs(vals, masks[name])
    return SupermaskState(man["mode"], float(man["sparsity"]), frozen, masks, signs)
