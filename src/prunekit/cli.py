"""The ``prunekit`` command: thin; parses flags and files into configs and calls the library."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(help="Prune neural networks and their training data, on PyTorch.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
console = Console()
err_console = Console(stderr=True)


def _fail(e: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


def _source(source: str) -> tuple[Any, dict[str, Any], dict | None]:
    """A zoo model name (fresh weights) or a checkpoint folder -> (model, model spec, masks)."""
    from .checkpoint import load_checkpoint
    from .zoo import MODELS, get_model

    if Path(source).exists() or "/" in source or source.startswith("."):
        model, manifest, masks = load_checkpoint(source)
        return model, manifest, masks
    if source not in MODELS:
        raise ValueError(f"{source!r} is neither a checkpoint folder nor a zoo model; zoo models: "
                         f"{', '.join(MODELS.names())}")
    return get_model(source, seed=0), {"model": {"name": source, "kwargs": {}}}, None


def _dataset(name: str | None, manifest: dict[str, Any]) -> Any:
    from .zoo import RECIPE_DATASETS, get_dataset, load_user_data

    name = name or manifest.get("dataset") or RECIPE_DATASETS.get(manifest["model"]["name"])
    if name is None:
        return None
    return load_user_data(name) if Path(name).exists() else get_dataset(name)


@app.command()
def train(
    model: str = typer.Argument(..., help="zoo model name, e.g. cnn1d"),
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write"),
    dataset: str | None = typer.Option(None, help="zoo data set name or a local .npz/.csv file"),
    epochs: int | None = typer.Option(None, help="default: the model's recipe"),
    seed: int = typer.Option(0),
) -> None:
    """Train a zoo model densely and save a checkpoint."""
    from .checkpoint import save_checkpoint
    from .training import evaluate, fit
    from .zoo import RECIPES, get_model

    try:
        net = get_model(model, seed=seed)
        data = _dataset(dataset, {"model": {"name": model}})
        if data is None:
            raise ValueError(f"no default data set for model {model!r}: pass --dataset")
        recipe = dict(RECIPES.get(model, dict(epochs=20, lr=0.05, optimizer="sgd")))
        if epochs is not None:
            recipe["epochs"] = epochs
    except (ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    fit(net, data.train, seed=seed, progress=sys.stderr.isatty(), **recipe)
    metrics = evaluate(net, data.test)
    save_checkpoint(out, net, {"name": model, "kwargs": {}}, extra={"dataset": data.name, "metrics": metrics,
                                                                     "recipe": recipe, "seed": seed})
    console.print(f"test accuracy {metrics['accuracy']:.4f}; checkpoint written to {out}")


@app.command()
def prune(
    source: str = typer.Argument(..., help="zoo model name or checkpoint folder"),
    out: Path = typer.Option(..., "--out", help="folder for pruned weights, masks and manifest"),
    method: str = typer.Option("magnitude", help="magnitude | random | taylor"),
    sparsity: float | None = typer.Option(None, help="fraction of zeros in [0, 1) (not with N:M)"),
    pattern: str = typer.Option("unstructured", help="unstructured | N:M (e.g. 2:4) | block:HxW | channel"),
    scope: str = typer.Option("layer", help="layer | global"),
    allocation: str | None = typer.Option(None, help="uniform | erk | er | lamp (layer scope); with --structured: "
                                          "uniform | global"),
    dataset: str | None = typer.Option(None, help="data for taylor / fine-tuning / evaluation"),
    finetune_epochs: int = typer.Option(0, help="fine-tune with masks kept after pruning"),
    structured: bool = typer.Option(False, "--structured", help="remove channels/heads for real"),
    target_macs: float | None = typer.Option(None, help="with --structured: keep this fraction of MACs"),
    target_params: float | None = typer.Option(None, help="with --structured: keep this fraction of params"),
    importance: str = typer.Option(
        "l2", help="with --structured: l1 | l2 | taylor | fpgm | bn_scale | fluctuation | random"
    ),
    ignore: list[str] = typer.Option([], help="with --structured: module names never touched"),
    round_to: int = typer.Option(1, help="with --structured: kept widths are multiples of this"),
    remove_blocks: str = typer.Option("0", help="with --structured: fraction of repeated blocks removed first, "
                                      "or 'auto' (blocks first down to the budget, then widths)"),
) -> None:
    """Prune a model (masks, or real removal with --structured) and save weights, masks and a manifest."""
    if structured:
        from .structured.cli import blocks_arg, prune_structured

        try:
            prune_structured(source, out=out, target_macs=target_macs, target_params=target_params,
                             importance=importance, ignore=ignore, dataset=dataset, finetune_epochs=finetune_epochs,
                             allocation=allocation or "uniform", round_to=round_to,
                             remove_blocks=blocks_arg(remove_blocks))
        except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
            _fail(e)
        return
    from .api import prune_
    from .checkpoint import save_checkpoint
    from .config import CONFIGS, Config
    from .training import evaluate, fit

    try:
        cls = CONFIGS.get(method)
        fields = {f.name for f in dataclasses.fields(cls)}
        cfg_dict = {"type": method, "sparsity": sparsity, "pattern": pattern, "scope": scope, "allocation": allocation}
        cfg = Config.from_dict({k: v for k, v in cfg_dict.items() if k in fields or k == "type"})
        if finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
        model, manifest, _ = _source(source)
        data = _dataset(dataset, manifest)
        if (method == "taylor" or finetune_epochs) and data is None:
            raise ValueError(f"method {method!r} / fine-tuning needs --dataset")
    except (ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    try:
        report = prune_(model, cfg, data=data.train if data is not None else None)
    except ValueError as e:
        _fail(e)
    metrics: dict[str, float] = {}
    if data is not None:
        metrics["accuracy_pruned"] = evaluate(model, data.test)["accuracy"]
        if finetune_epochs:
            fit(model, data.train, epochs=finetune_epochs, lr=0.01, progress=sys.stderr.isatty())
            metrics["accuracy_finetuned"] = evaluate(model, data.test)["accuracy"]
    masks = report.masks.bake() if report.masks is not None else None
    save_checkpoint(out, model, manifest["model"], masks,
                    extra={"method": cfg.to_dict(), "report": report.to_dict(), "metrics": metrics,
                           "dataset": data.name if data is not None else None})
    console.print(report.to_markdown())
    if metrics:
        console.print(json.dumps(metrics))
    console.print(f"sparsity {report.sparsity:.4f}; written to {out}")


@app.command()
def inspect(
    source: str = typer.Argument(..., help="zoo model name or checkpoint folder"),
    batch: int = typer.Option(1, help="batch size of the example input for MACs"),
) -> None:
    """Per-layer table of params, non-zeros, sparsity and MACs of a model or checkpoint."""
    from .accounting import format_table, layer_table, totals
    from .zoo import example_inputs

    try:
        model, manifest, _ = _source(source)
        x = example_inputs(manifest["model"]["name"], batch=batch, **manifest["model"].get("kwargs", {}))
    except (ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    console.print(format_table(layer_table(model, x), fmt="text"))
    console.print(json.dumps(totals(model, x)))


def _mount_zoo(zoo_cli: Any) -> None:
    """``prunekit zoo``: the zoo's listing commands plus ``train-lm`` from the LLM package."""
    import importlib

    try:
        llm_cli = importlib.import_module("prunekit.calibrate.cli")
        zoo_cli.app.registered_commands.extend(llm_cli.zoo_app.registered_commands)
    except ModuleNotFoundError as e:
        if e.name != "prunekit.calibrate.cli":
            raise
    app.add_typer(zoo_cli.app, name="zoo", help="Built-in models and data sets; train the zoo LM.")


