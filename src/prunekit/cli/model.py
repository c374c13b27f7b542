"""``prunekit train | inspect | methods`` and ``prunekit sparse lottery``: zoo models, dense or sparse."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

sparse_app = c.app_group("Sparse training aliases and lottery tickets (IMP with rewinding).")


def register(app: typer.Typer) -> None:
    """Add ``train``, ``inspect``, ``methods`` and the ``sparse`` group to ``app``."""
    c.command(app, "train")(train)
    c.command(app, "inspect")(inspect)
    c.command(app, "methods")(methods)
    c.alias(sparse_app, "train", train, "sparse train", "train --method ...")
    c.command(sparse_app, "lottery")(lottery)
    c.alias(sparse_app, "methods", methods, "sparse methods", "methods")
    app.add_typer(sparse_app, name="sparse", help="Sparse training aliases and lottery tickets.")


def source_model(source: str, kwargs: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any], Any]:
    """A zoo model name (fresh weights, seed 0) or a checkpoint folder -> (model, manifest, masks)."""
    from ..checkpoint import load_checkpoint
    from ..io import settle
    from ..zoo import MODELS, get_model

    settle(source)  # a replace of this folder interrupted by a crash is finished (or rolled back) first
    if Path(source).exists() or "/" in source or source.startswith("."):
        if kwargs:
            raise ValueError("--model-arg applies to a zoo model name, not to a checkpoint folder")
        return load_checkpoint(source)
    if source not in MODELS:
        raise ValueError(f"{source!r} is neither a checkpoint folder nor a zoo model; zoo models: "
                         f"{', '.join(MODELS.names())}")
    kw = dict(kwargs or {})
    return get_model(source, seed=0, **kw), {"model": {"name": source, "kwargs": kw}}, None


def dataset_of(name: str | None, model_name: str | None, manifest: dict[str, Any] | None = None) -> Any:
    """``--dataset`` (a zoo name or a .npz/.csv file), else the checkpoint's, else the model's recipe data set."""
    from ..zoo import RECIPE_DATASETS, get_dataset, load_user_data

    name = name or (manifest or {}).get("dataset") or RECIPE_DATASETS.get(model_name or "")
    if name is None:
        return None
    return load_user_data(name) if Path(name).exists() else get_dataset(name)


def recipe_of(model: str, epochs: int | None) -> dict[str, Any]:
    """The zoo recipe of ``model`` (``--epochs`` overrides its length)."""
    from ..zoo import RECIPES

    recipe = dict(RECIPES.get(model, dict(epochs=20, lr=0.05, optimizer="sgd")))
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"--epochs must be a positive integer, got {epochs}")
        recipe["epochs"] = epochs
    return recipe


def train(
    model: Annotated[str, typer.Argument(help="zoo model name, e.g. cnn1d")],
    out: c.Out,
    method: Annotated[str, typer.Option(help="dense, or a sparse-training method (see `prunekit methods`)")] = "dense",
    sparsity: c.Sparsity = None,
    pattern: c.PatternOpt = "unstructured",
    scope: c.Scope = c.DEFAULT_SCOPE,
    allocation: Annotated[str | None, typer.Option(help="uniform | er | erk (default: erk, SET: er)")] = None,
    exclude: c.Exclude = None,
    model_arg: c.ModelArg = None,
    dataset: c.Dataset = None,
    epochs: Annotated[int | None, typer.Option(help="default: the model's recipe")] = None,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    update_every: Annotated[int, typer.Option(help="rigl/set/granet: steps between mask updates")] = 100,
    update_fraction: Annotated[float, typer.Option(help="rigl/set/granet: initial drop/grow fraction, "
                                                   "in (0, 1)")] = 0.3,
    teacher: Annotated[Path | None, typer.Option("--distill", "--teacher", help="checkpoint folder of a teacher "
                                                 "(e.g. trained on the full data): adds knowledge distillation, "
                                                 "loss = (1 - alpha) task + alpha T^2 KL")] = None,
    alpha: Annotated[float, typer.Option(help="distillation weight in [0, 1]")] = 0.5,
    temperature: Annotated[float, typer.Option(help="distillation temperature > 0")] = 4.0,
    subset: Annotated[Path | None, typer.Option(help="a `prunekit data select` folder: train only on its kept "
                                                "examples of the data set's training split")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option(help="save training state here (resumable)")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="steps between training-state checkpoints")] = 500,
    resume: Annotated[bool, typer.Option(help="resume from --checkpoint-dir if it holds a checkpoint")] = False,
    init: Annotated[Path | None, typer.Option(help="start from this checkpoint folder's weights (jackpot searches "
                                              "a trained model)")] = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Train a zoo model, dense or sparse (RigL, SET, GraNet, SR-STE N:M, gradual, pruning at init); save it."""
    # before the registry imports torch
    c.check_out(out, overwrite=overwrite, inputs=[teacher, checkpoint_dir, init, subset])
    c.method_kind(method, kinds=("training",))
    c.check_sparsity_pattern(sparsity, pattern, required=method not in ("dense", "srste"))
    if method in ("dense", "srste") and sparsity is not None:
        raise ValueError(f"--sparsity does not apply to --method {method} (dense trains dense; srste takes an "
                         f"N:M --pattern)")
    n, m = _nm(method, pattern)
    if resume and checkpoint_dir is None:
        raise ValueError("--resume needs --checkpoint-dir")
    c.set_threads(threads)
    from ..training.methods import training_callbacks
    from ..zoo import get_model, input_shape

    kwargs = c.model_args(model_arg)
    from ..registry import METHODS

    canonical = METHODS.get(method, kind="training").name
    if canonical == "jackpot" and init is None:
        raise ValueError("--method jackpot searches a mask over a trained model's weights: pass --init CHECKPOINT")
    net = get_model(model, seed=seed, **kwargs)
    if init is not None:
        _load_init(net, init)
    recipe = recipe_of(model, epochs)
    needs_data_now = canonical in ("snip-init", "grasp-init") or subset is not None
    data = dataset_of(dataset, model) if needs_data_now else None
    picked = _subset(data, subset, model) if subset is not None else None
    data = picked[0] if picked is not None else data
    pai = {"input_shape": list(input_shape(model, **kwargs))} if canonical in ("synflow-init", "sign-supermask") \
        else None
    cbs = training_callbacks(method, sparsity, data=data.train if data is not None else None, n=n, m=m,
                             update_every=update_every, update_fraction=update_fraction, allocation=allocation,
                             scope=scope, exclude=c.excluded(exclude), seed=seed, teacher=_teacher(teacher),
                             alpha=alpha, temperature=temperature, pai_options=pai)
    data = data if data is not None else dataset_of(dataset, model)
    if data is None:
        raise ValueError(f"no default data set for model {model!r}: pass --dataset")
    if checkpoint_dir is not None and canonical in SUPERMASKS:
        raise ValueError(f"--checkpoint-dir does not apply to --method {method} (supermask training is not resumable)")
    _fit(net, data, cbs, recipe, seed, checkpoint_dir, checkpoint_every, resume)
    extra: dict[str, Any] = {"method": method, "sparsity": sparsity, "recipe": recipe, "seed": seed}
    if picked is not None:
        extra["subset"] = picked[1]
    if teacher is not None:
        extra["distill"] = {"teacher": str(teacher), "alpha": alpha, "temperature": temperature}
    finish(net, {"name": model, "kwargs": kwargs}, data, out, overwrite, extra, c.excluded(exclude),
           also=_supermask_writer(cbs, {"name": model, "kwargs": kwargs}))


