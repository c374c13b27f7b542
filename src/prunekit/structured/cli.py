"""``prunekit structured ...`` and ``prunekit prune --structured``: remove units, report MACs/params/latency."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from torch import nn

app = typer.Typer(help="Structured pruning: remove channels, heads, MLP neurons and blocks for real.",
                  no_args_is_help=True, add_completion=False)
console = Console()
IMPORTANCE_ALIASES = {"bn": "bn_scale", "bn-scale": "bn_scale", "slimming": "bn_scale"}


def load_source(source: str, batch: int = 2, seq: int = 16) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A model, example inputs and how to rebuild it: a zoo name, a prunekit checkpoint folder or a
    transformers folder (``config.json`` + weights)."""
    p = Path(source)
    if (p / "manifest.json").is_file():
        from ..checkpoint import load_checkpoint
        from ..zoo import example_inputs

        model, manifest, _ = load_checkpoint(p)
        spec = manifest["model"]
        return model, example_inputs(spec["name"], batch=batch, **spec.get("kwargs", {})), \
            {"zoo": spec["name"], "kwargs": spec.get("kwargs", {}), "dataset": manifest.get("dataset")}
    if (p / "config.json").is_file():
        import transformers

        from . import hf

        cfg = transformers.AutoConfig.from_pretrained(p)
        arch = (getattr(cfg, "architectures", None) or ["AutoModel"])[0]
        cls = getattr(transformers, arch, transformers.AutoModel)
        model = cls.from_pretrained(p)
        return model, hf.example_inputs(model, batch=batch, seq=seq), {"hf": type(model).__name__}
    from ..zoo import MODELS, example_inputs, get_model

    if source not in MODELS:
        raise ValueError(f"source {source!r} is neither a zoo model ({', '.join(MODELS.names())}), a prunekit "
                         f"checkpoint folder (manifest.json) nor a transformers folder (config.json)")
    return get_model(source, seed=0), example_inputs(source, batch=batch), {"zoo": source, "kwargs": {}}


def measure(dense: nn.Module, slim: nn.Module, inputs: Any, repeats: int = 20) -> dict[str, Any]:
    """MACs, parameters and interleaved CPU latency of the dense and the slim model."""
    from ..accounting import count_macs, count_params
    from ..bench.latency import compare_latency

    cmp = compare_latency({"dense": dense, "slim": slim}, inputs, warmup=3, repeats=repeats)
    out = {"macs_before": count_macs(dense, inputs), "macs_after": count_macs(slim, inputs),
           "params_before": count_params(dense), "params_after": count_params(slim),
           "latency_ms_before": cmp.results["dense"].median_ms, "latency_ms_after": cmp.results["slim"].median_ms}
    out["speedup"] = out["latency_ms_before"] / out["latency_ms_after"]
    out["ideal_speedup"] = out["macs_before"] / max(out["macs_after"], 1)
    return out


def table(m: dict[str, Any]) -> Table:
    """Before / after / ratio rows for MACs, parameters and latency."""
    t = Table("", "before", "after", "after / before")
    for what, k, fmt in (("MACs", "macs", "{:,}"), ("parameters", "params", "{:,}"),
                         ("latency (ms, median)", "latency_ms", "{:.3f}")):
        b, a = m[f"{k}_before"], m[f"{k}_after"]
        t.add_row(what, fmt.format(b), fmt.format(a), f"{a / b:.3f}" if b else "-")
    return t


def prune_structured(source: str, *, out: Path, target_macs: float | None = None, target_params: float | None = None,
                     importance: str = "l2", ignore: list[str] | tuple[str, ...] = (), dataset: str | None = None,
                     finetune_epochs: int = 0, allocation: str = "uniform", round_to: int = 1,
                     remove_blocks: float | str = 0.0, latency: bool = True, batch: int = 2,
                     show: bool = True) -> dict[str, Any]:
    """Remove units from ``source`` to the budget, save ``plan.json`` + ``model.safetensors`` in ``out``,
    print the before/after table (``show``) and return it (with accuracies if ``dataset`` is given)."""
    from . import Structured, remove_, save_pruned

    cfg = Structured(target_macs=target_macs, target_params=target_params,
                     importance=IMPORTANCE_ALIASES.get(importance, importance), ignore=list(ignore),
                     allocation=allocation, round_to=round_to, remove_blocks=remove_blocks)
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ValueError(f"finetune_epochs must be an integer >= 0, got {finetune_epochs!r}")
    model, inputs, src = load_source(source, batch=batch)
    data = _data(dataset or src.pop("dataset", None)) if (dataset or finetune_epochs) else None
    src.pop("dataset", None)
    dense = copy.deepcopy(model)
    plan = remove_(model, inputs, cfg)
    report: dict[str, Any] = measure(dense, model, inputs) if latency else dict(plan.summary)
    if data is not None:
        report.update(_accuracy(dense, model, data, finetune_epochs))
    plan.summary.update(report)
    save_pruned(model, plan, out, source=src if "zoo" in src else None)
    if show:
        show_report(report, out)
    return report


