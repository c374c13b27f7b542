"""``prunekit data``: score | select | dedup | resample | embed. Thin: parses flags and files, calls the library.

Files: scores and labels are ``.npy`` vectors; embeddings a 2-D ``.npy`` (memory-mapped); text pools
``.jsonl`` (one JSON object per line, ``--text-field``) or ``.txt`` (one document per line). Every
output folder gets ``kept.npy`` (or ``embeddings.npy``) + ``manifest.json``; ``score`` writes
``<out>.npy`` + ``<out>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

app = c.app_group("Prune training data: score examples, select, deduplicate, resample, embed.")
TextField = Annotated[str, typer.Option(help="JSON field holding the text (.jsonl)")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", help="with --backend ray: the Ray cluster to join "
                                                "(ray.init(address=...), e.g. auto or ray://host:10001; default "
                                                "$RAY_ADDRESS, else a local Ray)")]
NOISE_THEN = ("random", "ccs", "keep-easy", "keep-hard")  # noise-aware --then (data.select.NOISE_THEN_RULES)


def register(main: typer.Typer) -> None:
    """Add the ``data`` group to ``main``."""
    for name, fn in (("score", score), ("select", select), ("dedup", dedup), ("resample", resample),
                     ("embed", embed)):
        c.command(app, name)(fn)
    main.add_typer(app, name="data", help="Data pruning: score, select, dedup, resample, embed a training set.")


def _backend(backend: str, ray_address: str | None, local_why: str | None = None) -> dict[str, Any]:
    """Start Ray when the command uses it; the manifest's ``backend`` entry says where it ran and why."""
    if ray_address is not None and backend != "ray":
        raise ValueError("--ray-address needs --backend ray")
    if backend != "ray":
        return {"requested": backend, "ran": "local"}
    if local_why is not None:
        c.say(f"--backend ray: this step runs locally ({local_why})")
        return {"requested": "ray", "ran": "local", "why": local_why}
    from ..data.ray_backend import init_ray

    return {"requested": "ray", "ran": "ray", **init_ray(ray_address)}


def _load_vector(path: Path, name: str) -> Any:
    from ..data.checks import open_npy

    return open_npy(path, name, ndim=1)


def _train_split(dataset: str) -> Any:
    from ..zoo import get_dataset

    return get_dataset(dataset)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers such as 0,1,2, got {text!r}") from None


def _dynamics_runs(dynamics: list[Path], dataset: str | None, model: str | None, seeds: str, epochs: int,
                   workdir: Path | None) -> list[Any]:
    from ..data.dynamics import as_runs
    from ..data.proxy import record_runs

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
    from ..data import cluster, scores

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
    if num_examples is None:
        raise ValueError("method 'random' needs --num-examples")
    return scores.random(num_examples, seed=params["seed"])


def _epoch_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--epoch must be a 0-based epoch (integer) or 'auto', got {text!r}") from None


