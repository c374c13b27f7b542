"""``prunekit data``: score | select | dedup | resample. Thin: parses flags and files, calls the library.

Files: scores and labels are ``.npy`` vectors; embeddings a 2-D ``.npy`` (memory-mapped); text pools
``.jsonl`` (one JSON object per line, ``--text-field``) or ``.txt`` (one document per line). Every
output folder gets ``kept.npy`` + ``manifest.json``; ``score`` writes ``<out>.npy`` + ``<out>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

app = typer.Typer(help="Prune training data: score examples, select, deduplicate, resample.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fail(e: BaseException) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _load_vector(path: Path, name: str) -> np.ndarray:
    if not path.exists():
        raise ValueError(f"{name} file {str(path)!r} does not exist")
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 1:
        raise ValueError(f"{name} file {str(path)!r} must hold a 1-D array, got shape {arr.shape}")
    return arr


def _train_split(dataset: str) -> Any:
    from ..zoo import get_dataset

    return get_dataset(dataset)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None


def _dynamics_runs(dynamics: list[Path], dataset: str | None, model: str | None, seeds: str, epochs: int,
                   workdir: Path | None) -> list[Any]:
    from .dynamics import as_runs
    from .proxy import record_runs

    if dynamics:
        return as_runs(dynamics)
    if not (dataset and model and workdir):
        raise ValueError("dynamics scores need --dynamics FOLDER (recorded runs) or --dataset, --model and "
                         "--workdir to record proxy runs")
    from ..zoo import RECIPES, get_model

    recipe = {k: v for k, v in RECIPES.get(model, {}).items() if k != "epochs"}
    data = _train_split(dataset)
    return record_runs(lambda s: get_model(model, seed=s), data.train, workdir, seeds=_seeds(seeds), epochs=epochs,
                       **recipe)


def _scores_from(method: str, dynamics: list[Path], embeddings: Path | None, num_examples: int | None,
                 params: dict[str, Any], run_args: tuple) -> Any:
    from . import cluster, scores

    if method in scores.DYNAMICS_SCORES:
        runs = _dynamics_runs(dynamics, *run_args)
        if method == "el2n":
            if params["epoch"] == "auto":  # record the epoch the rule picked in the manifest
                params["epoch"] = scores.learned_epoch(runs)
                params["epoch_rule"] = f"auto: training accuracy >= {scores.EL2N_AUTO_FRACTION} of its final value"
            return scores.el2n(runs, epoch=params["epoch"])
        return scores.DATA_SCORES.get(method)(runs)
    if method == "prototype":
        if embeddings is None:
            raise ValueError("method 'prototype' needs --embeddings FILE.npy")
        return cluster.prototype(str(embeddings), n_clusters=params["clusters"], seed=params["seed"],
                                 backend=params["backend"])
    if method == "grand":
        dataset, model, seeds = run_args[0], run_args[1], run_args[2]
        if not (dataset and model):
            raise ValueError("method 'grand' needs --dataset and --model (gradient norms at initialisation)")
        from ..zoo import get_model

        models = [get_model(model, seed=s) for s in _seeds(seeds)]
        return scores.grand(models, _train_split(dataset).train, backend=params["backend"])
    if method == "random":
        if num_examples is None:
            raise ValueError("method 'random' needs --num-examples")
        return scores.random(num_examples, seed=params["seed"])
    raise ValueError(f"method must be one of {', '.join(SCORE_METHODS)}, got {method!r}")


def _epoch_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--epoch must be a 0-based epoch (integer) or 'auto', got {text!r}") from None


SCORE_METHODS = ("el2n", "forgetting", "aum", "prob-aum", "entropy", "loss", "grand", "prototype", "random")


@app.command()
def score(
    method: str = typer.Option(..., help=f"one of {', '.join(SCORE_METHODS)}"),
    out: Path = typer.Option(..., help="output path; writes OUT.npy and OUT.json"),
    dynamics: list[Path] = typer.Option([], help="a recorded run folder (repeat for several seeds)"),
    epoch: str = typer.Option("auto", help="el2n: the (early) epoch to read, 0-based, or 'auto' (the first epoch "
                              "at which the runs' training accuracy reaches 0.9 of its final value)"),
    embeddings: Path | None = typer.Option(None, help="prototype: (N, d) .npy embeddings"),
    clusters: int = typer.Option(10, help="prototype: number of k-means clusters"),
    num_examples: int | None = typer.Option(None, help="random: data set size"),
    dataset: str | None = typer.Option(None, help="record proxy runs on this zoo data set"),
    model: str | None = typer.Option(None, help="record proxy runs with this zoo model"),
    seeds: str = typer.Option("0,1,2", help="proxy run seeds (grand: models at init, one per seed)"),
    epochs: int = typer.Option(10, help="proxy run epochs"),
    workdir: Path | None = typer.Option(None, help="folder for recorded proxy runs (reused when complete)"),
    seed: int = typer.Option(0, help="seed for random / k-means"),
    backend: str = typer.Option("local", help="grand / prototype: local, or ray (Ray Data; extra 'ray')"),
) -> None:
    """Score every example (higher = harder) and write the scores."""
    from .io import score_summary, write_json, write_npy

    try:
        if method not in SCORE_METHODS:
            raise ValueError(f"method must be one of {', '.join(SCORE_METHODS)}, got {method!r}")
        if backend not in ("local", "ray"):
            raise ValueError(f"--backend must be local or ray, got {backend!r}")
        params = {"epoch": _epoch_arg(epoch), "clusters": clusters, "seed": seed, "backend": backend}
        s = _scores_from(method, dynamics, embeddings, num_examples, params,
                         (dataset, model, seeds, epochs, workdir)).numpy()
        base = out.with_suffix("") if out.suffix == ".npy" else out
        write_npy(base.with_suffix(".npy"), s)
        write_json(base.with_suffix(".json"), {"version": 1, "kind": "data-scores", "method": method,
                                                "params": params, "num_examples": int(s.size),
                                                "score_summary": score_summary(s),
                                                "orientation": "higher = harder"})
    except (ValueError, TypeError, ImportError) as e:
        _fail(e)
    if "epoch_rule" in params:
        typer.echo(f"el2n epoch {params['epoch']} ({params['epoch_rule']})")
    typer.echo(f"wrote {s.size} {method} scores to {base.with_suffix('.npy')}")


@app.command()
def select(
    scores: Path = typer.Option(..., help="(N,) .npy scores, higher = harder"),
    keep: float = typer.Option(..., help="keep fraction in (0, 1]"),
    out: Path = typer.Option(..., help="output folder (kept.npy + manifest.json)"),
    rule: str = typer.Option("keep-hard", help="keep-hard | keep-easy | random | class-balanced | ccs | dbp"),
    labels: Path | None = typer.Option(None, help="class-balanced: (N,) .npy integer labels"),
    dataset: str | None = typer.Option(None, help="zoo data set: labels and size check from its train split"),
    num_classes: int | None = typer.Option(None, help="class-balanced: labels must lie in [0, num_classes)"),
    within: str = typer.Option("keep-hard", help="class-balanced / dbp: rule inside a class or cluster"),
    beta: float = typer.Option(0.0, help="ccs: fraction of hardest examples cut off first"),
    strata: int = typer.Option(50, help="ccs: number of equal-width score strata"),
    cutoff_scores: Path | None = typer.Option(None, help="ccs: scores for the hard cut-off (e.g. aum)"),
    embeddings: Path | None = typer.Option(None, help="dbp: (N, d) .npy embeddings to cluster"),
    clusters: int = typer.Option(10, help="dbp: number of k-means clusters"),
    temperature: float = typer.Option(0.5, help="dbp: softmax temperature"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Select the examples to keep from scores and write their indices and a manifest."""
    from .io import save_selection
    from .select import select as run_select

    try:
        s = _load_vector(scores, "scores")
        params: dict[str, Any] = {"seed": seed}
        y = None
        if dataset is not None:
            split = _train_split(dataset)
            y, num_classes = split.y_train.numpy(), num_classes or split.num_classes
            if len(y) != len(s):
                raise ValueError(f"scores has {len(s)} entries but data set {dataset!r} has {len(y)} training examples")
        if labels is not None:
            y = _load_vector(labels, "labels")
        if rule == "class-balanced":
            params.update(labels=y, within=within, num_classes=num_classes)
        elif rule == "ccs":
            params.update(beta=beta, strata=strata)
            if cutoff_scores is not None:
                params["cutoff_scores"] = _load_vector(cutoff_scores, "cutoff_scores")
        elif rule == "dbp":
            params.update(_dbp_params(embeddings, clusters, seed, len(s)), temperature=temperature, within=within)
        kept = run_select(s, keep, rule, **params)
        shown = {k: v for k, v in params.items() if k not in ("labels", "cutoff_scores", "clusters", "complexity")}
        save_selection(out, kept, num_examples=len(s), method=rule, params={**shown, "keep_fraction": keep},
                       seed=seed, scores=s, extra={"scores_file": str(scores)})
    except (ValueError, TypeError, ImportError) as e:
        _fail(e)
    typer.echo(f"kept {len(kept)} of {len(s)} examples -> {out}")


