"""Sweeps: model x method x sparsity x seed, each run stored in the results store; a rerun resumes.

A sweep config (JSON/YAML file or dict)::

    {"experiment": "demo", "model": "cnn1d", "dataset": {"name": "mnist1d"},
     "dense": {"epochs": 60},                      # training recipe; defaults: prunekit.zoo.RECIPES[model]
     "methods": [{"type": "magnitude", "scope": "global", "finetune": {"epochs": 20}},
                 {"type": "magnitude", "scope": "global", "finetune": null},
                 {"type": "gradual_magnitude", "scope": "global", "start": "scratch"}],
     "sparsities": [0.5, 0.8, 0.9, 0.95], "seeds": [0, 1, 2]}

For each model and seed the dense model is trained once (kept in memory for the sweep) and stored
as the run ``method="dense"``, ``sparsity=0``. One-shot methods (any registered ``prune_`` config:
magnitude, random, taylor ...) copy the dense weights, ``prune_``, evaluate, and optionally
fine-tune with the masks kept. ``gradual_magnitude`` trains with the ``GradualMagnitude`` callback
(Zhu & Gupta 2017, eq. 1) and ``gradual_movement`` with ``GradualMovement`` (Sanh et al. 2020, same
schedule), from scratch by default with the dense recipe's epochs, or from the dense weights
(``"start": "dense"``). The whole config is checked before any training.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import check_choice, check_sparsity
from .store import DEFAULT_DB, DuplicateRunError, ResultsStore, RunRecord, run_key

log = logging.getLogger(__name__)

GRADUAL = "gradual_magnitude"
BASELINE = "dense"
TOP_KEYS = ("experiment", "description", "model", "dataset", "dense", "methods", "sparsities", "seeds", "device",
            "threads")
REQUIRED_KEYS = ("experiment", "model", "dataset", "methods", "sparsities")
TRAIN_KEYS = ("epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "lr_schedule", "warmup_steps")
ONESHOT_EXTRA_KEYS = ("type", "name", "finetune")
GRADUAL_KEYS = ("type", "name", "start", "begin_step", "end_step", "frequency", "initial_sparsity", "pattern",
                "scope", "allocation", "exclude", *TRAIN_KEYS)
STARTS = ("scratch", "dense")
OPTIMIZERS = ("sgd", "adamw", "adam")
LR_SCHEDULES = ("cosine", "constant", "step")
FIT_DEFAULTS: dict[str, Any] = {"batch_size": 128, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
                                "weight_decay": 5e-4, "lr_schedule": "cosine", "warmup_steps": 0}


# ----------------------------------------------------------------------------------------------- config


def load_config(config: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A sweep config as a dict, from a dict or a ``.json`` / ``.yaml`` / ``.yml`` file."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config must be a path to a .json/.yaml file or a dict, got {type(config).__name__}")
    path = Path(config)
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ValueError(f"config {str(path)!r} must end in .json, .yaml or .yml")
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: both say where the syntax broke
        raise ValueError(f"config file {str(path)!r} could not be parsed: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping (JSON object), got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class ModelSpec:
    """A zoo model name and its constructor arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The model's name in reports: its zoo name, plus its arguments if any."""
        if not self.args:
            return self.name
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in sorted(self.args.items())) + ")"


@dataclass
class MethodSpec:
    """One method of the sweep: its label, type, its own fields and its training recipe overrides."""

    label: str
    type: str
    fields: dict[str, Any]  # config fields (one-shot) or GradualMagnitude arguments
    train: dict[str, Any] | None  # fine-tune (one-shot) or training (gradual) overrides; None: no fine-tune
    start: str = "scratch"  # gradual only

    @property
    def gradual(self) -> bool:
        """True for gradual magnitude or movement pruning (a training run), False for one-shot methods."""
        return self.type in _gradual_types()


@dataclass
class Sweep:
    """A checked sweep config."""

    experiment: str
    models: list[ModelSpec]
    dataset: dict[str, Any]
    dense: dict[str, Any]
    methods: list[MethodSpec]
    sparsities: list[float]
    seeds: list[int]
    device: str = "cpu"
    threads: int | None = None  # torch threads while the sweep runs (None: leave as is); not in the run key


def _check_keys(d: Mapping[str, Any], accepted: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(d) - set(accepted))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; accepted: {', '.join(accepted)}")


