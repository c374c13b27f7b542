"""``prunekit delta prune|merge``: prune a fine-tuning delta (DARE, DAREx-q, magnitude) or merge two of one base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

delta_app = c.app_group("Delta pruning and merging of models fine-tuned from one base.")
PRUNE_METHODS = ("dare", "darex", "magnitude")
MERGE_METHODS = ("task-arithmetic", "ties")


def register(app: typer.Typer) -> None:
    """Add the ``delta`` group (``prune``, ``merge``) to ``app``."""
    c.command(delta_app, "prune")(prune)
    c.command(delta_app, "merge")(merge)
    app.add_typer(delta_app, name="delta", help="Delta pruning (DARE, DAREx-q, magnitude) and merging.")


def _rate(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"--rate must be a drop fraction in [0, 1); got {value!r}")
    return value


Rate = Annotated[float, typer.Option("--rate", help="fraction of the delta dropped, in [0, 1)", callback=_rate)]


def _check_dirs(*paths: Path) -> None:
    for p in paths:
        if not p.is_dir():
            raise FileNotFoundError(f"model folder {p} does not exist (a zoo checkpoint or a save_pretrained folder)")


def prune(
    base: Annotated[Path, typer.Argument(help="the base (pre-trained) model folder")],
    tuned: Annotated[Path, typer.Argument(help="a model fine-tuned from BASE")],
    out: c.Out,
    method: Annotated[str, typer.Option(help="dare | darex (DAREx-q) | magnitude",
                                        callback=c.choice("--method", PRUNE_METHODS))] = "dare",
    rate: Rate = 0.9,
    q: Annotated[float | None, typer.Option(help="darex: rescale 1/q, q in (0, 1] (default: tuned on held-out "
                                            "inputs, no labels)")] = None,
    dataset: c.Dataset = None,
    seed: c.Seed = 0,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Prune the delta TUNED - BASE and save BASE + pruned delta (the tuned model's format)."""
    if q is not None and (method != "darex" or not 0.0 < q <= 1.0):
        raise ValueError(f"--q is DAREx-q's rescale in (0, 1] and needs --method darex; got --q {q} with --method "
                         f"{method}")
    _check_dirs(base, tuned)
    c.check_out(out, overwrite=overwrite, inputs=[base, tuned], expected_bytes=c.folder_bytes(tuned))
    from .. import delta as D

    model, kind, man, (state,) = D.load_family(base, [tuned])
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shared, head, prefix = D.split_tuned(base_state, state)
    tau = {prefix + k: v for k, v in D.task_vector(base_state, shared).items()}
    if head or prefix:  # a task model over the base (BertForSequenceClassification over BertModel): save that
        model = D.load_folder(tuned)[0]
        base_state = D.rebuild(base_state, {}, head, prefix)  # the base under the tuned names, the head whole
    rec: dict[str, Any] = {"method": method, "rate": rate, "seed": seed, "base": str(base), "tuned": str(tuned),
                           "prefix": prefix, "kept_whole": sorted(head)}
    data = _data(kind, man, dataset, base) if kind == "zoo" or (method == "darex" and q is None) else {}
    if method == "darex" and q is None:
        if data.get("inputs") is None:
            raise ValueError(f"--method darex needs --q or held-out inputs to tune q: {tuned} names no data set; "
                             "pass --dataset NAME")
        q, table = D.tune_q_unlabeled(model, base_state, state, tau, rate, data["inputs"], seed)
        rec["q_table"] = table
    rec["q"] = q if method == "darex" else (1 - rate if method == "dare" else None)
    pruned = D.prune_delta(tau, method, rate, seed, q)
    rec.update(D.delta_stats(tau, pruned))
    model.load_state_dict(D.apply_delta(base_state, pruned))
    rec.update(_accuracy(model, data, state, "pruned"))
    D.save_folder(model, kind, man, out, rec, tokenizer_from=tuned if kind == "hf" else None, overwrite=overwrite)
    typer.echo(_line(rec, out))
    _record(db, out, "delta-prune", rec, kind)


