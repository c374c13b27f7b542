"""Machine unlearning through sparsity (Jia et al., NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning").

A model trained on the full training set must forget a set ``D_f`` (one class, or a random fraction) and keep
the rest ``D_r``. Unlearners, each optionally after one-shot magnitude pruning of the trained model (prune
first, then unlearn; the masks stay fixed): ``retrain`` from scratch on ``D_r`` (the gold standard; with a
sparsity, the same mask on a fresh initialisation), ``finetune`` on ``D_r`` (FT), ``grad-ascent`` on ``D_f``
(GA: minimise ``-CE``), and ``l1-sparse``: FT with the sparsity-aware objective of the paper's Eq. (3),

    theta_u = argmin_theta  L_CE(theta; D_r) + gamma_t * ||theta||_1,   gamma_t = gamma * (1 - t / T)

(the linearly decaying schedule the paper recommends). A pruned model is fine-tuned on the whole
training set before unlearning (an accurate sparse original, as the paper's OMP models are); ``retrain``
rewinds to the original initialisation with that mask (a mask does not transfer to another random init).
Metrics follow the paper: accuracy on ``D_f``, on
``D_r`` and on the test set, a membership-inference efficacy on ``D_f`` (``mia_efficacy``), seconds, and
the average gap to retraining over those four numbers.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Registry
from ..training.loop import Callback, fit

log = logging.getLogger(__name__)

UNLEARNERS = Registry("unlearner")
GAP_METRICS = ("forget_acc", "retain_acc", "test_acc", "mia_efficacy")


@dataclass
class UnlearnConfig:
    """One unlearning run: forget set (``class:K`` or ``random:F``), unlearner, ``sparsity`` of the one-shot
    magnitude pruning done first (0 = dense), the original training's ``epochs`` (default the zoo recipe's) and
    the unlearners' budgets: FT / l1-sparse ``unlearn_epochs`` at ``lr``, GA ``ga_epochs`` at ``ga_lr``, ``gamma``;
    a pruned model is first fine-tuned ``recover_epochs`` on the whole training set (the recipe's lr).

    The paper's budgets (CIFAR-10: ~4000 steps, gamma ~1e-4, GA lr up to 1e-3) are scaled to runs of ~100
    steps: ``gamma * lr * steps``, the total L1 shrinkage, stays of the same order (1e-4 * 0.01 * 4000 = 4e-3
    there, 5e-3 * 0.01 * 100 = 5e-3 here), and GA takes the top of the paper's lr range."""

    dataset: str = "mnist1d"
    model: str | None = None
    forget: str = "class:3"
    method: str = "finetune"
    sparsity: float = 0.0
    seed: int = 0
    epochs: int | None = None
    unlearn_epochs: int = 10
    lr: float = 0.01
    ga_epochs: int = 5
    ga_lr: float = 1e-3
    gamma: float = 5e-3
    batch_size: int = 128
    recover_epochs: int = 5

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


def parse_forget(spec: str, y: Tensor, num_classes: int, seed: int = 0) -> tuple[str, Tensor]:
    """``class:K`` (every training example of class K) or ``random:F`` (a random fraction F in (0, 1)) ->
    (kind, sorted forget indices); anything else is an error naming ``--forget``."""
    kind, sep, arg = str(spec).partition(":")
    if kind == "class" and sep:
        try:
            k = int(arg)
        except ValueError:
            k = -1
        if not 0 <= k < num_classes or not bool((y == k).any()):
            raise ValueError(f"--forget class:{arg}: no such class; classes are 0..{num_classes - 1}")
        return "class", torch.nonzero(y == k).flatten()
    if kind == "random" and sep:
        try:
            f = float(arg)
        except ValueError:
            f = -1.0
        if not 0.0 < f < 1.0 or round(f * len(y)) < 1:
            raise ValueError(f"--forget random:{arg}: the fraction must be in (0, 1) and forget at least one "
                             f"example of {len(y)}")
        gen = torch.Generator().manual_seed(seed + 104729)
        return "random", torch.sort(torch.randperm(len(y), generator=gen)[:round(f * len(y))]).values
    raise ValueError(f"--forget must be class:K (K in 0..{num_classes - 1}) or random:F (F in (0, 1)), got {spec!r}")


@torch.no_grad()
def example_losses(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> Tensor:
    """``(N,)`` cross-entropy of each example, model in eval mode."""
    was = model.training
    model.eval()
    out = torch.cat([nn.functional.cross_entropy(model(x[i:i + batch_size]), y[i:i + batch_size], reduction="none")
                     for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def loss_threshold(member: Tensor, nonmember: Tensor) -> float:
    """The loss threshold ``tau`` ("member iff loss <= tau") with the best balanced accuracy on the two sets."""
    cand = torch.sort(torch.cat([member, nonmember])).values  # (M + N,)
    tpr = torch.searchsorted(torch.sort(member).values, cand, right=True).float() / len(member)
    tnr = 1 - torch.searchsorted(torch.sort(nonmember).values, cand, right=True).float() / len(nonmember)
    return float(cand[torch.argmax(tpr + tnr)])


def mia_efficacy(model: nn.Module, forget: tuple[Tensor, Tensor], retain: tuple[Tensor, Tensor],
                 test: tuple[Tensor, Tensor]) -> float:
    """Shadow-free loss-threshold membership inference (Yeom et al. 2018) as MIA-Efficacy (Jia et al. Sec. 5):
    ``tau`` separates retained training examples (members) from test examples (non-members) best; the
    efficacy is the fraction of forget examples the attack calls non-members (loss > tau): higher = forgotten."""
    tau = loss_threshold(example_losses(model, *retain), example_losses(model, *test))
    return float((example_losses(model, *forget) > tau).float().mean())


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy as a fraction (nan for an empty set)."""
    if len(y) == 0:
        return float("nan")
    from .metrics import predict

    return float((predict(model, x) == y).float().mean())


class L1Decay(Callback):
    """Adds ``gamma_t * sum_i |theta_i|`` to the loss, ``gamma_t = gamma * (1 - step / total)`` (Jia et al. Eq. 3)."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma

    def loss(self, state: Any, batch: Any, loss: Tensor) -> Tensor:
        g = self.gamma * (1 - state.step / max(1, state.total_steps))
        return loss + g * sum(p.abs().sum() for p in state.model.parameters())


def _fit(model: nn.Module, data: tuple[Tensor, Tensor], epochs: int, lr: float, cfg: UnlearnConfig,
         **kw: Any) -> None:
    fit(model, data, epochs=epochs, lr=lr, batch_size=cfg.batch_size, optimizer="sgd", seed=cfg.seed, **kw)


@UNLEARNERS.register("retrain")
def retrain(model: nn.Module, fresh: nn.Module, retain: tuple, forget: tuple, cfg: UnlearnConfig,
            recipe: dict[str, Any]) -> nn.Module:
    """Retrain from scratch on the retained data (with the trained model's masks when it was pruned)."""
    from ..masks import attach, attached

    masks = attached(model)
    if masks is not None:
        attach(fresh, {k: v.clone() for k, v in masks.masks.items()})
    fit(fresh, retain, seed=cfg.seed, **recipe)
    return fresh


@UNLEARNERS.register("finetune")
def finetune(model: nn.Module, fresh: nn.Module, retain: tuple, forget: tuple, cfg: UnlearnConfig,
             recipe: dict[str, Any]) -> nn.Module:
    """FT (Warnecke et al. 2023; Jia et al. Sec. 5): fine-tune the trained model on the retained data only."""
    _fit(model, retain, cfg.unlearn_epochs, cfg.lr, cfg)
    return model


@UNLEARNERS.register("grad-ascent")
def grad_ascent(model: nn.Module, fresh: nn.Module, retain: tuple, forget: tuple, cfg: UnlearnConfig,
                recipe: dict[str, Any]) -> nn.Module:
    """GA (Thudi et al. 2022): gradient ascent on the forget set, i.e. minimise ``-CE`` there."""
    _fit(model, forget, cfg.ga_epochs, cfg.ga_lr, cfg, weight_decay=0.0,
         loss_fn=lambda out, y: -nn.functional.cross_entropy(out, y, reduction="none"))
    return model


@UNLEARNERS.register("l1-sparse")
def l1_sparse(model: nn.Module, fresh: nn.Module, retain: tuple, forget: tuple, cfg: UnlearnConfig,
              recipe: dict[str, Any]) -> nn.Module:
    """l1-sparse (Jia et al. 2023, Eq. 3): FT on the retained data plus a linearly decaying L1 penalty."""
    _fit(model, retain, cfg.unlearn_epochs, cfg.lr, cfg, callbacks=[L1Decay(cfg.gamma)])
    return model


def check_config(cfg: UnlearnConfig) -> None:
    """Checks that need no data (the forget spec is checked against the labels in ``prepare``)."""
    from ..errors import check_sparsity
    from .backdoor import DATASET_MODELS

    if cfg.dataset not in DATASET_MODELS:
        raise ValueError(f"--dataset must be one of {', '.join(DATASET_MODELS)}, got {cfg.dataset!r}")
    if cfg.method not in UNLEARNERS:
        raise ValueError(f"--method must be one of {', '.join(UNLEARNERS.names())}, got {cfg.method!r}")
    check_sparsity(cfg.sparsity, "--sparsity")
    for name in ("unlearn_epochs", "ga_epochs", "recover_epochs"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if cfg.epochs is not None and (isinstance(cfg.epochs, bool) or not isinstance(cfg.epochs, int) or cfg.epochs < 1):
        raise ValueError(f"--epochs must be a positive integer, got {cfg.epochs!r}")
    if not (cfg.lr > 0 and cfg.ga_lr > 0 and cfg.gamma >= 0):
        raise ValueError(f"lr and ga_lr must be > 0 and gamma >= 0, got {cfg.lr!r}, {cfg.ga_lr!r}, {cfg.gamma!r}")


@dataclass
class Prepared:
    """The data split into forget / retain / test, the trained model and how to build a fresh one."""

    data: Any
    forget_kind: str
    forget_idx: Tensor
    retain_idx: Tensor
    trained: nn.Module
    model_name: str
    recipe: dict[str, Any]
    train_s: float
    cache: dict[float, nn.Module] = field(default_factory=dict)

    def sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``forget``, ``retain`` (training examples) and ``test`` (for class forgetting: the other classes)."""
        d = self.data
        xt, yt = d.x_test, d.y_test
        if self.forget_kind == "class":
            keep = yt != d.y_train[self.forget_idx[0]]
            xt, yt = xt[keep], yt[keep]
        return {"forget": (d.x_train[self.forget_idx], d.y_train[self.forget_idx]),
                "retain": (d.x_train[self.retain_idx], d.y_train[self.retain_idx]), "test": (xt, yt)}

    def fresh(self, seed: int) -> nn.Module:
        """The original initialisation (``seed``), for retraining from scratch."""
        from ..zoo.models import get_model

        return get_model(self.model_name, seed=seed)

    def pruned(self, sparsity: float, cfg: UnlearnConfig) -> nn.Module:
        """A copy of the trained model pruned one-shot by magnitude to ``sparsity`` and recovered on the whole
        training set for ``cfg.recover_epochs`` (masks kept); cached per sparsity."""
        from ..api import prune_
        from ..oneshot import Magnitude

        if sparsity not in self.cache:
            model = copy.deepcopy(self.trained)
            if sparsity > 0:
                prune_(model, Magnitude(sparsity=sparsity))
                recipe = {k: v for k, v in self.recipe.items() if k != "epochs"}
                fit(model, self.data.train, epochs=cfg.recover_epochs, seed=cfg.seed, **recipe)
            self.cache[sparsity] = model
        return copy.deepcopy(self.cache[sparsity])


def prepare(cfg: UnlearnConfig) -> Prepared:
    """Check the config, split the data, and train the original model on the whole training set."""
    from ..zoo.models import RECIPES
    from .backdoor import load

    check_config(cfg)
    data, model, name = load(cfg.dataset, cfg.model, cfg.seed)
    kind, forget_idx = parse_forget(cfg.forget, data.y_train, data.num_classes, cfg.seed)
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[forget_idx] = False
    recipe = dict(RECIPES.get(name, RECIPES["cnn1d"]))
    if cfg.epochs is not None:
        recipe["epochs"] = cfg.epochs
    t = time.perf_counter()
    fit(model, data.train, seed=cfg.seed, **recipe)
    return Prepared(data, kind, forget_idx, torch.nonzero(keep).flatten(), model, name, recipe,
                    time.perf_counter() - t)


def measure(model: nn.Module, sets: dict[str, tuple[Tensor, Tensor]]) -> dict[str, float]:
    """forget / retain / test accuracy and MIA efficacy of ``model``."""
    return {"forget_acc": accuracy(model, *sets["forget"]), "retain_acc": accuracy(model, *sets["retain"]),
            "test_acc": accuracy(model, *sets["test"]),
            "mia_efficacy": mia_efficacy(model, sets["forget"], sets["retain"], sets["test"])}


def unlearn(prep: Prepared, method: str, sparsity: float, cfg: UnlearnConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Run ``method`` on the (pruned, recovered) trained model; the model and its metrics (seconds: unlearning
    alone)."""
    from ..masks import attached

    model = prep.pruned(sparsity, cfg)
    sets = prep.sets()
    t = time.perf_counter()
    out = UNLEARNERS.get(method)(model, prep.fresh(cfg.seed), sets["retain"], sets["forget"], cfg, prep.recipe)
    seconds = time.perf_counter() - t
    masks = attached(out)
    metrics = {**measure(out, sets), "seconds": seconds,
               "sparsity": masks.sparsity() if masks is not None else 0.0}
    return out, metrics


def gap(metrics: dict[str, float], reference: dict[str, float]) -> float:
    """Average absolute gap to the retrained model over forget / retain / test accuracy and MIA efficacy."""
    return sum(abs(metrics[k] - reference[k]) for k in GAP_METRICS) / len(GAP_METRICS)


def run_unlearn(cfg: UnlearnConfig, prep: Prepared | None = None,
                reference: dict[str, float] | None = None) -> dict[str, Any]:
    """One unlearning run with its gap to a dense retrain (computed here unless ``reference`` is given)."""
    prep = prep or prepare(cfg)
    _, metrics = unlearn(prep, cfg.method, cfg.sparsity, cfg)
    if reference is None:
        reference = metrics if (cfg.method == "retrain" and cfg.sparsity == 0) else \
            unlearn(prep, "retrain", 0.0, cfg)[1]
    metrics["gap_to_retrain"] = gap(metrics, reference)
    metrics.update({"retrain_reference": {k: reference[k] for k in GAP_METRICS}, "train_s": prep.train_s,
                    "forget_examples": len(prep.forget_idx), "model": prep.model_name})
    log.info("unlearn %s %s sparsity %s: %s", cfg.forget, cfg.method, cfg.sparsity, metrics)
    return metrics