def _check_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return v


def _check_number(v: Any, name: str, low: float, high: float | None = None, low_open: bool = False) -> float:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and v == v
    ok = ok and (v > low if low_open else v >= low) and (high is None or v < high)
    if not ok:
        bound = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"{name} must be a number in {bound}, got {v!r}")
    return float(v)


def check_train(d: Any, where: str) -> dict[str, Any]:
    """Check a training recipe (keys of ``prunekit.training.fit``) and return it."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be a mapping of training settings ({', '.join(TRAIN_KEYS)}), got {d!r}")
    _check_keys(d, TRAIN_KEYS, where)
    checks: dict[str, Callable[[Any, str], Any]] = {
        "epochs": lambda v, n: _check_int(v, n, 1),
        "batch_size": lambda v, n: _check_int(v, n, 1),
        "warmup_steps": lambda v, n: _check_int(v, n, 0),
        "lr": lambda v, n: _check_number(v, n, 0.0, low_open=True),
        "momentum": lambda v, n: _check_number(v, n, 0.0, 1.0),
        "weight_decay": lambda v, n: _check_number(v, n, 0.0),
        "optimizer": lambda v, n: check_choice(v, n, OPTIMIZERS),
        "lr_schedule": lambda v, n: check_choice(v, n, LR_SCHEDULES),
    }
    for k, v in d.items():
        checks[k](v, f"{where}.{k}")
    return dict(d)


def _zoo() -> Any:
    from .. import zoo

    return zoo


def _check_args(fn: Callable[..., Any], args: Mapping[str, Any], where: str) -> None:
    try:
        inspect.signature(fn).bind(**args)
    except TypeError as e:
        accepted = ", ".join(inspect.signature(fn).parameters)
        raise ValueError(f"{where}: {e}; accepted arguments: {accepted}") from None


def _check_models(raw: Any) -> list[ModelSpec]:
    zoo = _zoo()
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise ValueError("model must name at least one model")
    specs = []
    for i, item in enumerate(items):
        where = "model" if not isinstance(raw, list) else f"model[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ValueError(f"{where} must be a model name or {{'name': ..., <arguments>}}, got {item!r}")
        name = item["name"]
        check_choice(name, where, zoo.MODELS.names())
        args = {k: v for k, v in item.items() if k != "name"}
        _check_args(zoo.MODELS.get(name), args, f"{where} {name!r}")
        specs.append(ModelSpec(name, args))
    if len({s.label for s in specs}) != len(specs):
        raise ValueError(f"model lists the same model twice: {[s.label for s in specs]}")
    return specs


def _check_dataset(raw: Any) -> dict[str, Any]:
    zoo = _zoo()
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise ValueError(f"dataset must be a data set name or {{'name': ..., <arguments>}}, got {raw!r}")
    check_choice(raw["name"], "dataset.name", zoo.DATASETS.names())
    _check_args(zoo.DATASETS.get(raw["name"]), {k: v for k, v in raw.items() if k != "name"},
                f"dataset {raw['name']!r}")
    return dict(raw)


def _gradual_types() -> list[str]:
    """Spellings of the training methods a sweep runs: those on the cubic schedule (``GradualMagnitude`` kin)."""
    from ..registry import METHODS
    from ..training import GradualMagnitude

    return sorted(s for e in METHODS.entries("training") if isinstance(e.config, type)
                  and issubclass(e.config, GradualMagnitude) for s in (e.name, *e.aliases))


def _method_types() -> list[str]:
    """Every method type a sweep accepts, from the registry: one-shot methods and gradual training."""
    from ..registry import METHODS

    return sorted([*METHODS.spellings("oneshot"), *_gradual_types()])


def _oneshot_config(fields: Mapping[str, Any], mtype: str, sparsity: float) -> Any:
    from ..config import Config

    return Config.from_dict({**fields, "type": mtype, "sparsity": sparsity})


def _gradual_callback(mtype: str, fields: Mapping[str, Any], sparsity: float) -> Any:
    from ..registry import METHODS

    return METHODS.config(mtype, kind="training")(final_sparsity=sparsity, **fields)


def _default_label(mtype: str, fields: Mapping[str, Any], finetune: bool) -> str:
    label = mtype
    if "scope" in fields:
        label += f"-{fields['scope']}"
    if fields.get("allocation"):
        label += f"-{fields['allocation']}"
    if fields.get("pattern") not in (None, "unstructured"):
        label += f"-{fields['pattern']}"
    return label + ("+ft" if finetune else "")


def _check_method(raw: Any, i: int, types: list[str]) -> MethodSpec:
    where = f"methods[{i}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be a mapping with a 'type', got {raw!r}")
    mtype = check_choice(raw.get("type"), f"{where}.type", types)
    if mtype in _gradual_types():
        _check_keys(raw, GRADUAL_KEYS, where)
        fields = {k: v for k, v in raw.items() if k not in ("type", "name", "start", *TRAIN_KEYS)}
        train = check_train({k: v for k, v in raw.items() if k in TRAIN_KEYS}, where)
        start = check_choice(raw.get("start", "scratch"), f"{where}.start", STARTS)
        label = raw.get("name") or _default_label(mtype, fields, False) + ("-from-dense" if start == "dense" else "")
        spec = MethodSpec(label, mtype, fields, train, start)
    else:
        ft = raw.get("finetune")
        train = None if ft is None else check_train(ft, f"{where}.finetune")
        fields = {k: v for k, v in raw.items() if k not in ONESHOT_EXTRA_KEYS}
        if "sparsity" in fields:
            raise ValueError(f"{where}: give sparsities in the sweep's 'sparsities' list, not in the method")
        spec = MethodSpec(raw.get("name") or _default_label(mtype, fields, train is not None), mtype, fields, train)
    if not isinstance(spec.label, str) or not spec.label or spec.label == BASELINE:
        raise ValueError(f"{where}.name must be a non-empty string other than {BASELINE!r}, got {spec.label!r}")
    return spec


def _check_sparsities(raw: Any) -> list[float]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"sparsities must be a non-empty list of numbers in (0, 1), got {raw!r}")
    out = []
    for i, s in enumerate(raw):
        v = check_sparsity(s, f"sparsities[{i}]")
        if v == 0.0:
            raise ValueError(f"sparsities[{i}] must be in (0, 1): the dense model (sparsity 0) is always run")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"sparsities has duplicates: {raw}")
    return out


def _check_seeds(raw: Any) -> list[int]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {raw!r}")
    seeds = [_check_int(s, f"seeds[{i}]", 0) for i, s in enumerate(raw)]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds has duplicates: {raw}")
    return seeds


def _check_device(raw: Any) -> str:
    try:
        dev = torch.device(raw)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device string such as 'cpu' or 'cuda', got {raw!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {raw!r} asks for CUDA but no CUDA device is available; use 'cpu'")
    return str(raw)


def validate_config(config: str | os.PathLike[str] | Mapping[str, Any]) -> Sweep:
    """Check a whole sweep config (every method at every sparsity) and return it as a ``Sweep``."""
    raw = load_config(config)
    _check_keys(raw, TOP_KEYS, "sweep config")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"sweep config misses the keys {missing}; required: {', '.join(REQUIRED_KEYS)}")
    if not isinstance(raw["experiment"], str) or not raw["experiment"].strip():
        raise ValueError(f"experiment must be a non-empty string, got {raw['experiment']!r}")
    if not isinstance(raw["methods"], list) or not raw["methods"]:
        raise ValueError(f"methods must be a non-empty list of method mappings, got {raw['methods']!r}")
    types = _method_types()
    methods = [_check_method(m, i, types) for i, m in enumerate(raw["methods"])]
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise ValueError(f"method names must be unique; got {labels}: give each method a distinct 'name'")
    sweep = Sweep(raw["experiment"], _check_models(raw["model"]), _check_dataset(raw["dataset"]),
                  check_train(raw.get("dense", {}), "dense"), methods, _check_sparsities(raw["sparsities"]),
                  _check_seeds(raw.get("seeds", [0])), _check_device(raw.get("device", "cpu")),
                  None if raw.get("threads") is None else _check_int(raw["threads"], "threads", 1))
    for m in sweep.models:
        recipe(m, sweep.dense)  # every model must have an epoch count
    for spec in methods:
        for s in sweep.sparsities:  # builds each method config: unknown fields, bad patterns ... fail here
            _build_method(spec, s, f"methods[{labels.index(spec.label)}] at sparsity {s}")
    return sweep


def _build_method(spec: MethodSpec, sparsity: float, where: str) -> Any:
    try:
        if spec.gradual:
            return _gradual_callback(spec.type, spec.fields, sparsity)
        return _oneshot_config(spec.fields, spec.type, sparsity)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} ({spec.label}): {e}") from e


def recipe(model: ModelSpec, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The dense training recipe: ``fit`` defaults < ``prunekit.zoo.RECIPES[model]`` < the config's values."""
    zoo_recipe = {k: v for k, v in getattr(_zoo(), "RECIPES", {}).get(model.name, {}).items() if k in TRAIN_KEYS}
    out = {**FIT_DEFAULTS, **zoo_recipe, **overrides}
    if "epochs" not in out:
        raise ValueError(f"dense.epochs is required: model {model.name!r} has no default recipe in "
                         "prunekit.zoo.RECIPES")
    return check_train(out, f"recipe of {model.name!r}")