def merge(
    base: Annotated[Path, typer.Argument(help="the base (pre-trained) model folder")],
    a: Annotated[Path, typer.Argument(help="a model fine-tuned from BASE")],
    b: Annotated[Path, typer.Argument(help="another model fine-tuned from BASE")],
    out: c.Out,
    method: Annotated[str, typer.Option(help="task-arithmetic | ties", callback=c.choice("--method", MERGE_METHODS))
                      ] = "task-arithmetic",
    lam: Annotated[float, typer.Option(help="scale of the merged delta")] = 1.0,
    rate: Annotated[float, typer.Option("--rate", help="task-arithmetic: DARE drop rate applied to each delta first",
                                        callback=_rate)] = 0.0,
    density: Annotated[float, typer.Option(help="ties: fraction of each delta kept before the sign election")
                       ] = 0.2,
    seed: c.Seed = 0,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Merge the deltas A - BASE and B - BASE into BASE (task arithmetic, optionally DARE first, or TIES)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"--density must be in (0, 1], got {density}")
    _check_dirs(base, a, b)
    c.check_out(out, overwrite=overwrite, inputs=[base, a, b], expected_bytes=c.folder_bytes(base))
    from .. import delta as D

    model, kind, man, states = D.load_family(base, [a, b])
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    taus = [D.task_vector(base_state, s) for s in states]
    merged = D.merge_deltas(taus, method, lam, rate, density, seed)
    model.load_state_dict(D.apply_delta(base_state, merged))
    rec: dict[str, Any] = {"method": method, "lam": lam, "rate": rate, "density": density, "seed": seed,
                           "base": str(base), "models": [str(a), str(b)]}
    rec.update(_accuracy(model, _data(kind, man, None, base), None, "merged") if kind == "zoo" else {})
    D.save_folder(model, kind, man, out, rec, tokenizer_from=a if kind == "hf" else None, overwrite=overwrite)
    typer.echo(f"merged {a} and {b} into {base} ({method}) -> {out}" +
               (f"; test accuracy {rec['accuracy_merged']:.4f}" if "accuracy_merged" in rec else ""))
    _record(db, out, "delta-merge", rec, kind)


def _data(kind: str, man: dict[str, Any], dataset: str | None, base: Path) -> dict[str, Any]:
    """Held-out inputs (DAREx-q's criterion) and the test split where the folder names a zoo data set."""
    import torch

    if kind == "zoo":
        name = dataset or man.get("dataset")
        if name is None:
            return {"inputs": None}
        from ..zoo import get_dataset

        split = get_dataset(name)
        return {"inputs": split.x_train[:512], "test": split.test, "name": name}
    from ..calibrate.data import builtin_texts, sample_windows, tokenize_stream
    from ..calibrate.workflow import load_tokenizer

    stream = tokenize_stream(builtin_texts("validation")[:200], load_tokenizer(base))
    return {"inputs": sample_windows(stream, 16, 64, seed=0).to(torch.long)}


def _accuracy(model: Any, data: dict[str, Any], tuned: dict[str, Any] | None, what: str) -> dict[str, float]:
    if "test" not in data:
        return {}
    from ..training import evaluate

    out = {f"accuracy_{what}": evaluate(model, data["test"])["accuracy"]}
    if tuned is not None:
        now = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(tuned)
        out["accuracy_tuned"] = evaluate(model, data["test"])["accuracy"]
        model.load_state_dict(now)
    return out


def _line(rec: dict[str, Any], out: Path) -> str:
    acc = (f"; test accuracy tuned {rec['accuracy_tuned']:.4f}, pruned {rec['accuracy_pruned']:.4f}"
           if "accuracy_pruned" in rec else "")
    q = f", q={rec['q']:.4g}" if rec.get("q") is not None else ""
    whole = (f"; {len(rec['kept_whole'])} tuned tensors the base lacks kept whole ({', '.join(rec['kept_whole'][:4])})"
             if rec.get("kept_whole") else "")
    return (f"delta {rec['method']} at rate {rec['rate']}{q}: kept {rec['nonzero_after']:,} of "
            f"{rec['nonzero_before']:,} nonzero delta entries{acc}{whole} -> {out}")


def _record(db: Path | None, out: Path, experiment: str, rec: dict[str, Any], kind: str) -> None:
    from .prune import record

    keys = ("method", "rate", "seed", "base", "tuned", "models", "lam", "density", "prefix", "kept_whole")
    config = {k: rec[k] for k in keys if k in rec}
    metrics = {k: v for k, v in rec.items() if k not in config and k != "q_table"}
    record(db, out, experiment, config, "llm" if kind == "hf" else "model", metrics)
