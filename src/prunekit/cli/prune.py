"""``prunekit prune``: one verb for masks (one-shot criteria), structured removal and LLM calibration.

The path is chosen by the method's registry kind (``common.method_kind``); ``--structured`` reads the method
as a group importance. ``prunekit structured prune|groups`` stay (``structured prune`` is a deprecated alias).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c
from .model import dataset_of, recipe_of, save, source_model

structured_app = c.app_group("Structured pruning: dependency groups and real removal.")
IMPORTANCE_ALIASES = {"bn": "bn_scale", "bn-scale": "bn_scale", "slimming": "bn_scale"}
DEFAULT_METHOD = {"oneshot": "magnitude", "calibrated": "sparsegpt", "structured": "l2"}


def register(app: typer.Typer) -> None:
    """Add ``prune`` and the ``structured`` group to ``app``."""
    c.command(app, "prune")(prune)
    c.alias(structured_app, "prune", structured_prune, "structured prune", "prune --structured")
    c.command(structured_app, "groups")(groups)
    app.add_typer(structured_app, name="structured", help="Structured pruning: dependency groups and real removal.")


def is_hf_folder(source: str) -> bool:
    """A transformers ``save_pretrained`` folder (config.json, no prunekit manifest)."""
    p = Path(source)
    return (p / "config.json").is_file() and not (p / "manifest.json").is_file()


def path_of(source: str, method: str | None, structured: bool) -> tuple[str, str]:
    """(kind, method name): ``--structured`` -> structured; a calibrated method or a HF folder -> calibrated."""
    if structured:
        name = IMPORTANCE_ALIASES.get(method or "l2", method or "l2")
        return c.method_kind(name, kinds=("structured",)), name
    if method is None:
        kind = "calibrated" if is_hf_folder(source) else "oneshot"
        return kind, DEFAULT_METHOD[kind]
    if is_hf_folder(source) and method == "magnitude":
        return "calibrated", "calibrated_magnitude"  # magnitude of a HF model goes through the calibration engine
    if is_hf_folder(source):
        hit = calibrated_name(method)
        if hit is not None:
            return "calibrated", hit
    kind = c.method_kind(method)
    if kind == "training":
        raise ValueError(f"--method {method} is a sparse-training method: use `prunekit train MODEL --method {method}`")
    return kind, method if kind == "structured" else c.canonical_method(method, kind)


def calibrated_name(method: str) -> str | None:
    """The registered name of calibrated method ``method`` (``-`` read as ``_``), found without importing the
    other engines; ``None`` if it is not a calibrated method's name (an alias or another kind: the full lookup)."""
    import importlib

    from ..registry import METHODS

    importlib.import_module("prunekit.calibrate.methods")
    for name in (method, method.replace("-", "_")):
        try:
            entry = METHODS.get(name, kind="calibrated")
        except ValueError:
            continue
        if entry.name == name:
            return name
    return None