# -------------------------------------------------------------------------------------------------- plan


@dataclass
class PlannedRun:
    """One run of a sweep: what to do and its stored config (whose hash is the resume key)."""

    model: ModelSpec
    method: MethodSpec | None  # None: the dense run
    sparsity: float
    seed: int
    config: dict[str, Any]
    key: str

    @property
    def label(self) -> str:
        """``<model> <method>@<sparsity> seed <seed>``, for logs and progress lines."""
        name = self.method.label if self.method else BASELINE
        return f"{self.model.label} {name}@{self.sparsity:g} seed {self.seed}"


def _method_dict(spec: MethodSpec, sparsity: float) -> dict[str, Any]:
    """The fully resolved method settings (defaults filled in), as stored with the run."""
    built = _build_method(spec, sparsity, spec.label)
    if spec.gradual:
        import dataclasses

        d = {f.name: getattr(built, f.name) for f in dataclasses.fields(built) if f.init}
        d["pattern"] = str(d["pattern"])
        return {"type": spec.type, "start": spec.start, **d}
    return built.to_dict()


def _run_config(base: dict[str, Any], spec: MethodSpec, sparsity: float, seed: int,
                dense: dict[str, Any]) -> dict[str, Any]:
    """The stored config of one pruned run; the dense recipe is in it only if the run starts from dense."""
    cfg = {**base, "method": spec.label, "method_config": _method_dict(spec, sparsity), "sparsity": sparsity,
           "seed": seed}
    if spec.gradual:
        cfg["train"] = {**dense, **(spec.train or {})}
    else:
        cfg["finetune"] = None if spec.train is None else {**dense, **spec.train}
    if not spec.gradual or spec.start == "dense":
        cfg["dense"] = dense
    return cfg


