"""``prunekit zoo ...``: list the built-in models and data sets (mounted by ``prunekit.cli``)."""

from __future__ import annotations

import inspect
import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Built-in models and data sets that need no download.", no_args_is_help=True,
                  add_completion=False)
console = Console()


def _arg_defaults(factory: object) -> str:
    """``name=default`` pairs of a factory's keyword arguments."""
    params = inspect.signature(factory).parameters.values()  # type: ignore[arg-type]
    return ", ".join(f"{p.name}={p.default!r}" for p in params if p.default is not inspect.Parameter.empty)


@app.command("models")
def models(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")) -> None:
    """Each model: parameters at its defaults, example input shape, arguments, training recipe."""
    from .models import MODELS, RECIPE_DATASETS, RECIPES, get_model, input_shape

    rows = []
    for name in MODELS.names():
        n = sum(p.numel() for p in get_model(name, seed=0).parameters())
        rows.append({"name": name, "params": n, "input_shape": list(input_shape(name)),
                     "arguments": _arg_defaults(MODELS.get(name)), "recipe": RECIPES.get(name),
                     "recipe_dataset": RECIPE_DATASETS.get(name)})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("model", "params", "input (per example)", "arguments (defaults)", "recipe data")
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", str(tuple(r["input_shape"])), r["arguments"],
                      r["recipe_dataset"] or "-")
    console.print(table)


@app.command("datasets")
def datasets() -> None:
    """Each built-in data set with its arguments and their defaults."""
    from .datasets import DATASETS

    table = Table("data set", "arguments (defaults)", "description")
    for name in DATASETS.names():
        f = DATASETS.get(name)
        table.add_row(name, _arg_defaults(f), (f.__doc__ or "").strip().splitlines()[0])
    console.print(table)
    console.print("Your own data: a .npz with arrays X and y, or a .csv with a 'label' (else the last) column.")