def _dbp_params(embeddings: Path | None, n_clusters: int, seed: int, n: int) -> dict[str, Any]:
    from .cluster import Embeddings, cluster_complexity, kmeans

    if embeddings is None:
        raise ValueError("rule 'dbp' needs --embeddings FILE.npy to cluster")
    emb = Embeddings(str(embeddings))
    if emb.n != n:
        raise ValueError(f"embeddings hold {emb.n} rows but scores has {n} entries; they must match")
    cl = kmeans(emb, n_clusters, seed=seed)
    return {"clusters": cl.assign, "complexity": cluster_complexity(cl)}


@app.command()
def dedup(
    embeddings: Path = typer.Option(..., help="(N, d) float .npy embeddings (memory-mapped)"),
    out: Path = typer.Option(..., help="output folder (kept.npy + manifest.json)"),
    eps: float = typer.Option(0.05, help="drop if cosine to a kept example > 1 - eps"),
    clusters: int = typer.Option(100, help="number of k-means clusters"),
    dim: int | None = typer.Option(None, help="expected embedding width (checked)"),
    keep: str = typer.Option("farthest", help="which duplicate to keep: farthest | closest | random"),
    seed: int = typer.Option(0, help="k-means seed"),
) -> None:
    """SemDeDup: remove semantic near-duplicates and write the kept indices."""
    from .dedup import semdedup
    from .io import save_selection

    try:
        if not embeddings.exists():
            raise ValueError(f"embeddings file {str(embeddings)!r} does not exist")
        res = semdedup(str(embeddings), eps=eps, n_clusters=clusters, seed=seed, keep=keep, dim=dim)
        save_selection(out, res.kept, num_examples=res.stats["num_examples"], method="semdedup",
                       params={"eps": eps, "n_clusters": clusters, "keep": keep}, seed=seed,
                       extra={"embeddings_file": str(embeddings), "stats": res.stats})
    except (ValueError, TypeError, ImportError) as e:
        _fail(e)
    typer.echo(f"kept {res.stats['num_kept']} of {res.stats['num_examples']} examples -> {out}")


