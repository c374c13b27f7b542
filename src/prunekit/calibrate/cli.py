"""``prunekit llm prune|eval`` and ``prunekit zoo train-lm``: thin wrappers over the calibrate package."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(help="Post-training pruning of transformers and LLMs (SparseGPT, Wanda, magnitude, OWL, DSnoT).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
zoo_app = typer.Typer(help="The zoo LM.", no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)
METHODS = ("sparsegpt", "wanda", "magnitude")
log = logging.getLogger(__name__)


def _fail(e: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


@contextmanager
def _bars():
    """A rich progress display; yields a ``progress(stage, done, total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err_console, transient=False) as bars:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(f"{stage} blocks", total=total)
            bars.update(tasks[stage], completed=done)

        yield progress


def make_config(method: str, sparsity: float | None, pattern: str, owl: bool, owl_m: float, owl_lambda: float,
                dsnot: bool, batch_size: int) -> Any:
    """The method config from CLI flags (every check happens here, before any work)."""
    from ..errors import check_choice
    from .config import CalibratedMagnitude, SparseGPT, Wanda

    check_choice(method, "--method", METHODS)
    cls = {"sparsegpt": SparseGPT, "wanda": Wanda, "magnitude": CalibratedMagnitude}[method]
    if sparsity is None and ":" not in pattern:
        raise ValueError("give --sparsity (e.g. 0.5) or an N:M --pattern (e.g. 2:4)")
    owl_cfg = {"m": owl_m, "lam": owl_lambda} if owl else None
    return cls(sparsity=sparsity, pattern=pattern, owl=owl_cfg, dsnot=dsnot or None, batch_size=batch_size)


def _store(results: Path | None, experiment: str, config: dict, metrics: dict, per_layer: dict, timings: dict) -> None:
    if results is None:
        return
    from ..bench.store import ResultsStore, RunRecord

    with ResultsStore(results) as store:
        store.add(RunRecord(experiment, config, "llm", metrics, per_layer, timings), replace=True)


def _seq_len_fits(model_dir: Path, seq_len: int) -> None:
    """Check ``seq_len`` against the model config before loading any weight."""
    import json

    cfg = json.loads((model_dir / "config.json").read_text())
    limit = next((cfg[k] for k in ("max_position_embeddings", "n_positions") if isinstance(cfg.get(k), int)), None)
    if limit is not None and seq_len > limit:
        raise ValueError(f"--seq-len {seq_len} is beyond the model's maximum sequence length {limit}")


@app.command()
def prune(
    model_dir: Path = typer.Argument(..., help="a save_pretrained folder (config.json + weights + tokenizer)"),
    out: Path = typer.Option(..., "--out", help="folder to write the pruned model to"),
    method: str = typer.Option("sparsegpt", help="sparsegpt | wanda | magnitude"),
    sparsity: float | None = typer.Option(None, help="fraction of zeros in [0, 1), e.g. 0.5"),
    pattern: str = typer.Option("unstructured", help="unstructured or N:M, e.g. 2:4"),
    owl: bool = typer.Option(False, "--owl", help="OWL per-layer allocation"),
    owl_m: float = typer.Option(5.0, help="OWL outlier threshold M"),
    owl_lambda: float = typer.Option(0.08, help="OWL spread lambda"),
    dsnot: bool = typer.Option(False, "--dsnot", help="DSnoT mask refinement"),
    calib: Path | None = typer.Option(None, help="text file, folder or saved dataset (default: built-in corpus)"),
    nsamples: int = typer.Option(128, help="calibration samples"),
    seq_len: int = typer.Option(256, help="tokens per calibration sample"),
    seed: int = typer.Option(0, help="seed of the calibration sampling"),
    batch_size: int = typer.Option(8, help="calibration samples per forward pass"),
    device: str | None = typer.Option(None, help="compute device for the current block (default: the model's)"),
    state_dir: Path | None = typer.Option(None, help="resume folder (default: OUT.state); deleted when done"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out folder"),
    results: Path | None = typer.Option(Path("prunekit-results.sqlite"), help="SQLite results store ('' to skip)"),
    show_layers: bool = typer.Option(False, "--show-layers", help="print the per-layer table"),
) -> None:
    """Prune every transformer block of MODEL_DIR and save a model plain transformers loads."""
    from . import io
    from .pipeline import prune_model_dir

    try:
        cfg = make_config(method, sparsity, pattern, owl, owl_m, owl_lambda, dsnot, batch_size)
        model_dir = io.check_model_dir(model_dir)
        _seq_len_fits(model_dir, seq_len)
        with _bars() as progress:
            report, _ = prune_model_dir(model_dir, out, method, cfg, calib=calib, nsamples=nsamples, seq_len=seq_len,
                                        seed=seed, device=device, state_dir=state_dir, overwrite=overwrite,
                                        progress=progress)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, ImportError) as e:
        _fail(e)
    if show_layers:
        console.print(report.to_markdown())
    console.print(f"pruned {len(report.layers)} tensors in {report.seconds:.1f}s -> {out}: "
                  f"{report.ledger.measured.line() if report.ledger and report.ledger.measured else report.sparsity}")
    for name, experts in report.extra.get("expert_fallbacks", {}).items():
        console.print(f"[yellow]warning:[/] {name}: experts {experts} got no calibration token; pruned by magnitude")
    per_layer = {r.name: r.sparsity for r in report.layers}
    _store(None if str(results) in ("", ".") else results, "llm-prune",
           {"model": str(model_dir), "method": report.method, "calibration": report.extra["calibration"]},
           {"sparsity": report.sparsity}, per_layer, {"prune_s": report.seconds})


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as e:  # transformers raises several error types for a missing tokenizer
        raise ValueError(f"{model_dir} has no usable tokenizer ({e}); save one with the model") from e