SUPERMASKS = ("edge-popup", "sign-supermask", "jackpot")


def _supermask_writer(cbs: list[Any], spec: dict[str, Any]) -> Any:
    """For a supermask method: a writer of its frozen weights and bits into ``OUT/supermask`` (kind supermask)."""
    from ..training.supermask import Supermask, write_supermask

    sm = next((cb for cb in cbs if isinstance(cb, Supermask)), None)
    if sm is None or sm.state is None:
        return None
    return lambda tmp: write_supermask(tmp / "supermask", sm.state, {"model": spec})


def _load_init(net: Any, folder: Path) -> None:
    """Copy the (baked) weights of the checkpoint ``folder`` into ``net``; its masks are not attached."""
    from ..checkpoint import load_checkpoint

    src, _, _ = load_checkpoint(folder)
    try:
        net.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as e:
        raise ValueError(f"--init {folder}: its weights do not fit the model ({str(e)[:300]})") from e




def _subset(data: Any, folder: Path, model: str) -> tuple[Any, dict[str, Any]]:
    """``data`` with its training split cut to the kept indices of the selection ``folder``; a manifest summary."""
    from dataclasses import replace

    from ..data.io import load_selection

    if data is None:
        raise ValueError(f"no default data set for model {model!r}: pass --dataset with --subset")
    if not (folder / "manifest.json").is_file():
        raise ValueError(f"--subset {str(folder)!r} is not a selection folder (no manifest.json); "
                         "make one with `prunekit data select`")
    kept, man = load_selection(folder, num_examples=len(data.y_train))
    if len(kept) == 0:
        raise ValueError(f"--subset {str(folder)!r} keeps no example")
    sub = replace(data, x_train=data.x_train[kept], y_train=data.y_train[kept])
    c.say(f"training on {len(kept)} of {len(data.y_train)} examples ({man.get('method')} selection {folder})")
    return sub, {"path": str(folder), "method": man.get("method"), "num_kept": len(kept),
                 "num_examples": len(data.y_train)}


