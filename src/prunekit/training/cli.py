"""``prunekit sparse``: train sparse from scratch (RigL, SET, GraNet, SR-STE, pruning at init, gradual magnitude)
and find lottery tickets. Thin: parses flags, calls ``prunekit.training``, writes a checkpoint folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

app = typer.Typer(help="Sparse training: dynamic sparse training, pruning at init, N:M (SR-STE), lottery tickets.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fail(e: BaseException) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _model_kwargs(items: list[str]) -> dict[str, Any]:
    """``["channels=128", "kernel_sizes=[5,3,3]"]`` -> ``{"channels": 128, "kernel_sizes": [5, 3, 3]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg must look like NAME=VALUE (e.g. channels=128), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _setup(model: str, model_arg: list[str], dataset: str | None, epochs: int | None, seed: int):
    """Model, its spec, the data set's name and the training recipe (no data built yet)."""
    from ..zoo import RECIPE_DATASETS, RECIPES, get_model

    kwargs = _model_kwargs(model_arg)
    net = get_model(model, seed=seed, **kwargs)
    name = dataset or RECIPE_DATASETS.get(model)
    if name is None:
        raise ValueError(f"no default data set for model {model!r}: pass --dataset")
    recipe = dict(RECIPES.get(model, dict(epochs=20, lr=0.05, optimizer="sgd")))
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs must be a positive integer, got {epochs}")
        recipe["epochs"] = epochs
    return net, {"name": model, "kwargs": kwargs}, name, recipe


def _data(name: str) -> Any:
    from ..zoo import get_dataset

    return get_dataset(name)


def _teacher(path: Path | None):
    if path is None:
        return None
    from ..checkpoint import load_checkpoint

    teacher, _, _ = load_checkpoint(path)
    return teacher


def _nm(text: str) -> tuple[int, int]:
    from ..patterns import NM, parse_pattern

    p = parse_pattern(text)
    if not isinstance(p, NM):
        raise ValueError(f"--nm must be an N:M pattern such as 2:4, got {text!r}")
    return p.n, p.m


@app.command("methods")
def methods() -> None:
    """List the sparse-training methods."""
    from .methods import TRAINING_METHODS

    typer.echo("\n".join(TRAINING_METHODS))


@app.command()
def train(
    model: str = typer.Argument(..., help="zoo model name, e.g. cnn1d"),
    out: Path = typer.Option(..., "--out", help="checkpoint folder to write (weights, masks, manifest)"),
    method: str = typer.Option("rigl", help="see `prunekit sparse methods`"),
    sparsity: float | None = typer.Option(None, help="fraction of zeros in [0, 1) (not for srste: --nm)"),
    nm: str = typer.Option("2:4", help="srste: the N:M pattern"),
    dataset: str | None = typer.Option(None, help="zoo data set (default: the model's)"),
    epochs: int | None = typer.Option(None, help="default: the model's recipe"),
    seed: int = typer.Option(0),
    model_arg: list[str] = typer.Option([], help="model argument NAME=VALUE, e.g. channels=128 (repeatable)"),
    update_every: int = typer.Option(100, help="rigl/set/granet: steps between mask updates"),
    update_fraction: float = typer.Option(0.3, help="rigl/set/granet: initial drop/grow fraction, in (0, 1)"),
    allocation: str | None = typer.Option(None, help="uniform | er | erk (default: erk, SET: er)"),
    scope: str = typer.Option("global", help="gradual/granet pruning scope: global | layer"),
    exclude: list[str] = typer.Option(["lm_head"], help="layers left dense (repeatable)"),
    teacher: Path | None = typer.Option(None, help="checkpoint folder of a dense teacher: adds distillation"),
    alpha: float = typer.Option(0.5, help="distillation weight in [0, 1]"),
    temperature: float = typer.Option(4.0, help="distillation temperature > 0"),
    checkpoint_dir: Path | None = typer.Option(None, help="save training state here (resumable)"),
    checkpoint_every: int = typer.Option(500, help="steps between training-state checkpoints"),
    resume: bool = typer.Option(False, help="resume from --checkpoint-dir if it holds a checkpoint"),
) -> None:
    """Train a zoo model sparse with one method; print test accuracy and sparsity; save the checkpoint."""
    from ..zoo import input_shape
    from .checkpoint import INDEX, CheckpointEvery, load_checkpoint
    from .loop import fit, make_optimizer
    from .methods import training_callbacks

    try:
        net, spec, data_name, recipe = _setup(model, model_arg, dataset, epochs, seed)
        n, m = _nm(nm)
        data = _data(data_name) if method in ("snip", "grasp") else None  # else: flags checked before building it
        pai = {"input_shape": list(input_shape(model, **spec["kwargs"]))} if method == "synflow" else None
        cbs = training_callbacks(method, sparsity, data=data.train if data is not None else None, n=n, m=m,
                                 update_every=update_every, update_fraction=update_fraction, allocation=allocation,
                                 scope=scope, exclude=exclude, seed=seed, teacher=_teacher(teacher), alpha=alpha,
                                 temperature=temperature, pai_options=pai)
        data = data if data is not None else _data(data_name)
        if resume and checkpoint_dir is None:
            raise ValueError("--resume needs --checkpoint-dir")
        extra_cbs = [CheckpointEvery(checkpoint_dir, checkpoint_every, list(cbs))] if checkpoint_dir else []
    except (ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    state = None
    if resume and (checkpoint_dir / INDEX).is_file():  # type: ignore[operator]
        opt = make_optimizer(recipe.get("optimizer", "sgd"), net.parameters(), recipe.get("lr", 0.1),
                             recipe.get("weight_decay", 5e-4), recipe.get("momentum", 0.9))
        ck = load_checkpoint(checkpoint_dir, net, opt, cbs)  # type: ignore[arg-type]
        state = ck.train_state(net, opt)
        typer.echo(f"resuming at step {ck.step}", err=True)
    try:
        fit(net, data.train, callbacks=[*cbs, *extra_cbs], seed=seed, progress=sys.stderr.isatty(), state=state,
            **recipe)
    except ValueError as e:
        _fail(e)
    _finish(net, spec, data, out, {"method": method, "sparsity": sparsity, "recipe": recipe, "seed": seed})


def _finish(net: Any, spec: dict[str, Any], data: Any, out: Path, extra: dict[str, Any]) -> None:
    from ..checkpoint import save_checkpoint
    from ..masks import attached
    from .loop import evaluate

    metrics = evaluate(net, data.test)
    ms = attached(net)
    masks = ms.bake() if ms is not None else None
    measured = ms.sparsity() if ms is not None else 0.0
    save_checkpoint(out, net, spec, masks, extra={**extra, "dataset": data.name, "metrics": metrics,
                                                   "measured_sparsity": measured})
    typer.echo(f"test accuracy {metrics['accuracy']:.4f}; sparsity {measured:.4f}; checkpoint written to {out}")


@app.command()
def lottery(
    model: str = typer.Argument(..., help="zoo model name, e.g. cnn1d"),
    out: Path = typer.Option(..., "--out", help="checkpoint folder for the final ticket"),
    sparsity: float = typer.Option(..., help="target sparsity in [0, 1)"),
    fraction: float = typer.Option(0.2, help="fraction of the remaining weights pruned per level, in (0, 1)"),
    rewind_step: int = typer.Option(0, help="rewind survivors to their values after this many steps"),
    optimizer_state: str = typer.Option("reset", help="reset | rewind | keep"),
    scope: str = typer.Option("global", help="global | layer"),
    dataset: str | None = typer.Option(None, help="zoo data set (default: the model's)"),
    epochs: int | None = typer.Option(None, help="per level; default: the model's recipe"),
    seed: int = typer.Option(0),
    model_arg: list[str] = typer.Option([], help="model argument NAME=VALUE (repeatable)"),
    control_seed: int | None = typer.Option(None, help="also train the final masks from a random init (seed)"),
) -> None:
    """Iterative magnitude pruning with rewinding (lottery tickets); prints accuracy per level."""
    from .loop import evaluate
    from .lottery import iterative_magnitude, random_reinit_control

    try:
        net, spec, data_name, recipe = _setup(model, model_arg, dataset, epochs, seed)
        data = _data(data_name)
        res = iterative_magnitude(net, data.train, target_sparsity=sparsity, fraction=fraction,
                                  rewind_step=rewind_step, optimizer_state=optimizer_state, scope=scope,
                                  val_data=data.test, eval_every_epoch=False, seed=seed,
                                  progress=sys.stderr.isatty(), **recipe)
    except (ValueError, TypeError, FileNotFoundError) as e:
        _fail(e)
    typer.echo("| level | sparsity | test accuracy |\n|---:|---:|---:|")
    for lv in res.levels:
        typer.echo(f"| {lv.level} | {lv.sparsity:.4f} | {lv.metrics.get('val_accuracy', float('nan')):.4f} |")
    extra: dict[str, Any] = {"method": "lottery", "settings": res.settings, "recipe": recipe, "seed": seed,
                             "levels": [{"level": lv.level, "sparsity": lv.sparsity, **lv.metrics}
                                        for lv in res.levels]}
    if control_seed is not None:
        from ..zoo import get_model

        ctrl = get_model(model, seed=seed, **spec["kwargs"])
        random_reinit_control(ctrl, res.masks(), data.train, seed=control_seed, **recipe)
        extra["reinit_control_accuracy"] = evaluate(ctrl, data.test)["accuracy"]
        typer.echo(f"random reinit, same masks: test accuracy {extra['reinit_control_accuracy']:.4f}")
    _finish(net, spec, data, out, extra)