def _manifest(report: Any, model_dir: Path) -> dict[str, Any]:
    """Method, config, calibration and per-layer details of a pruning run (``calibrate.pipeline.manifest``)."""
    from .pipeline import manifest

    return manifest(report, model_dir)


@app.command("eval")
def eval_(
    model_dir: Path = typer.Argument(..., help="a (pruned) save_pretrained folder"),
    dense: Path | None = typer.Option(None, help="the dense model (needed for encoder fidelity)"),
    data: Path | None = typer.Option(None, help="evaluation text (default: built-in corpus, validation split)"),
    seq_len: int = typer.Option(128, help="window length (perplexity) or max length (fidelity)"),
    max_windows: int | None = typer.Option(None, help="cap on evaluation windows"),
    batch_size: int = typer.Option(8),
    results: Path | None = typer.Option(Path("prunekit-results.sqlite"), help="SQLite results store ('' to skip)"),
    show_layers: bool = typer.Option(False, "--show-layers", help="print the per-layer table of the manifest"),
) -> None:
    """Perplexity (causal LM) or embedding fidelity against --dense (encoder) under a pinned protocol."""
    from . import io
    from .data import builtin_texts, load_texts

    try:
        model_dir = io.check_model_dir(model_dir)
        _seq_len_fits(model_dir, seq_len)
        model = io.load_model(model_dir)
        tok = _tokenizer(model_dir)
        texts = builtin_texts("validation") if data is None else load_texts(data)
        name = "builtin:stdlib-docstrings" if data is None else str(data)
        metrics = _evaluate(model, tok, texts, name, dense, seq_len, max_windows, batch_size)
    except (ValueError, FileNotFoundError, TypeError) as e:
        _fail(e)
    if show_layers:
        console.print(layers_markdown(model_dir))
    console.print_json(data=metrics)
    _store(None if str(results) in ("", ".") else results, "llm-eval", {"model": str(model_dir),
           "protocol": metrics.get("protocol"), "dense": str(dense)}, metrics, {}, {})


def layers_markdown(model_dir: Path) -> str:
    """Per-layer sparsity, target and relative reconstruction error from a pruned model's manifest."""
    from .io import load_manifest

    rows = ["| layer | shape | sparsity | target | rel. error |", "|---|---|---:|---:|---:|"]
    for name, d in load_manifest(model_dir)["layers"].items():
        err = "" if d.get("error") is None else f"{d['error']:.4g}"
        tgt = "" if d.get("target") is None else f"{d['target']:.4f}"
        rows.append(f"| {name} | {'x'.join(map(str, d['shape']))} | {d['sparsity']:.4f} | {tgt} | {err} |")
    return "\n".join(rows)


def _evaluate(model: Any, tok: Any, texts: list[str], name: str, dense: Path | None, seq_len: int,
              max_windows: int | None, batch_size: int) -> dict[str, Any]:
    from . import evaluate as ev
    from . import io
    from .data import tokenize_stream

    if hasattr(model, "lm_head") or type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return ev.perplexity(model, tokenize_stream(texts, tok), seq_len, batch_size, max_windows, dataset=name,
                             tokenizer=type(tok).__name__)
    if dense is None:
        raise ValueError("an encoder is evaluated by fidelity to its dense model: pass --dense DIR")
    texts = texts[: max_windows or len(texts)]
    ids, am = ev.encode_texts(tok, texts, seq_len)
    ref = ev.pooled_embeddings(io.load_model(io.check_model_dir(dense)), ids, am, batch_size)
    fid = ev.embedding_fidelity(ref, ev.pooled_embeddings(model, ids, am, batch_size))
    return {"fidelity": fid, "texts": len(texts), "protocol": {"dataset": name, "max_len": seq_len,
            "pooling": "mean", "metric": "mean cosine to dense"}}


@zoo_app.command("train-lm")
def train_lm_cmd(
    cache_dir: Path | None = typer.Option(None, help="default: $PRUNEKIT_CACHE or ~/.cache/prunekit"),
    steps: int | None = typer.Option(None, help="training steps (default: the recipe's)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="retrain even if a cached LM exists"),
    threads: int | None = typer.Option(None, help="torch CPU threads (1 is fastest on a busy shared machine)"),
) -> None:
    """Train the small LLaMA zoo LM on the built-in corpus (under 15 min on 2 cores) and cache it."""
    import torch

    from ..zoo.lm import LMRecipe, lm_dir, train_lm

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        recipe = LMRecipe() if steps is None else LMRecipe(steps=steps)
        out = lm_dir(cache_dir)
        if out.exists() and any(out.iterdir()) and not overwrite:
            console.print(f"zoo LM already cached in {out} (use --overwrite to retrain)")
            return
        with _bars() as progress:
            path = train_lm(out, recipe, overwrite=overwrite, progress=lambda s, n, _l: progress("train", s, n))
    except (ValueError, FileExistsError, OSError) as e:
        _fail(e)
    console.print(f"zoo LM saved to {path}")