def _nm(method: str, pattern: str) -> tuple[int, int]:
    """SR-STE's N:M from ``--pattern`` (2:4 when unstructured); an N:M pattern needs ``--method srste``."""
    if c.is_nm(pattern):
        if method != "srste":
            raise ValueError(f"--pattern {pattern} trains with --method srste (SR-STE), got --method {method}")
        n, m = pattern.split(":")
        return int(n), int(m)
    if pattern != "unstructured":
        raise ValueError(f"--pattern for training must be unstructured or N:M (e.g. 2:4), got {pattern!r}")
    return 2, 4


def _fit(net: Any, data: Any, cbs: list[Any], recipe: dict[str, Any], seed: int, checkpoint_dir: Path | None,
         checkpoint_every: int, resume: bool) -> None:
    from ..training.checkpoint import INDEX, CheckpointEvery, load_checkpoint
    from ..training.loop import fit, make_optimizer

    extra = [CheckpointEvery(checkpoint_dir, checkpoint_every, list(cbs))] if checkpoint_dir else []
    state = None
    if resume and (checkpoint_dir / INDEX).is_file():  # type: ignore[operator]
        opt = make_optimizer(recipe.get("optimizer", "sgd"), net.parameters(), recipe.get("lr", 0.1),
                             recipe.get("weight_decay", 5e-4), recipe.get("momentum", 0.9))
        ck = load_checkpoint(checkpoint_dir, net, opt, cbs)  # type: ignore[arg-type]
        state = ck.train_state(net, opt)
        c.say(f"resuming at step {ck.step}")
    fit(net, data.train, callbacks=[*cbs, *extra, *c.epoch_lines()], seed=seed, progress=c.on_tty(), state=state,
        **recipe)


def _teacher(path: Path | None) -> Any:
    if path is None:
        return None
    from ..checkpoint import load_checkpoint

    teacher, _, _ = load_checkpoint(path)
    return teacher


def finish(net: Any, spec: dict[str, Any], data: Any, out: Path, overwrite: bool, extra: dict[str, Any],
           exclude: list[str], also: Any = None) -> None:
    """Evaluate, save the checkpoint folder (weights, masks, manifest) and print one labelled summary line."""
    from ..api import sparsity_report
    from ..masks import attached
    from ..training.loop import evaluate

    metrics = evaluate(net, data.test)
    ms = attached(net)
    masks = ms.bake() if ms is not None else None
    ledger = sparsity_report(net, exclude=exclude).ledger  # zeros counted now, labelled, with what was kept and why
    save(out, net, spec, masks, {**extra, "dataset": data.name, "metrics": metrics,
                                 "measured_sparsity": ledger.measured.sparsities()["pruned_weights"],
                                 "ledger": ledger.to_dict()}, overwrite, also)
    typer.echo(f"test accuracy {metrics['accuracy']:.4f}; {ledger.measured.line()}; checkpoint written to {out}")


def save(out: Path, net: Any, spec: dict[str, Any], masks: Any, extra: dict[str, Any], overwrite: bool,
         also: Any = None) -> None:
    """``save_checkpoint`` with ``overwrite=`` where the library accepts it (``also`` writes more files)."""
    from ..checkpoint import save_checkpoint

    save_checkpoint(out, net, spec, masks, extra=extra, overwrite=overwrite, also=also)


