"""Federated methods: what the server keeps, what it sends, what a client trains and sends back.

Five methods, each a ``Server`` subclass (state, downlink, aggregation) plus a client step
(``client_update``) that reads only the downlink payload and its own data:

- ``fedavg``: dense FedAvg (McMahan et al. 2017): clients send float32 weights, the server averages them
  weighted by example counts.
- ``fedavg-prune``: FedAvg, then layer-wise magnitude pruning of the server model after round ``prune_round``
  (Han et al. 2015); later rounds train and send only the kept values (the mask goes down as bits).
- ``fedtiny``: FedTiny-style progressive pruning (Huang et al. 2023): the server prunes by magnitude every
  round to Zhu & Gupta's cubic schedule s_t = s (1 - (1 - t/T)^3), T = ``prune_round``; pruned stays
  pruned; kept values only on the wire. (FedTiny's adaptive batch-norm selection and its regrowth are not
  reproduced: the models here have no batch norm.)
- ``binary-supermask``: frozen random weights from the shared seed; clients train edge-popup scores
  (Ramanujan et al. 2020) started from the server's keep votes and send their mask as bits (one per
  weight); the server keeps, per layer, the k weights with the most example-weighted votes (ties: the
  previous mask) and sends that mask as bits and the vote fractions as one byte per weight.
- ``hidenseek``: HideNseek (Vallapuram et al. 2022): the server prunes the frozen random weights at
  initialization without data (SynFlow, Tanaka et al. 2020); clients train only a sign supermask
  sigma = sign(s) in {-1, +1} over the survivors (straight-through) and send one sign bit per kept
  weight; the server's theta = P(sigma = +1) moves towards the example-weighted mean of the received bits
  (as FedPM averages binary masks, Isik et al. 2023). Down: the PaI mask as bits and theta quantized to one
  byte per kept weight; clients start from s = c (2 theta - 1), so signs the clients split on flip easily;
  the global model uses sigma = +1 where theta >= 1/2. This aggregation is our reading, not the paper's
  code: a plain majority vote sent as bits stayed at chance here (with a few local steps per round,
  clients rarely agree on a flip), and Bernoulli-sampled signs (FedPM-style) did not learn either.

Both supermask servers keep a memory of the votes: v_t = (1 - lambda) v_(t-1) + lambda m_t, m_t this round's
example-weighted mean of the received bits, lambda = ``vote_rate`` (``--vote-rate``, default 0.25; 1 = no
memory). With a fraction of non-IID clients per round, the mean of one round's bits follows the label skew
of the clients drawn and the global mask swung by tens of points from round to round; the memory plays
the part of FedPM's Beta posterior, which accumulates the votes of earlier rounds. The default was chosen
on development seeds (100) of both data sets, the same rate for both methods (docs/results/federated.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import payload as wire
from .data import ClientSplit

log = logging.getLogger(__name__)

METHODS = ("fedavg", "fedavg-prune", "fedtiny", "binary-supermask", "hidenseek")
SUPERMASK_METHODS = ("binary-supermask", "hidenseek")
PAI_CHOICES = ("synflow", "magnitude", "random", "none")
DEFAULT_VOTE_RATE = 0.25


@dataclass
class FedSpec:
    """Everything a client needs (pickled to the simulation's workers): the method, model, data and recipe."""

    method: str
    model: str
    model_kwargs: dict[str, Any]
    sparsity: float
    seed: int
    x: Tensor  # (N, ...) every client's examples, pooled
    y: Tensor  # (N,)
    splits: list[ClientSplit]
    rounds: int
    local_epochs: int = 1
    batch_size: int = 16
    lr: float | None = None  # default: 0.1 (SGD) for weights, 0.01 (Adam) for supermask scores
    pai: str = "synflow"
    prune_round: int | None = None
    synflow_iterations: int = 100
    vote_rate: float = DEFAULT_VOTE_RATE  # supermask servers' vote memory (see the module doc)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity


# ------------------------------------------------------------------------------------------ models
def build_model(spec: FedSpec) -> nn.Module:
    """The shared initial model (seeded); supermask methods re-draw its weights once (edge-popup Sec. 4.1)."""
    from ..zoo import get_model

    net = get_model(spec.model, seed=spec.seed, **spec.model_kwargs)
    if spec.method in SUPERMASK_METHODS:
        from ..training.supermask import reinit_weights_

        rule = "signed-constant" if spec.method == "binary-supermask" else "kaiming-normal"
        reinit_weights_(weight_params(net), rule, spec.density, spec.seed)
    return net


def weight_params(net: nn.Module) -> dict[str, nn.Parameter]:
    """The prunable weights (layers.classify), by name."""
    from ..layers import classify

    return classify(net).parameters(net)


def state_floats(net: nn.Module) -> dict[str, Tensor]:
    """Every floating tensor of the state dict (weights, biases, norm statistics)."""
    return {k: v for k, v in net.state_dict().items() if v.is_floating_point()}


def layer_counts(net: nn.Module, sparsity: float) -> dict[str, int]:
    """Kept weights per layer of a per-layer uniform allocation (exact in total)."""
    from ..training.supermask import _layer_counts

    return _layer_counts(weight_params(net), sparsity, None, "layer")


# ------------------------------------------------------------------------------------------ servers
class Server:
    """Server state of one method: ``downlink()`` payload, ``aggregate(results)``, ``global_model()``."""

    def __init__(self, spec: FedSpec) -> None:
        self.spec = spec
        self.net = build_model(spec)
        self.names = list(state_floats(self.net))
        self.wnames = list(weight_params(self.net))
        self.round = 0

    def downlink(self) -> list[bytes]:
        raise NotImplementedError

    def aggregate(self, results: Sequence[tuple[list[bytes], int]]) -> None:
        raise NotImplementedError

    def global_model(self) -> nn.Module:
        """The model every client receives this round, decoded from the downlink payload itself."""
        return decode(self.spec, self.downlink())

    def end_round(self, server_round: int) -> None:
        self.round = server_round


def _weighted_mean(values: Sequence[dict[str, Tensor]], counts: Sequence[int]) -> dict[str, Tensor]:
    total = float(sum(counts))
    return {k: sum(v[k] * (n / total) for v, n in zip(values, counts)) for k in values[0]}  # type: ignore[misc]


class FedAvgServer(Server):
    """Dense FedAvg (McMahan et al. 2017), and the masked variants below (kept values only on the wire)."""

    def __init__(self, spec: FedSpec) -> None:
        super().__init__(spec)
        self.state = {k: v.clone() for k, v in state_floats(self.net).items()}
        self.masks: dict[str, Tensor] | None = None

    def downlink(self) -> list[bytes]:
        return encode_masked(self.state, self.names, self.wnames, self.masks)

    def aggregate(self, results: Sequence[tuple[list[bytes], int]]) -> None:
        shapes = {k: tuple(v.shape) for k, v in self.state.items()}
        ups = [decode_values(p, shapes, self.wnames, self.masks) for p, _ in results]
        self.state = _weighted_mean(ups, [n for _, n in results])

    def prune_to(self, sparsity: float) -> None:
        """Magnitude pruning of the server model to ``sparsity``, every layer alike (as the supermasks); pruned stays
        pruned. (One global ranking removed whole layers of these barely trained MLPs.)"""
        from ..training.pai import select_masks

        scores = {k: self.state[k].abs().masked_fill(~self.masks[k], -math.inf) if self.masks else self.state[k].abs()
                  for k in self.wnames}
        self.masks = select_masks(scores, sparsity, scope="layer", allocation="uniform", warn=False)
        for k, m in self.masks.items():
            self.state[k] = self.state[k] * m


class FedAvgPruneServer(FedAvgServer):
    """FedAvg, then one-shot global magnitude pruning after ``prune_round``, then masked FedAvg."""

    def end_round(self, server_round: int) -> None:
        super().end_round(server_round)
        if server_round == prune_round(self.spec):
            self.prune_to(self.spec.sparsity)


class FedTinyServer(FedAvgServer):
    """Progressive magnitude pruning over rounds on the cubic schedule (FedTiny-style)."""

    def end_round(self, server_round: int) -> None:
        super().end_round(server_round)
        end = prune_round(self.spec)
        if server_round <= end:
            t = server_round / end
            self.prune_to(self.spec.sparsity * (1.0 - (1.0 - t) ** 3))


class BinarySupermaskServer(Server):
    """Global binary mask over frozen weights from example-weighted keep votes, k per layer.

    The server keeps v = the example-weighted fraction of the sampled clients that kept each weight (the mean
    of their mask bits, as FedPM's aggregation of binary masks, Isik et al. 2023) and sends the top-k mask as
    bits plus v as one byte per weight; clients start their edge-popup scores from s = c (1/2 + v), so a
    weight the clients split on is near the threshold and a few local steps can move it (started from the
    bits alone, with |s| spread over a whole fan-in bound, one local epoch could not change the first
    layer's mask at all).
    """

    def __init__(self, spec: FedSpec) -> None:
        super().__init__(spec)
        self.k = layer_counts(self.net, spec.sparsity)
        g = torch.Generator().manual_seed(spec.seed)
        params = weight_params(self.net)
        from ..training.supermask import topk_keep

        self.masks = {n: topk_keep(torch.rand(params[n].shape, generator=g), self.k[n]) for n in self.wnames}
        self.votes = {n: self.masks[n].float() for n in self.wnames}

    def downlink(self) -> list[bytes]:
        return (wire.bits([self.masks[n] for n in self.wnames])
                + wire.quantized([self.votes[n].reshape(-1) for n in self.wnames]))

    def aggregate(self, results: Sequence[tuple[list[bytes], int]]) -> None:
        from ..training.supermask import topk_keep

        shapes = [tuple(self.masks[n].shape) for n in self.wnames]
        total = float(sum(n for _, n in results))
        votes = [torch.zeros(s) for s in shapes]
        for p, n in results:
            for v, m in zip(votes, wire.unbits(p, shapes)):
                v += m.float() * (n / total)
        lam = self.spec.vote_rate
        self.votes = {n: (1 - lam) * self.votes[n] + lam * v for n, v in zip(self.wnames, votes)}
        self.masks = {n: topk_keep(self.votes[n] + 1e-4 * self.masks[n].float(), self.k[n]) for n in self.wnames}


class HideNseekServer(Server):
    """SynFlow keep mask at initialization (data-free) and theta = P(sigma = +1) per kept weight."""

    def __init__(self, spec: FedSpec) -> None:
        super().__init__(spec)
        self.keep = pai_masks(spec, self.net)
        self.theta = {n: torch.ones(int(self.keep[n].sum())) for n in self.wnames}  # every sign +1 at first

    def downlink(self) -> list[bytes]:
        return wire.bits([self.keep[n] for n in self.wnames]) + wire.quantized([self.theta[n] for n in self.wnames])

    def aggregate(self, results: Sequence[tuple[list[bytes], int]]) -> None:
        shapes = [(int(self.keep[n].sum()),) for n in self.wnames]
        total = float(sum(n for _, n in results))
        mean = [torch.zeros(s) for s in shapes]
        for p, n in results:
            for v, s in zip(mean, wire.unbits(p, shapes)):
                v += s.float() * (n / total)
        lam = self.spec.vote_rate
        self.theta = {n: (1 - lam) * self.theta[n] + lam * m for n, m in zip(self.wnames, mean)}


SERVERS: dict[str, type[Server]] = {"fedavg": FedAvgServer, "fedavg-prune": FedAvgPruneServer,
                                    "fedtiny": FedTinyServer, "binary-supermask": BinarySupermaskServer,
                                    "hidenseek": HideNseekServer}


def prune_round(spec: FedSpec) -> int:
    """The round after which fedavg-prune prunes (and by which fedtiny reaches the target): half the rounds."""
    return spec.prune_round if spec.prune_round is not None else max(1, spec.rounds // 2)


def pai_masks(spec: FedSpec, net: nn.Module) -> dict[str, Tensor]:
    """The server's pruning-at-initialization masks for hidenseek (``spec.pai``; ``none`` is an error)."""
    from ..training import pai

    if spec.pai == "none":
        raise ValueError("--method hidenseek trains signs over a pruning-at-initialization mask: give --pai synflow, "
                         "magnitude or random (got none)")
    if spec.pai == "synflow":
        return pai.synflow_masks(net, spec.sparsity, tuple(spec.x.shape[1:]), iterations=spec.synflow_iterations)
    if spec.pai == "magnitude":
        return pai.magnitude_masks(net, spec.sparsity)
    return pai.random_masks(net, spec.sparsity, seed=spec.seed)


# ------------------------------------------------------------------------------------------ codecs
def encode_masked(state: dict[str, Tensor], names: Sequence[str], wnames: Sequence[str],
                  masks: dict[str, Tensor] | None) -> list[bytes]:
    """Dense: every tensor as float32. Masked: the masks as bits, then kept values only, then the rest."""
    if masks is None:
        return wire.floats(state, names)
    return wire.bits([masks[n] for n in wnames]) + encode_values(state, names, wnames, masks)


def encode_values(state: dict[str, Tensor], names: Sequence[str], wnames: Sequence[str],
                  masks: dict[str, Tensor] | None) -> list[bytes]:
    """What a client sends: every tensor as float32, masked weights reduced to their kept values."""
    if masks is None:
        return wire.floats(state, names)
    vals = {n: state[n].reshape(-1)[masks[n].reshape(-1)] for n in wnames}
    return wire.floats(vals, wnames) + wire.floats(state, [n for n in names if n not in masks])


def decode_values(p: Sequence[bytes], shapes: dict[str, tuple[int, ...]], wnames: Sequence[str],
                  masks: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """Inverse of ``encode_values``: full tensors, zeros where pruned."""
    if masks is None:
        return wire.unfloats(p, shapes)
    kept = wire.unfloats(p[:len(wnames)], {n: (int(masks[n].sum()),) for n in wnames})
    rest = wire.unfloats(p[len(wnames):], {n: s for n, s in shapes.items() if n not in masks})
    out = dict(rest)
    for n in wnames:
        full = torch.zeros(math.prod(shapes[n]))
        full[masks[n].reshape(-1)] = kept[n]
        out[n] = full.view(shapes[n])
    return {n: out[n] for n in shapes}


def decode(spec: FedSpec, down: Sequence[bytes]) -> nn.Module:
    """The global model a downlink payload describes (what clients start from and evaluate)."""
    net = build_model(spec)
    net.load_state_dict(decode_state(spec, net, down), strict=False)
    return net


def decode_state(spec: FedSpec, net: nn.Module, down: Sequence[bytes]) -> dict[str, Tensor]:
    """The floating state the payload ``down`` gives ``net`` (built by ``build_model``)."""
    state = state_floats(net)
    wnames = list(weight_params(net))
    wshapes = [tuple(state[n].shape) for n in wnames]
    if spec.method in ("fedavg", "fedavg-prune", "fedtiny"):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        masks = None
        if len(down) != len(shapes):  # masks first, as bits
            masks = dict(zip(wnames, wire.unbits(down[:len(wnames)], wshapes)))
            down = down[len(wnames):]
        return decode_values(down, shapes, wnames, masks)
    masks = dict(zip(wnames, wire.unbits(down[:len(wnames)], wshapes)))
    out = dict(state)
    if spec.method == "binary-supermask":
        return {**out, **{n: state[n] * masks[n] for n in wnames}}
    theta = wire.unquantized(down[len(wnames):], [int(masks[n].sum()) for n in wnames])
    for n, t in zip(wnames, theta):
        sigma = torch.ones(masks[n].numel())
        sigma[masks[n].reshape(-1)] = torch.where(t >= 0.5, 1.0, -1.0)
        out[n] = state[n] * masks[n] * sigma.view(masks[n].shape)
    return out


# ------------------------------------------------------------------------------------------ clients
@dataclass
class ClientResult:
    """A client's reply: the uplink payload, its training example count and compute seconds."""

    payload: list[bytes]
    examples: int
    compute_s: float


def client_update(spec: FedSpec, down: Sequence[bytes], partition: int, server_round: int) -> ClientResult:
    """One client's local training on its own split, from the downlink payload ``down``."""
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed * 1000 + server_round * 100 + partition)
    split = spec.splits[partition]
    data = (spec.x[split.train], spec.y[split.train])
    net = build_model(spec)
    recipe = dict(epochs=spec.local_epochs, batch_size=spec.batch_size, seed=spec.seed + server_round + partition,
                  lr_schedule="constant")
    if spec.method in SUPERMASK_METHODS:
        payload = _supermask_update(spec, net, down, data, recipe, partition, server_round)
    else:
        payload = _weights_update(spec, net, down, data, recipe)
    return ClientResult(payload, int(len(split.train)), time.perf_counter() - t0)


def _weights_update(spec: FedSpec, net: nn.Module, down: Sequence[bytes], data: tuple, recipe: dict) -> list[bytes]:
    from ..masks import attach
    from ..training.loop import fit

    state = decode_state(spec, net, down)
    net.load_state_dict(state, strict=False)
    wnames = list(weight_params(net))
    masks = None
    if len(down) != len(state):  # a pruned model: keep its zeros while training
        shapes = [tuple(state[n].shape) for n in wnames]
        masks = dict(zip(wnames, wire.unbits(down[:len(wnames)], shapes)))
        attach(net, masks)
    fit(net, data, lr=spec.lr or 0.1, optimizer="sgd", momentum=0.9, weight_decay=5e-4, **recipe)
    return encode_values(state_floats(net), list(state), wnames, masks)


def _supermask_update(spec: FedSpec, net: nn.Module, down: Sequence[bytes], data: tuple, recipe: dict,
                      partition: int, server_round: int) -> list[bytes]:
    """Train scores started from the server's keep votes v (binary, s = c (1/2 + v)) or theta (sign,
    s = c (2 theta - 1)), c = ``spec.extra["score_scale"]`` (default 0.05); return mask bits or the kept
    weights' sign bits."""
    from ..masks import attach
    from ..training.loop import fit
    from ..training.supermask import Supermask, kept_signs

    params = weight_params(net)
    wnames = list(params)
    shapes = [tuple(params[n].shape) for n in wnames]
    masks = dict(zip(wnames, wire.unbits(down[:len(wnames)], shapes)))
    g = torch.Generator().manual_seed(spec.seed * 7919 + server_round * 31 + partition)
    scores = {}
    c = spec.extra.get("score_scale", 0.05)
    if spec.method == "binary-supermask":  # s = c (1/2 + v): weights the clients split on sit at the threshold
        votes = wire.unquantized(down[len(wnames):], [masks[n].numel() for n in wnames])
        for n, v in zip(wnames, votes):
            u = torch.rand(v.shape, generator=g)
            scores[n] = (c * (0.5 + v + 1e-3 * u)).view(masks[n].shape)
    if spec.method == "hidenseek":
        theta = wire.unquantized(down[len(wnames):], [int(masks[n].sum()) for n in wnames])
        for n, t in zip(wnames, theta):  # |s| = c |2 theta - 1|: split votes flip easily
            s = torch.full((masks[n].numel(),), c)
            s[masks[n].reshape(-1)] = (2 * t - 1) * c + 1e-3 * c * (2 * torch.rand(t.shape, generator=g) - 1)
            scores[n] = s.view(masks[n].shape)
        attach(net, masks)
    mode = "sign" if spec.method == "hidenseek" else "edge-popup"
    sm = Supermask(mode, spec.sparsity, pai="attached", weight_init="model", init_scores=scores)
    fit(net, data, lr=spec.lr or 0.01, optimizer="adam", weight_decay=0.0, callbacks=[sm], **recipe)
    st = sm.state
    assert st is not None
    if mode == "sign":
        return wire.bits([kept_signs(st.signs[n], masks[n]) for n in wnames])
    return wire.bits([st.masks[n] for n in wnames])


@torch.no_grad()
def client_accuracy(spec: FedSpec, down: Sequence[bytes], partition: int) -> tuple[float, int]:
    """Accuracy of the global model (from the payload) on one client's own test split, and its size."""
    from ..training.loop import evaluate

    split = spec.splits[partition]
    net = decode(spec, down)
    return evaluate(net, (spec.x[split.test], spec.y[split.test]))["accuracy"], int(len(split.test))