def plan_runs(sweep: Sweep) -> list[PlannedRun]:
    """Every run of the sweep in order: per model and seed, the dense run then each method x sparsity."""
    runs = []
    for model in sweep.models:
        dense = recipe(model, sweep.dense)
        base = {"model": model.name, "model_args": model.args, "dataset": sweep.dataset}
        for seed in sweep.seeds:
            cfg = {**base, "method": BASELINE, "method_config": {"type": BASELINE}, "sparsity": 0.0, "seed": seed,
                   "dense": dense}
            runs.append(PlannedRun(model, None, 0.0, seed, cfg, run_key(sweep.experiment, cfg)))
            for spec in sweep.methods:
                for s in sweep.sparsities:
                    cfg = _run_config(base, spec, s, seed, dense)
                    runs.append(PlannedRun(model, spec, s, seed, cfg, run_key(sweep.experiment, cfg)))
    return runs


# --------------------------------------------------------------------------------------------- execute


def _fit(model: nn.Module, data: Any, train: Mapping[str, Any], seed: int, device: str,
         callbacks: tuple[Any, ...] = ()) -> float:
    """Train with ``prunekit.training.fit``; returns the seconds it took."""
    from ..training import fit

    t0 = time.perf_counter()
    fit(model, data, seed=seed, device=device, callbacks=callbacks, **train)
    return time.perf_counter() - t0