def score(
    method: Annotated[str, typer.Option(help="a registered data score: el2n, forgetting, aum, prob-aum, entropy, "
                                        "loss, grand, prototype, random (`prunekit methods --kind data-score`)",
                                        callback=c.registered("--method", "data-score"))],
    out: Annotated[Path, typer.Option("--out", help="output path; writes OUT.npy and OUT.json (refused if they "
                                      "exist, unless --overwrite)")],
    dynamics: Annotated[list[Path] | None, typer.Option(help="a recorded run folder (repeat for several "
                                                        "seeds)")] = None,
    epoch: Annotated[str, typer.Option(help="el2n: the (early) epoch to read, 0-based, or 'auto' (the first epoch "
                                       "at which the runs' training accuracy reaches 0.9 of its final "
                                       "value)")] = "auto",
    embeddings: Annotated[Path | None, typer.Option(help="prototype: (N, d) .npy embeddings")] = None,
    clusters: Annotated[int, typer.Option(help="prototype: number of k-means clusters")] = 10,
    num_examples: Annotated[int | None, typer.Option(help="random: data set size")] = None,
    dataset: c.Dataset = None,
    model: Annotated[str | None, typer.Option(help="record proxy runs with this zoo model")] = None,
    seeds: Annotated[str, typer.Option(help="proxy run seeds (grand: models at init, one per seed)")] = "0,1,2",
    epochs: Annotated[int, typer.Option(help="proxy run epochs")] = 10,
    workdir: Annotated[Path | None, typer.Option(help="folder for recorded proxy runs (reused when "
                                                 "complete)")] = None,
    seed: c.Seed = 0,
    backend: c.Backend = "local",
    ray_address: RayAddress = None,
    threads: c.Threads = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Score every example (higher = harder) and write the scores."""
    params = {"epoch": _epoch_arg(epoch), "clusters": clusters, "seed": seed, "backend": backend}
    base = out.with_suffix("") if out.suffix == ".npy" else out
    for p in (base.with_suffix(".npy"), base.with_suffix(".json")):
        c.check_out(p, overwrite=overwrite, inputs=[embeddings, *(dynamics or [])])
    c.set_threads(threads)
    ran = _backend(backend, ray_address, None if method in ("prototype", "grand") else
                   f"{method} reads recorded dynamics or draws numbers: one vectorised pass, nothing to distribute")
    from ..data.io import score_summary, write_json, write_npy

    s = _scores_from(method, dynamics or [], embeddings, num_examples, params,
                     (dataset, model, seeds, epochs, workdir)).numpy()
    write_npy(base.with_suffix(".npy"), s)
    write_json(base.with_suffix(".json"), {"version": 1, "kind": "data-scores", "method": method, "params": params,
                                            "num_examples": int(s.size), "score_summary": score_summary(s),
                                            "orientation": "higher = harder", "backend": ran})
    if "epoch_rule" in params:
        typer.echo(f"el2n epoch {params['epoch']} ({params['epoch_rule']})")
    typer.echo(f"wrote {s.size} {method} scores to {base.with_suffix('.npy')}")


def select(
    scores: Annotated[Path, typer.Option(help="(N,) .npy scores, higher = harder")],
    keep: c.Keep,
    out: c.Out,
    rule: Annotated[str, typer.Option(help="keep-hard | keep-easy | random | class-balanced | ccs | "
                                      "dbp | noise-aware")] = "keep-hard",
    labels: Annotated[Path | None, typer.Option(help="class-balanced: (N,) .npy integer labels")] = None,
    dataset: c.Dataset = None,
    num_classes: Annotated[int | None, typer.Option(help="class-balanced: labels must lie in "
                                                    "[0, num_classes)")] = None,
    within: Annotated[str, typer.Option(help="class-balanced / dbp: rule inside a class or "
                                        "cluster")] = "keep-hard",
    beta: Annotated[float, typer.Option(help="ccs: fraction of hardest examples cut off first")] = 0.0,
    strata: Annotated[int, typer.Option(help="ccs: number of equal-width score strata")] = 50,
    cutoff_scores: Annotated[Path | None, typer.Option(help="ccs: scores for the hard cut-off (e.g. aum)")] = None,
    embeddings: Annotated[Path | None, typer.Option(help="dbp: (N, d) .npy embeddings to cluster")] = None,
    clusters: Annotated[int, typer.Option(help="dbp: number of k-means clusters")] = 10,
    temperature: Annotated[float, typer.Option(help="dbp: softmax temperature")] = 0.5,
    flag_scores: Annotated[Path | None, typer.Option(help="noise-aware: (N,) .npy difficulties that flag mislabeled "
                                                     "examples, e.g. aum or loss scores (default: --scores)")] = None,
    flag_fraction: Annotated[float | None, typer.Option(help="noise-aware: drop this fraction with the highest flag "
                                                        "scores first (default 0.1)")] = None,
    flag_threshold: Annotated[float | None, typer.Option(help="noise-aware: drop every example whose flag score is "
                                                         ">= this (AUM threshold samples)")] = None,
    then: Annotated[str, typer.Option(help="noise-aware: rule on the examples left: random | ccs | keep-easy | "
                                      "keep-hard", callback=c.choice("--then", NOISE_THEN))] = "random",
    seed: c.Seed = 0,
    backend: c.Backend = "local",
    ray_address: RayAddress = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Select the examples to keep from scores and write their indices and a manifest."""
    c.check_out(out, overwrite=overwrite, inputs=[scores, labels, cutoff_scores, embeddings, flag_scores])
    ran = _backend(backend, ray_address, None if rule == "dbp" else
                   "selection ranks one (N,) score vector in memory: nothing to distribute")
    from ..data.io import save_selection
    from ..data.select import select as run_select

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
        if len(y) != len(s):  # checked for every rule, not only the ones that use labels
            raise ValueError(f"labels file {str(labels)!r} has {len(y)} entries but scores file {str(scores)!r} has "
                             f"{len(s)}; they must match")
    if rule == "class-balanced":
        params.update(labels=y, within=within, num_classes=num_classes)
    elif rule == "ccs":
        params.update(beta=beta, strata=strata)
        if cutoff_scores is not None:
            params["cutoff_scores"] = _load_vector(cutoff_scores, "cutoff_scores")
    elif rule == "dbp":
        params.update(_dbp_params(embeddings, clusters, seed, len(s), ran["ran"]), temperature=temperature,
                      within=within)
    extra: dict[str, Any] = {"scores_file": str(scores)}
    if rule == "noise-aware":
        params.update(_noise_params(s, keep, flag_scores, flag_fraction, flag_threshold, then, beta, strata))
        extra.update(flag_scores_file=str(flag_scores or scores), noise_flags=params.pop("_flags"))
    kept = run_select(s, keep, rule, **params)
    shown = {k: v for k, v in params.items() if k not in ("labels", "cutoff_scores", "clusters", "complexity",
                                                           "flag_scores")}
    save_selection(out, kept, num_examples=len(s), method=rule,
                     params={**shown, "keep_fraction": keep}, seed=seed, scores=s,
                     extra={**extra, "backend": ran}, overwrite=overwrite)
    if rule == "noise-aware":
        fl = extra["noise_flags"]
        typer.echo(f"dropped {fl['dropped']} flagged examples ({fl['rule']}"
                   f"{'; capped: more were flagged than may go' if fl['capped'] else ''})")
    typer.echo(f"kept {len(kept)} of {len(s)} examples -> {out}")


def _noise_params(s: Any, keep: float, flag_scores: Path | None, fraction: float | None, threshold: float | None,
                  then: str, beta: float, strata: int) -> dict[str, Any]:
    """The noise-aware rule's parameters, checked, with the flags it will drop (``_flags``) for the manifest."""
    from ..data.checks import keep_count
    from ..data.select import flag_noisy

    if fraction is not None and threshold is not None:
        raise ValueError("pass --flag-fraction or --flag-threshold, not both")
    d = s if flag_scores is None else _load_vector(flag_scores, "flag_scores")
    if len(d) != len(s):
        raise ValueError(f"flag scores file {str(flag_scores)!r} has {len(d)} entries but the scores have {len(s)}; "
                         "they must match")
    flags = flag_noisy(d, keep_count(len(s), keep), fraction, threshold)
    out = {"flag_scores": d, "flag_fraction": fraction, "threshold": threshold, "then": then, "_flags": flags.summary()}
    if then == "ccs":
        out.update(beta=beta, strata=strata)
    return out


def _dbp_params(embeddings: Path | None, n_clusters: int, seed: int, n: int, backend: str = "local",
                ) -> dict[str, Any]:
    from ..data.cluster import Embeddings, cluster_complexity, kmeans

    if embeddings is None:
        raise ValueError("rule 'dbp' needs --embeddings FILE.npy to cluster")
    emb = Embeddings(str(embeddings))
    if emb.n != n:
        raise ValueError(f"embeddings hold {emb.n} rows but scores has {n} entries; they must match")
    cl = kmeans(emb, n_clusters, seed=seed, backend=backend)
    return {"clusters": cl.assign, "complexity": cluster_complexity(cl)}


def dedup(
    embeddings: Annotated[Path, typer.Option(help="(N, d) float .npy embeddings (memory-mapped; `prunekit data "
                                             "embed` writes them)")],
    out: c.Out,
    eps: Annotated[float, typer.Option(help="drop if cosine to a kept example > 1 - eps")] = 0.05,
    clusters: Annotated[int, typer.Option(help="number of k-means clusters")] = 100,
    dim: Annotated[int | None, typer.Option(help="expected embedding width (checked)")] = None,
    rule: c.DedupRule = "farthest",
    cross_cluster: Annotated[bool, typer.Option(help="also search pairs split across clusters (exact; "
                                                "--no-cross-cluster: the paper's within-cluster pass)")] = True,
    seed: c.Seed = 0,
    backend: c.Backend = "local",
    ray_address: RayAddress = None,
    threads: c.Threads = None,
    overwrite: c.Overwrite = False,
) -> None:
    """SemDeDup: remove semantic near-duplicates (exact across clusters) and write the kept indices."""
    emb_file = _embeddings_source(embeddings)
    c.check_out(out, overwrite=overwrite, inputs=[embeddings])
    c.set_threads(threads)
    ran = _backend(backend, ray_address)
    from ..data.dedup import semdedup
    from ..data.io import save_selection

    res = semdedup(str(emb_file), eps=eps, n_clusters=clusters, seed=seed, keep=rule, dim=dim,
                   cross_cluster=cross_cluster, backend=backend)
    save_selection(out, res.kept, num_examples=res.stats["num_examples"], method="semdedup",
                     params={"eps": eps, "n_clusters": clusters, "rule": rule, "cross_cluster": cross_cluster},
                     seed=seed, extra={"embeddings_file": str(emb_file), "stats": res.stats, "backend": ran},
                     overwrite=overwrite)
    typer.echo(f"kept {res.stats['num_kept']} of {res.stats['num_examples']} examples -> {out}")


def _embeddings_source(path: Path) -> Path:
    """``path`` itself (a ``.npy``), ``path/embeddings.npy`` (a `data embed` folder) or a folder of ``.npy`` shards."""
    if path.is_dir():
        return path / "embeddings.npy" if (path / "embeddings.npy").is_file() else path
    if not path.exists():
        raise FileNotFoundError(f"embeddings file {str(path)!r} does not exist")
    return path


def resample(
    method: Annotated[str, typer.Option(help="dsir | rs2", callback=c.choice("--method", ("dsir", "rs2")))],
    out: c.Out,
    raw: Annotated[Path | None, typer.Option(help="dsir: raw pool (.jsonl or .txt)")] = None,
    target: Annotated[Path | None, typer.Option(help="dsir: target-domain examples (.jsonl or .txt)")] = None,
    num: Annotated[int | None, typer.Option(help="dsir: documents to select")] = None,
    text_field: TextField = "text",
    num_examples: Annotated[int | None, typer.Option(help="rs2: data set size")] = None,
    keep: c.Keep = 0.1,
    epochs: Annotated[int, typer.Option(help="rs2: epochs to schedule")] = 10,
    replacement: Annotated[bool, typer.Option(help="rs2: independent subsets per epoch")] = False,
    seed: c.Seed = 0,
    backend: c.Backend = "local",
    ray_address: RayAddress = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Importance resampling (DSIR) of a text pool, or an RS2 per-epoch subset schedule (--keep per epoch)."""
    if method == "dsir" and (raw is None or target is None or num is None):
        raise ValueError("dsir needs --raw, --target and --num")
    if method == "rs2" and num_examples is None:
        raise ValueError("rs2 needs --num-examples")
    c.check_out(out, overwrite=overwrite, inputs=[raw, target])
    ran = _backend(backend, ray_address, "DSIR hashes n-grams and samples once in memory" if method == "dsir"
                   else "an RS2 schedule is a seeded permutation per epoch: nothing to distribute")
    typer.echo(_dsir(out, raw, target, num, text_field, seed, overwrite, ran) if method == "dsir"
               else _rs2(out, num_examples, keep, epochs, replacement, seed, ran))


def _dsir(out: Path, raw: Any, target: Any, num: Any, text_field: str, seed: int, overwrite: bool,
          ran: dict[str, Any]) -> str:
    from ..data.dsir import dsir as run_dsir
    from ..data.io import save_selection
    from ..data.texts import read_texts

    pool = read_texts(raw, text_field)
    res = run_dsir(pool, read_texts(target, text_field), num, seed=seed)
    save_selection(out, res.kept, num_examples=len(pool), method="dsir", params=res.params,
                     seed=seed, scores=res.log_weights,
                     extra={"raw_file": str(raw), "target_file": str(target), "backend": ran},
                     overwrite=overwrite)
    return f"selected {len(res.kept)} of {len(pool)} documents -> {out}"


def _rs2(out: Path, num_examples: Any, keep: float, epochs: int, replacement: bool, seed: int,
         ran: dict[str, Any]) -> str:
    from ..data.io import write_json, write_npy
    from ..data.sampler import RS2Sampler

    sch = RS2Sampler(num_examples, keep, replacement=replacement, seed=seed).schedule(epochs).numpy()
    write_npy(out / "schedule.npy", sch)
    write_json(out / "manifest.json", {"version": 1, "kind": "data-schedule", "method": "rs2",
                                       "params": {"keep_fraction": keep, "epochs": epochs,
                                                  "replacement": replacement}, "seed": seed,
                                       "num_examples": num_examples, "shape": list(sch.shape), "backend": ran})
    return f"wrote a {sch.shape[0]} x {sch.shape[1]} RS2 schedule -> {out}"


def embed(
    texts: Annotated[Path, typer.Argument(help="text pool: .jsonl (one object per line), .txt (one document per "
                                          "line) or .parquet (a string column, streamed: may exceed memory)")],
    out: c.Out,
    model: Annotated[Path | None, typer.Option(help="a local sentence-transformers / Hugging Face encoder folder "
                                               "(default: the built-in all-MiniLM-L6-v2)")] = None,
    text_field: TextField = "text",
    max_length: Annotated[int, typer.Option(help="tokens per text (longer ones are truncated)")] = 256,
    batch_size: Annotated[int, typer.Option(help="texts per forward pass")] = 64,
    backend: c.Backend = "local",
    ray_address: RayAddress = None,
    threads: c.Threads = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Sentence embeddings (mean pooling, L2-normalised) of a text pool for `data dedup` / prototypes / DBP."""
    if model is not None and not (model / "config.json").is_file():
        raise FileNotFoundError(f"--model {model} is not an encoder folder (no config.json)")
    c.check_out(out, overwrite=overwrite, inputs=[texts, model])
    c.set_threads(threads)
    from ..data.texts import ParquetTexts, is_parquet, read_texts

    docs = ParquetTexts(texts, text_field) if is_parquet(texts) else read_texts(texts, text_field)
    ran = _backend(backend, ray_address)
    c.say(f"embedding {len(docs)} texts with {model or 'all-MiniLM-L6-v2 (built-in)'}")
    path = embed_texts(docs, out, model, max_length, batch_size, backend,
                       {"texts_file": str(texts), "text_field": text_field, "backend": ran}, overwrite)
    typer.echo(f"wrote {len(docs)} embeddings to {path}")


def embed_texts(docs: Any, out: Path, model: Path | None, max_length: int, batch_size: int, backend: str,
                extra: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the folder ``out`` (``embeddings.npy`` (N, d) float32 + ``manifest.json``) whole or not at all.

    ``docs``: a list of strings or a ``ParquetTexts`` column (streamed, row ``i`` of the file is example ``i``).
    """
    from ..data.embed import MiniLMEncoder
    from ..data.embed import embed as run_embed
    from ..io import atomic_dir, write_json

    enc = MiniLMEncoder(max_length=max_length, path=None if model is None else str(model))
    with atomic_dir(out, overwrite=overwrite) as tmp:
        e = run_embed(enc, docs, tmp / "embeddings.npy", batch_size=batch_size, backend=backend)
        write_json(tmp / "manifest.json", {"version": 1, "kind": "data-embeddings", "num_examples": int(e.shape[0]),
                                           "dim": int(e.shape[1]), "dtype": "float32", "pooling": "mean",
                                           "normalized": True, "max_length": max_length,
                                           "model": str(model) if model is not None
                                           else "builtin:all-MiniLM-L6-v2", **extra})
    return out / "embeddings.npy"