def show_report(rep: dict[str, Any], out: Path) -> None:
    """Print the before/after table, accuracies and where the slim model went."""
    if "latency_ms_before" in rep:
        console.print(table(rep))
    else:
        console.print(f"MACs {rep['macs_before']:,} -> {rep['macs_after']:,}; parameters {rep['params_before']:,} -> "
                      f"{rep['params_after']:,}")
    for k in ("accuracy_before", "accuracy_removed", "accuracy_finetuned"):
        if k in rep:
            console.print(f"{k.replace('_', ' ')}: {rep[k]:.4f}")
    console.print(f"slim model written to {out} (load with prunekit.structured.load_pruned)")


def _data(name: str | None) -> Any:
    if name is None:
        raise ValueError("fine-tuning or accuracy needs --dataset (e.g. mnist1d or digits)")
    from ..zoo import get_dataset

    return get_dataset(name)


def _accuracy(dense: nn.Module, slim: nn.Module, data: Any, epochs: int) -> dict[str, float]:
    from ..training import evaluate, fit

    out = {"accuracy_before": evaluate(dense, data.test)["accuracy"],
           "accuracy_removed": evaluate(slim, data.test)["accuracy"]}
    if epochs:
        fit(slim, data.train, epochs=epochs, lr=0.01, progress=sys.stderr.isatty())
        out["accuracy_finetuned"] = evaluate(slim, data.test)["accuracy"]
    return out


def _fail(e: Exception) -> None:
    console.print(f"[red]error:[/red] {e}")
    raise typer.Exit(2)


def blocks_arg(text: str) -> float | str:
    """``--remove-blocks``: ``auto`` or a fraction."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--remove-blocks must be a fraction in [0, 1) or 'auto', got {text!r}") from None


@app.command("prune")
def prune_cmd(
    source: str = typer.Argument(..., help="zoo model name, prunekit checkpoint folder or transformers folder"),
    out: Path = typer.Option(..., "--out", help="folder for plan.json + model.safetensors (+ config.json)"),
    target_macs: float | None = typer.Option(None, help="keep this fraction of MACs, in (0, 1]"),
    target_params: float | None = typer.Option(None, help="keep this fraction of parameters, in (0, 1]"),
    importance: str = typer.Option("l2", help="l1 | l2 | taylor | fpgm | bn_scale | random"),
    allocation: str = typer.Option("uniform", help="uniform | global"),
    ignore: list[str] = typer.Option([], help="module names (or globs) never touched; repeat the option"),
    round_to: int = typer.Option(1, help="kept channel counts are multiples of this"),
    remove_blocks: str = typer.Option("0", help="fraction of repeated blocks to remove first, or 'auto': "
                                      "blocks first down to the budget, then widths (fastest on CPUs)"),
    dataset: str | None = typer.Option(None, help="evaluate accuracy before/after on this zoo data set"),
    finetune_epochs: int = typer.Option(0, help="fine-tune the slim model this many epochs"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Remove channels, heads and neurons to a MACs or parameter budget; show MACs, params, latency."""
    try:
        rep = prune_structured(source, out=out, target_macs=target_macs, target_params=target_params,
                               importance=importance, ignore=ignore, dataset=dataset,
                               finetune_epochs=finetune_epochs, allocation=allocation, round_to=round_to,
                               remove_blocks=blocks_arg(remove_blocks), show=not as_json)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        _fail(e)
    if as_json:
        console.print_json(json.dumps(rep))


@app.command("groups")
def groups_cmd(
    source: str = typer.Argument(..., help="zoo model name, prunekit checkpoint folder or transformers folder"),
    ignore: list[str] = typer.Option([], help="module names (or globs) never touched"),
) -> None:
    """List the coupled groups of a model: what would be removed together."""
    from .graph import build_graph

    try:
        model, inputs, _ = load_source(source)
        g = build_graph(model, inputs, ignore)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        _fail(e)
    t = Table("group", "units", "kind", "exact", "members")
    for row in g.summary():
        ms = ", ".join(row["members"][:4]) + (f" (+{len(row['members']) - 4})" if len(row["members"]) > 4 else "")
        t.add_row(str(row["id"]), str(row["size"]), row["kind"], "yes" if row["exact"] else "no", ms)
    console.print(t)
    console.print(f"MACs {g.macs():,}, parameters {g.params():,}")