def measure(model: nn.Module, split: Any, device: str) -> tuple[dict[str, Any], dict[str, float]]:
    """Test accuracy and loss, sparsity (exact zeros) of prunable weights and of the model, per layer."""
    from ..api import sparsity_report
    from ..training import evaluate

    metrics: dict[str, Any] = dict(evaluate(model, split.test, device=device))
    rep = sparsity_report(model)
    params = sum(p.numel() for p in model.parameters())
    nonzeros = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    metrics.update(sparsity=rep.sparsity, params=params, nonzeros=nonzeros,
                   model_sparsity=1.0 - nonzeros / max(1, params), device=device)
    metrics.update(_macs(model, split))
    return metrics, {r.name: r.sparsity for r in rep.layers}


def _macs(model: nn.Module, split: Any) -> dict[str, Any]:
    """Dense and sparse MACs of one example (``prunekit.accounting.totals``)."""
    from ..accounting import totals

    try:
        t = totals(model, split.x_test[:1].to(next(model.parameters()).device))
    except Exception as e:  # accounting is a measurement extra: a failure there must not lose the run
        log.warning("MAC count failed (%s); run stored without it", e)
        return {}
    return {k: t[k] for k in ("macs", "sparse_macs") if k in t}


@dataclass
class _Context:
    sweep: Sweep
    split: Any
    dense_state: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    dense_train_s: dict[tuple[str, int], float] = field(default_factory=dict)
    dense_acc: dict[tuple[str, int], float] = field(default_factory=dict)


def _new_model(model: ModelSpec, seed: int) -> nn.Module:
    return _zoo().get_model(model.name, seed=seed, **model.args)


def _dense_model(ctx: _Context, run: PlannedRun) -> nn.Module:
    """A fresh copy of the trained dense model of (model, seed); trained at first use, kept for the sweep."""
    key = (run.model.label, run.seed)
    if key not in ctx.dense_state:
        net = _new_model(run.model, run.seed)
        ctx.dense_train_s[key] = _fit(net, ctx.split.train, recipe(run.model, ctx.sweep.dense), run.seed,
                                      ctx.sweep.device)
        ctx.dense_state[key] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        ctx.dense_acc[key] = measure(net, ctx.split, ctx.sweep.device)[0]["accuracy"]
    net = _new_model(run.model, run.seed)
    net.load_state_dict(ctx.dense_state[key])
    return net.to(ctx.sweep.device)


def _run_dense(ctx: _Context, run: PlannedRun) -> RunRecord:
    net = _dense_model(ctx, run)
    train_s = ctx.dense_train_s[(run.model.label, run.seed)]
    metrics, layers = measure(net, ctx.split, ctx.sweep.device)
    return _record(ctx, run, metrics, layers, {"train_s": train_s, "total_s": train_s})


def _run_oneshot(ctx: _Context, run: PlannedRun) -> RunRecord:
    from ..api import prune_

    assert run.method is not None
    net = _dense_model(ctx, run)
    cfg = _oneshot_config(run.method.fields, run.method.type, run.sparsity)
    t0 = time.perf_counter()
    report = prune_(net, cfg, data=ctx.split.train)
    prune_s = time.perf_counter() - t0
    timings = {"prune_s": prune_s}
    extra: dict[str, Any] = {"dense_accuracy": ctx.dense_acc[(run.model.label, run.seed)],
                             "target_sparsity": run.sparsity, "prune_report_sparsity": report.sparsity}
    if run.method.train is not None:
        extra["accuracy_before_finetune"] = measure(net, ctx.split, ctx.sweep.device)[0]["accuracy"]
        timings["finetune_s"] = _fit(net, ctx.split.train, run.config["finetune"], run.seed, ctx.sweep.device)
    metrics, layers = measure(net, ctx.split, ctx.sweep.device)
    timings["total_s"] = sum(timings.values())
    return _record(ctx, run, {**metrics, **extra}, layers, timings)


def _run_gradual(ctx: _Context, run: PlannedRun) -> RunRecord:
    assert run.method is not None
    extra: dict[str, Any] = {"target_sparsity": run.sparsity}
    if run.method.start == "dense":
        net = _dense_model(ctx, run)
        extra["dense_accuracy"] = ctx.dense_acc[(run.model.label, run.seed)]
    else:
        net = _new_model(run.model, run.seed)
    cb = _gradual_callback(run.method.type, run.method.fields, run.sparsity)
    train_s = _fit(net, ctx.split.train, run.config["train"], run.seed, ctx.sweep.device, (cb,))
    metrics, layers = measure(net, ctx.split, ctx.sweep.device)
    return _record(ctx, run, {**metrics, **extra}, layers, {"train_s": train_s, "total_s": train_s})