def _mount() -> None:
    """Attach the sub-command groups of the other packages (bench, data, llm, zoo), once."""
    import importlib

    if getattr(app, "_prunekit_mounted", False):
        return
    app._prunekit_mounted = True  # type: ignore[attr-defined]
    for modname, attach in [
        ("prunekit.bench.cli", lambda m: m.register(app)),
        ("prunekit.data.cli", lambda m: app.add_typer(m.app, name="data", help="Data pruning: score, select, "
                                                      "dedup, resample a training set.")),
        ("prunekit.calibrate.cli", lambda m: app.add_typer(m.app, name="llm", help="Post-training pruning of "
                                                           "transformers / LLMs.")),
        ("prunekit.zoo.cli", _mount_zoo),
        ("prunekit.structured.cli", lambda m: app.add_typer(m.app, name="structured", help="Structured pruning: "
                                                            "dependency groups and real removal.")),
        ("prunekit.training.cli", lambda m: app.add_typer(m.app, name="sparse", help="Sparse training: DST, "
                                                          "pruning at init, N:M, lottery tickets.")),
    ]:
        try:
            attach(importlib.import_module(modname))
        except ModuleNotFoundError as e:  # a package without a CLI part yet
            if e.name != modname:
                raise


def main() -> None:
    """Entry point of the ``prunekit`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _mount()
    app()