def lottery(
    model: Annotated[str, typer.Argument(help="zoo model name, e.g. cnn1d")],
    out: c.Out,
    sparsity: c.Sparsity = None,
    fraction: Annotated[float, typer.Option(help="fraction of the remaining weights pruned per level, "
                                            "in (0, 1)")] = 0.2,
    rewind_step: Annotated[int, typer.Option(help="rewind survivors to their values after this many steps")] = 0,
    optimizer_state: Annotated[str, typer.Option(help="reset | rewind | keep")] = "reset",
    scope: c.Scope = c.DEFAULT_SCOPE,
    exclude: c.Exclude = None,
    model_arg: c.ModelArg = None,
    dataset: c.Dataset = None,
    epochs: Annotated[int | None, typer.Option(help="per level; default: the model's recipe")] = None,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    control_seed: Annotated[int | None, typer.Option(help="also train the final masks from a random init "
                                                     "(seed)")] = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Iterative magnitude pruning with rewinding (lottery tickets) to --sparsity; prints accuracy per level."""
    if sparsity is None:
        raise ValueError("--sparsity (the final target, in [0, 1)) is required for lottery tickets")
    c.check_out(out, overwrite=overwrite)
    c.set_threads(threads)
    from ..training.loop import evaluate
    from ..training.lottery import iterative_magnitude, random_reinit_control
    from ..zoo import get_model

    kwargs = c.model_args(model_arg)
    net, recipe = get_model(model, seed=seed, **kwargs), recipe_of(model, epochs)
    data = dataset_of(dataset, model)
    if data is None:
        raise ValueError(f"no default data set for model {model!r}: pass --dataset")
    res = iterative_magnitude(net, data.train, target_sparsity=sparsity, fraction=fraction, rewind_step=rewind_step,
                              optimizer_state=optimizer_state, scope=scope, exclude=c.excluded(exclude),
                              val_data=data.test, eval_every_epoch=False, seed=seed, progress=c.on_tty(),
                              callbacks=c.epoch_lines("level epoch"), **recipe)
    typer.echo("| level | sparsity | test accuracy |\n|---:|---:|---:|")
    for lv in res.levels:
        typer.echo(f"| {lv.level} | {lv.sparsity:.4f} | {lv.metrics.get('val_accuracy', float('nan')):.4f} |")
    extra: dict[str, Any] = {"method": "lottery", "settings": res.settings, "recipe": recipe, "seed": seed,
                             "levels": [{"level": lv.level, "sparsity": lv.sparsity, **lv.metrics}
                                        for lv in res.levels]}
    if control_seed is not None:
        ctrl = get_model(model, seed=seed, **kwargs)
        random_reinit_control(ctrl, res.masks(), data.train, seed=control_seed,
                              factory={"name": model, "kwargs": kwargs}, **recipe)
        extra["reinit_control_accuracy"] = evaluate(ctrl, data.test)["accuracy"]
        typer.echo(f"random reinit, same masks: test accuracy {extra['reinit_control_accuracy']:.4f}")
    finish(net, {"name": model, "kwargs": kwargs}, data, out, overwrite, extra, c.excluded(exclude))


def inspect(
    source: Annotated[str, typer.Argument(help="zoo model name or checkpoint folder")],
    batch: Annotated[int, typer.Option(help="batch size of the example input for MACs")] = 1,
    model_arg: c.ModelArg = None,
) -> None:
    """Per-layer table of params, non-zeros, sparsity and MACs of a model or checkpoint."""
    import json

    from ..accounting import format_table, layer_table, totals
    from ..zoo import example_inputs

    model, manifest, _ = structured_source(source) or source_model(source, c.model_args(model_arg))
    x = example_inputs(manifest["model"]["name"], batch=batch, **manifest["model"].get("kwargs", {}))
    typer.echo(format_table(layer_table(model, x), fmt="text"))
    typer.echo(json.dumps(totals(model, x), ensure_ascii=False))


def structured_source(source: str) -> tuple[Any, dict[str, Any], None] | None:
    """A slim model folder (kind structured) of a zoo source -> (model, manifest with its model spec, None)."""
    from ..io import read_json, read_manifest, settle

    settle(source)
    folder = Path(source)
    if not (folder / "manifest.json").is_file():
        return None
    man = read_manifest(folder)
    if man["kind"] != "structured":
        return None
    from ..structured.save import load_structured

    model = load_structured(folder)
    plan = folder / str(man.get("plan", "plan.json"))
    src = read_json(plan, "structured plan").get("source") or {}
    if "zoo" not in src:
        raise ValueError(f"{plan}: inspect reads slim models of zoo models; this one's source is {src!r:.100}")
    return model, {**man, "model": {"name": src["zoo"], "kwargs": src.get("kwargs", {})}}, None


def methods(
    kind: Annotated[str | None, typer.Option(help="only this kind (oneshot, calibrated, training, "
                                             "training-driver, structured, data-score, data-selector)")] = None,
) -> None:
    """List every registered method by kind."""
    table = c.method_table()
    if kind is not None and kind not in table:
        raise ValueError(f"--kind must be one of {', '.join(table)}; got {kind!r}")
    for k, names in table.items():
        if kind in (None, k):
            typer.echo(f"{k}: {', '.join(names)}")