def _record(ctx: _Context, run: PlannedRun, metrics: dict[str, Any], layers: dict[str, float],
            timings: dict[str, float]) -> RunRecord:
    return RunRecord(ctx.sweep.experiment, run.config, kind="model", metrics=metrics, per_layer=layers,
                     timings=timings)


def execute(ctx: _Context, run: PlannedRun) -> RunRecord:
    """Do one planned run and return its record (not stored yet)."""
    if run.method is None:
        return _run_dense(ctx, run)
    if run.method.gradual:
        return _run_gradual(ctx, run)
    return _run_oneshot(ctx, run)


@dataclass
class SweepResult:
    """What a sweep did: runs done now, runs found stored (skipped), and the database path."""

    experiment: str
    db: Path
    ran: list[str] = field(default_factory=list)  # run keys
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        """Runs in the sweep: done now plus found stored."""
        return len(self.ran) + len(self.skipped)


def load_data(sweep: Sweep) -> Any:
    """The sweep's data set (a zoo ``DataSplit``), checked to be a train/test classification split."""
    args = {k: v for k, v in sweep.dataset.items() if k != "name"}
    split = _zoo().get_dataset(sweep.dataset["name"], **args)
    if not (hasattr(split, "train") and hasattr(split, "test")):
        raise ValueError(f"dataset {sweep.dataset['name']!r} is not a train/test classification split; "
                         "sweeps need one such as 'mnist1d' or 'digits'")
    return split


def run_sweep(
    config: str | os.PathLike[str] | Mapping[str, Any],
    db: str | os.PathLike[str] = DEFAULT_DB,
    progress: bool = False,
    on_run: Callable[[PlannedRun, RunRecord | None], None] | None = None,
) -> SweepResult:
    """Run a sweep, storing each run in ``db`` and skipping runs stored there already (resume).

    The config is checked and the database opened (read-only or corrupt files fail here) before any
    training. ``on_run(run, record)`` is called after each run (``record`` is None when it was skipped);
    ``progress=True`` shows a rich progress bar (the CLI turns it on).
    """
    sweep = validate_config(config)
    plan = plan_runs(sweep)
    t0 = time.perf_counter()
    with ResultsStore(db) as store:
        result = SweepResult(sweep.experiment, store.path)
        stored = {r.key for r in plan if store.has(r.key)}
        todo = [r for r in plan if r.key not in stored]
        result.skipped = [r.key for r in plan if r.key in stored]
        log.info("sweep %r: %d runs, %d stored already, %d to do", sweep.experiment, len(plan), len(stored),
                 len(todo))
        for r in plan:
            if r.key in stored and on_run is not None:
                on_run(r, None)
        if todo:
            ctx = _Context(sweep, load_data(sweep))
            with _threads(sweep.threads), _bar(progress, len(todo)) as advance:
                for i, run in enumerate(todo):
                    if store.has(run.key):  # another process sharing the database did it meanwhile
                        result.skipped.append(run.key)
                        advance(run.label)
                        continue
                    rec = execute(ctx, run)
                    try:
                        store.add(rec)
                    except DuplicateRunError:
                        log.warning("%s was stored by another process meanwhile; keeping that one", run.label)
                    result.ran.append(run.key)
                    log.info("[%d/%d] %s: accuracy %.4f, sparsity %.4f (%.1f s)", i + 1, len(todo), run.label,
                             rec.metrics["accuracy"], rec.metrics["sparsity"], rec.timings.get("total_s", 0.0))
                    advance(run.label)
                    if on_run is not None:
                        on_run(run, rec)
    result.seconds = time.perf_counter() - t0
    return result


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block and restore them after (small models run best on 1)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class _bar:
    """A rich progress bar over the runs to do, or nothing."""

    def __init__(self, on: bool, total: int) -> None:
        self.on, self.total, self.p = on, total, None

    def __enter__(self) -> Callable[[str], None]:
        if not self.on:
            return lambda label: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn())
        self.p.start()
        task = self.p.add_task("sweep", total=self.total)
        return lambda label: self.p.update(task, advance=1, description=label)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.p is not None:
            self.p.stop()