def prune(
    source: Annotated[str, typer.Argument(help="zoo model name, prunekit checkpoint folder, or a Hugging Face "
                                          "model folder (calibrated methods)")],
    out: c.Out,
    method: Annotated[str | None, typer.Option(help="a registered method (`prunekit methods`): one-shot magnitude | "
                                               "random | taylor | ...; calibrated sparsegpt | wanda | "
                                               "calibrated-magnitude; with --structured a group importance l1 | l2 | "
                                               "taylor | fpgm | bn_scale | fluctuation | random (default: "
                                               "magnitude; sparsegpt for a HF folder; l2 structured)")] = None,
    sparsity: c.Sparsity = None,
    pattern: c.PatternOpt = "unstructured",
    scope: c.Scope = c.DEFAULT_SCOPE,
    allocation: Annotated[str | None, typer.Option(help="one-shot: uniform | erk | er | lamp (layer scope); "
                                                   "structured: uniform | global")] = None,
    exclude: c.Exclude = None,
    model_arg: c.ModelArg = None,
    dataset: c.Dataset = None,
    finetune_epochs: Annotated[int, typer.Option(help="fine-tune after pruning (masks kept)")] = 0,
    finetune_lr: Annotated[float | None, typer.Option(help="fine-tuning learning rate (default: the zoo recipe's "
                                                      "lr)")] = None,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    structured: Annotated[bool, typer.Option("--structured", help="remove channels / heads / neurons for real; "
                                             "--method names the group importance")] = False,
    target_macs: Annotated[float | None, typer.Option(help="structured: keep this fraction of MACs, "
                                                      "in (0, 1]")] = None,
    target_params: Annotated[float | None, typer.Option(help="structured: keep this fraction of parameters, "
                                                        "in (0, 1]")] = None,
    round_to: Annotated[int | None, typer.Option(help="structured: kept widths are multiples of this")] = None,
    remove_blocks: Annotated[str | None, typer.Option(help="structured: fraction of repeated blocks removed first, "
                                                      "or 'auto' (blocks first down to the budget, then "
                                                      "widths)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="structured: print JSON instead of a table")] = False,
    owl: Annotated[bool, typer.Option("--owl", help="calibrated: OWL per-layer allocation")] = False,
    owl_m: Annotated[float | None, typer.Option(help="calibrated: OWL outlier threshold M (default 5)")] = None,
    owl_lambda: Annotated[float | None, typer.Option(help="calibrated: OWL spread lambda (default 0.08)")] = None,
    dsnot: Annotated[bool, typer.Option("--dsnot", help="calibrated: DSnoT mask refinement")] = False,
    calib: Annotated[Path | None, typer.Option(help="calibrated: text file, folder or saved dataset (default: "
                                               "built-in corpus)")] = None,
    nsamples: Annotated[int | None, typer.Option(help="calibrated: calibration samples (default 128)")] = None,
    seq_len: Annotated[int | None, typer.Option(help="calibrated: tokens per sample (default 256)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="calibrated: samples per forward pass (default 8)")] = None,
    device: Annotated[str | None, typer.Option(help="calibrated: compute device of the current block (default: "
                                               "the model's)")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="calibrated: resume folder (default: .OUT.state beside "
                                                   "--out); deleted when done")] = None,
    show_layers: Annotated[bool, typer.Option("--show-layers", help="calibrated: print the per-layer "
                                              "table")] = False,
    attn_implementation: Annotated[str | None, typer.Option(help="calibrated: attention kernel, eager | sdpa "
                                                            "(default: transformers' choice)")] = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Prune a model: masks (one-shot), real removal (--structured) or layer-wise calibration (HF models)."""
    args = dict(locals())
    kind, name = path_of(source, method, structured)
    _only_for(kind, args)
    if kind == "calibrated":
        from .llm import prune_calibrated

        return prune_calibrated(source, out, name, sparsity=sparsity, pattern=pattern, owl=owl, owl_m=owl_m,
                                owl_lambda=owl_lambda, dsnot=dsnot, calib=calib, nsamples=nsamples, seq_len=seq_len,
                                seed=seed, batch_size=batch_size, device=device, state_dir=state_dir,
                                exclude=exclude, db=db, show_layers=show_layers, overwrite=overwrite,
                                threads=threads, attn_implementation=attn_implementation)
    if kind == "structured":
        blocks = blocks_arg(remove_blocks or "0")
        c.check_out(out, overwrite=overwrite, inputs=[source], expected_bytes=c.folder_bytes(source))
        c.set_threads(threads)
        rep = prune_structured(source, out=out, target_macs=target_macs, target_params=target_params,
                               sparsity=sparsity, importance=name, ignore=c.excluded(exclude, defaults=False),
                               dataset=dataset, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                               allocation=allocation or "uniform", round_to=round_to or 1, remove_blocks=blocks,
                               model_kwargs=c.model_args(model_arg), show=not as_json, overwrite=overwrite)
        if as_json:
            typer.echo(json.dumps(rep))
        return None
    c.check_sparsity_pattern(sparsity, pattern)
    c.check_out(out, overwrite=overwrite, inputs=[source], expected_bytes=2 * c.folder_bytes(source))
    c.set_threads(threads)
    return prune_masks(source, out, name, sparsity=sparsity, pattern=pattern, scope=scope, allocation=allocation,
                       exclude=exclude, model_arg=model_arg, dataset=dataset, finetune_epochs=finetune_epochs,
                       finetune_lr=finetune_lr, seed=seed, db=db, overwrite=overwrite)


_ONLY = {
    "structured": ("target_macs", "target_params", "round_to", "remove_blocks", "as_json"),
    "calibrated": ("owl", "owl_m", "owl_lambda", "dsnot", "calib", "nsamples", "seq_len", "batch_size", "device",
                   "state_dir", "show_layers", "attn_implementation"),
}
_UNUSED = {"calibrated": ("dataset", "finetune_epochs", "finetune_lr", "model_arg", "allocation"),
           "structured": ("pattern", "scope"), "oneshot": ()}


def _only_for(kind: str, args: dict[str, Any]) -> None:
    """A flag of another path is an error naming it (never silently ignored)."""
    defaults = {"pattern": "unstructured", "scope": c.DEFAULT_SCOPE, "finetune_epochs": 0}
    for other, flags in _ONLY.items():
        if other == kind:
            continue
        for f in flags:
            if args[f] not in (None, False):
                raise ValueError(f"--{f.replace('_', '-')} applies only to {other} pruning, not to {kind} pruning")
    for f in _UNUSED.get(kind, ()):
        if args[f] not in (None, False, [], defaults.get(f)):
            raise ValueError(f"--{f.replace('_', '-')} does not apply to {kind} pruning")
    if kind == "calibrated" and args["scope"] != c.DEFAULT_SCOPE:
        raise ValueError("--scope does not apply to calibrated pruning (each layer gets its own sparsity; use --owl "
                         "for a non-uniform allocation)")


def prune_masks(source: str, out: Path, method: str, *, sparsity: float | None, pattern: str, scope: str,
                allocation: str | None, exclude: list[str] | None, model_arg: list[str] | None, dataset: str | None,
                finetune_epochs: int, finetune_lr: float | None, seed: int, db: Path | None,
                overwrite: bool) -> None:
    """One-shot masks on a zoo model or checkpoint, optional fine-tune, save weights + masks + manifest."""
    import dataclasses

    from ..api import prune_
    from ..config import CONFIGS, Config
    from ..training import evaluate

    cls = CONFIGS.get(method)
    fields = {f.name for f in dataclasses.fields(cls)}
    cfg_dict = {"type": method, "sparsity": sparsity, "pattern": pattern, "scope": scope, "allocation": allocation,
                "exclude": c.excluded(exclude), "seed": seed}
    cfg = Config.from_dict({k: v for k, v in cfg_dict.items() if k in fields or k == "type"})
    if finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    model, manifest, _ = source_model(source, c.model_args(model_arg))
    data = dataset_of(dataset, manifest["model"]["name"], manifest)
    if (method == "taylor" or finetune_epochs) and data is None:
        raise ValueError(f"method {method!r} / fine-tuning needs --dataset")
    report = prune_(model, cfg, data=data.train if data is not None else None)
    metrics: dict[str, float] = {}
    if data is not None:
        metrics["accuracy_pruned"] = evaluate(model, data.test)["accuracy"]
        if finetune_epochs:
            finetune(model, data, manifest["model"]["name"], finetune_epochs, finetune_lr, seed)
            metrics["accuracy_finetuned"] = evaluate(model, data.test)["accuracy"]
    masks = report.masks.bake() if report.masks is not None else None
    save(out, model, manifest["model"], masks, {"method": cfg.to_dict(), "report": report.to_dict(),
                                                "metrics": metrics, "dataset": data.name if data is not None else None},
         overwrite)
    typer.echo(report.to_markdown())
    if metrics:
        typer.echo(json.dumps(metrics))
    typer.echo(f"{c.sparsity_line(report)}; written to {out}")
    record(db, None, "prune", {"source": source, "method": cfg.to_dict()}, "model",
           {"sparsity": report.sparsity, **metrics})


def finetune(model: Any, data: Any, model_name: str, epochs: int, lr: float | None, seed: int) -> float:
    """Fine-tune with the zoo recipe of ``model_name`` (its lr unless ``lr``); pruned weights stay zero."""
    from ..training import fit

    recipe = {k: v for k, v in recipe_of(model_name, None).items() if k != "epochs"}
    if lr is not None:
        if not lr > 0:
            raise ValueError(f"--finetune-lr must be > 0, got {lr}")
        recipe["lr"] = lr
    fit(model, data.train, epochs=epochs, seed=seed, progress=c.on_tty(), callbacks=c.epoch_lines("fine-tune epoch"),
        **recipe)
    return recipe["lr"]


def record(db: Path | None, out: Path | None, experiment: str, config: dict[str, Any], kind: str,
           metrics: dict[str, Any], per_layer: dict[str, Any] | None = None,
           timings: dict[str, Any] | None = None) -> None:
    """Add the run to ``--db`` (or ``OUT/prunekit-results.sqlite`` where ``out`` is given); nothing otherwise."""
    path = c.results_db(db, out)
    if path is None:
        return
    from ..bench.store import ResultsStore, RunRecord

    with ResultsStore(path) as store:
        store.add(RunRecord(experiment, config, kind, metrics, per_layer or {}, timings or {}), replace=True)
    c.say(f"run recorded in {path}")


def blocks_arg(text: str) -> float | str:
    """``--remove-blocks``: ``auto`` or a fraction."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--remove-blocks must be a fraction in [0, 1) or 'auto', got {text!r}") from None


def prune_structured(source: str, *, out: Path, target_macs: float | None = None, target_params: float | None = None,
                     sparsity: float | None = None, importance: str = "l2", ignore: list[str] | tuple[str, ...] = (),
                     dataset: str | None = None, finetune_epochs: int = 0, finetune_lr: float | None = None,
                     allocation: str = "uniform", round_to: int = 1, remove_blocks: float | str = 0.0,
                     latency: bool = True, batch: int = 2, model_kwargs: dict[str, Any] | None = None,
                     show: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Remove units from ``source`` to the budget, save plan + weights in ``out``, print and return the report."""
    from ..structured import Structured, remove_
    from ..structured.source import load_source, measure

    cfg = Structured(target_macs=target_macs, target_params=target_params, sparsity=sparsity,
                     importance=IMPORTANCE_ALIASES.get(importance, importance), ignore=list(ignore),
                     allocation=allocation, round_to=round_to, remove_blocks=remove_blocks)
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be an integer >= 0, got {finetune_epochs!r}")
    model, inputs, src = load_source(source, batch=batch, model_kwargs=model_kwargs)
    data_name = dataset or src.pop("dataset", None)
    src.pop("dataset", None)
    if finetune_epochs and data_name is None:
        raise ValueError("fine-tuning needs --dataset (e.g. mnist1d or digits)")
    data = dataset_of(data_name, None) if (dataset or finetune_epochs) else None
    dense = copy.deepcopy(model)
    plan = remove_(model, inputs, cfg)
    report: dict[str, Any] = measure(dense, model, inputs) if latency else dict(plan.summary)
    if data is not None:
        report.update(_accuracy(dense, model, data, src.get("zoo"), finetune_epochs, finetune_lr))
    plan.summary.update(report)
    _save_structured(model, plan, out, src if "zoo" in src else None, overwrite)
    if show:
        show_report(report, out)
    return report


def _save_structured(model: Any, plan: Any, out: Path, source: Any, overwrite: bool) -> None:
    from .. import structured as st

    st.save_structured(model, plan, out, source=source,
                     overwrite=overwrite)


def _accuracy(dense: Any, slim: Any, data: Any, model_name: str | None, epochs: int,
              lr: float | None) -> dict[str, float]:
    from ..training import evaluate

    out = {"accuracy_before": evaluate(dense, data.test)["accuracy"],
           "accuracy_removed": evaluate(slim, data.test)["accuracy"]}
    if epochs:
        finetune(slim, data, model_name or "", epochs, lr, 0)
        out["accuracy_finetuned"] = evaluate(slim, data.test)["accuracy"]
    return out


def show_report(rep: dict[str, Any], out: Path) -> None:
    """Print the before/after table, accuracies and where the slim model went."""
    if "latency_ms_before" in rep:
        typer.echo("|  | before | after | after / before |\n|---|---:|---:|---:|")
        for what, k, fmt in (("MACs", "macs", "{:,}"), ("parameters", "params", "{:,}"),
                             ("latency (ms, median)", "latency_ms", "{:.3f}")):
            b, a = rep[f"{k}_before"], rep[f"{k}_after"]
            typer.echo(f"| {what} | {fmt.format(b)} | {fmt.format(a)} | {f'{a / b:.3f}' if b else '-'} |")
    else:
        typer.echo(f"MACs {rep['macs_before']:,} -> {rep['macs_after']:,}; parameters {rep['params_before']:,} -> "
                   f"{rep['params_after']:,}")
    for k in ("accuracy_before", "accuracy_removed", "accuracy_finetuned"):
        if k in rep:
            typer.echo(f"{k.replace('_', ' ')}: {rep[k]:.4f}")
    typer.echo(f"slim model written to {out} (load with prunekit.structured.load_structured)")


def structured_prune(
    source: Annotated[str, typer.Argument(help="zoo model name, prunekit checkpoint folder or transformers folder")],
    out: c.Out,
    target_macs: Annotated[float | None, typer.Option(help="keep this fraction of MACs, in (0, 1]")] = None,
    target_params: Annotated[float | None, typer.Option(help="keep this fraction of parameters, in (0, 1]")] = None,
    method: Annotated[str, typer.Option(help="group importance: l1 | l2 | taylor | fpgm | bn_scale | fluctuation | "
                                        "random")] = "l2",
    allocation: Annotated[str, typer.Option(help="uniform | global")] = "uniform",
    exclude: c.Exclude = None,
    round_to: Annotated[int, typer.Option(help="kept channel counts are multiples of this")] = 1,
    remove_blocks: Annotated[str, typer.Option(help="fraction of repeated blocks removed first, or 'auto'")] = "0",
    dataset: c.Dataset = None,
    finetune_epochs: Annotated[int, typer.Option(help="fine-tune the slim model this many epochs")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    overwrite: c.Overwrite = False,
) -> None:
    """Remove channels, heads and neurons to a MACs or parameter budget; show MACs, params, latency."""
    prune(source, out, method=method, structured=True, target_macs=target_macs, target_params=target_params,
          allocation=allocation, exclude=exclude, round_to=round_to, remove_blocks=remove_blocks, dataset=dataset,
          finetune_epochs=finetune_epochs, as_json=as_json, overwrite=overwrite, **_prune_defaults())


def _prune_defaults() -> dict[str, Any]:
    return dict(sparsity=None, pattern="unstructured", scope=c.DEFAULT_SCOPE, model_arg=None, finetune_lr=None,
                seed=0, threads=None, owl=False, owl_m=None, owl_lambda=None, dsnot=False, calib=None, nsamples=None,
                seq_len=None, batch_size=None, device=None, state_dir=None, show_layers=False, db=None)


def groups(
    source: Annotated[str, typer.Argument(help="zoo model name, prunekit checkpoint folder or transformers folder")],
    exclude: c.Exclude = None,
) -> None:
    """List the coupled groups of a model: what would be removed together."""
    from ..structured.graph import build_graph
    from ..structured.source import load_source

    model, inputs, _ = load_source(source)
    g = build_graph(model, inputs, c.excluded(exclude, defaults=False))
    typer.echo("| group | units | kind | exact | members |\n|---:|---:|---|---|---|")
    for row in g.summary():
        ms = ", ".join(row["members"][:4]) + (f" (+{len(row['members']) - 4})" if len(row["members"]) > 4 else "")
        typer.echo(f"| {row['id']} | {row['size']} | {row['kind']} | {'yes' if row['exact'] else 'no'} | {ms} |")
    typer.echo(f"MACs {g.macs():,}, parameters {g.params():,}")
