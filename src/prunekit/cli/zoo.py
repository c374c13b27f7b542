"""``prunekit zoo models | datasets | train-lm``: the built-in models and data sets, and the zoo LM."""

from __future__ import annotations

import inspect
import json
from typing import Annotated

import typer

from . import common as c

app = c.app_group("Built-in models and data sets that need no download; train the zoo LM.")


def register(main: typer.Typer) -> None:
    """Add the ``zoo`` group to ``main``."""
    from .llm import train_lm

    c.command(app, "models")(models)
    c.command(app, "datasets")(datasets)
    c.command(app, "train-lm")(train_lm)
    main.add_typer(app, name="zoo", help="Built-in models and data sets; train the zoo LM.")


def _arg_defaults(factory: object) -> str:
    """``name=default`` pairs of a factory's keyword arguments."""
    params = inspect.signature(factory).parameters.values()  # type: ignore[arg-type]
    return ", ".join(f"{p.name}={p.default!r}" for p in params if p.default is not inspect.Parameter.empty)


def models(as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False) -> None:
    """Each model: parameters at its defaults, example input shape, arguments, training recipe."""
    from ..zoo.models import MODELS, RECIPE_DATASETS, RECIPES, get_model, input_shape

    rows = []
    for name in MODELS.names():
        n = sum(p.numel() for p in get_model(name, seed=0).parameters())
        rows.append({"name": name, "params": n, "input_shape": list(input_shape(name)),
                     "arguments": _arg_defaults(MODELS.get(name)), "recipe": RECIPES.get(name),
                     "recipe_dataset": RECIPE_DATASETS.get(name)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo("| model | params | input (per example) | arguments (defaults) | recipe data |\n|---|---:|---|---|---|")
    for r in rows:
        typer.echo(f"| {r['name']} | {r['params']:,} | {tuple(r['input_shape'])} | {r['arguments']} | "
                   f"{r['recipe_dataset'] or '-'} |")


def datasets() -> None:
    """Each built-in data set with its arguments and their defaults."""
    from ..zoo.datasets import DATASETS

    typer.echo("| data set | arguments (defaults) | description |\n|---|---|---|")
    for name in DATASETS.names():
        f = DATASETS.get(name)
        typer.echo(f"| {name} | {_arg_defaults(f)} | {(f.__doc__ or '').strip().splitlines()[0]} |")
    typer.echo("Your own data: a .npz with arrays X and y, or a .csv with a 'label' (else the last) column.")