def read_texts(path: Path, text_field: str = "text") -> list[str]:
    """Documents from ``.jsonl`` (field ``text_field``) or ``.txt`` (one per line)."""
    if not path.exists():
        raise ValueError(f"text file {str(path)!r} does not exist")
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if path.suffix != ".jsonl":
        return lines
    docs = []
    for i, ln in enumerate(lines):
        obj = json.loads(ln)
        if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
            raise ValueError(f"{str(path)!r} line {i + 1}: expected an object with a string field {text_field!r}")
        docs.append(obj[text_field])
    return docs


@app.command()
def resample(
    method: str = typer.Option(..., help="dsir | rs2"),
    out: Path = typer.Option(..., help="output folder"),
    raw: Path | None = typer.Option(None, help="dsir: raw pool (.jsonl or .txt)"),
    target: Path | None = typer.Option(None, help="dsir: target-domain examples (.jsonl or .txt)"),
    num: int | None = typer.Option(None, help="dsir: documents to select"),
    text_field: str = typer.Option("text", help="dsir: JSON field holding the text"),
    num_examples: int | None = typer.Option(None, help="rs2: data set size"),
    keep: float = typer.Option(0.1, help="rs2: fraction per epoch"),
    epochs: int = typer.Option(10, help="rs2: epochs to schedule"),
    replacement: bool = typer.Option(False, help="rs2: independent subsets per epoch"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Importance resampling (DSIR) of a text pool, or an RS2 per-epoch subset schedule."""
    from .io import save_selection, write_json, write_npy

    try:
        if method == "dsir":
            if raw is None or target is None or num is None:
                raise ValueError("dsir needs --raw, --target and --num")
            from .dsir import dsir as run_dsir

            pool = read_texts(raw, text_field)
            res = run_dsir(pool, read_texts(target, text_field), num, seed=seed)
            save_selection(out, res.kept, num_examples=len(pool), method="dsir", params=res.params, seed=seed,
                           scores=res.log_weights, extra={"raw_file": str(raw), "target_file": str(target)})
            msg = f"selected {len(res.kept)} of {len(pool)} documents -> {out}"
        elif method == "rs2":
            if num_examples is None:
                raise ValueError("rs2 needs --num-examples")
            from .sampler import RS2Sampler

            sch = RS2Sampler(num_examples, keep, replacement=replacement, seed=seed).schedule(epochs).numpy()
            write_npy(out / "schedule.npy", sch)
            write_json(out / "manifest.json", {"version": 1, "kind": "data-schedule", "method": "rs2",
                                               "params": {"keep_fraction": keep, "epochs": epochs,
                                                          "replacement": replacement}, "seed": seed,
                                               "num_examples": num_examples, "shape": list(sch.shape)})
            msg = f"wrote a {sch.shape[0]} x {sch.shape[1]} RS2 schedule -> {out}"
        else:
            raise ValueError(f"method must be 'dsir' or 'rs2', got {method!r}")
    except (ValueError, TypeError, ImportError) as e:
        _fail(e)
    typer.echo(msg)
