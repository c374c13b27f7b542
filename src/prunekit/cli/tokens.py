"""``prunekit tokens``: token pruning of a pretrained encoder, measured against the dense model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

app = c.app_group("Token pruning (input-dependent sparsity) of transformer encoders.")
BUILTIN = "minilm"


def register(main: typer.Typer) -> None:
    """Add the ``tokens`` group to ``main``."""
    c.command(app, "eval")(eval_)
    main.add_typer(app, name="tokens", help="Token pruning: Zero-TPrune, ToMe, attention, random on an encoder.")


def _layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        layers = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--layers must be comma-separated layer indices such as 0,2; got {text!r}") from None
    if not layers or min(layers) < 0:
        raise typer.BadParameter(f"--layers must hold layer indices >= 0; got {text!r}")
    return layers


def _positive(flag: str):
    def check(value: int) -> int:
        if value < 1:
            raise typer.BadParameter(f"{flag} must be a positive integer; got {value!r}")
        return value
    return check


def eval_(
    model_dir: Annotated[str, typer.Argument(help=f"a Hugging Face BERT-like encoder folder (config.json + "
                                            f"tokenizer), or {BUILTIN!r} for the built-in all-MiniLM-L6-v2")],
    out: c.Out,
    texts: Annotated[Path, typer.Option("--texts", help="text file, one text a line (or .jsonl with 'text')")],
    method: Annotated[str, typer.Option("--method", help="zero-tprune | attention | tome | token-random (random)",
                                        callback=c.registered("--method", "token"))] = "zero-tprune",
    keep: c.Keep = 0.66,
    layers: Annotated[str | None, typer.Option("--layers", help="comma-separated layers that prune (default: 0); "
                                               "keep is reached geometrically over them")] = None,
    max_length: Annotated[int, typer.Option("--max-length", help="tokens per text (longer ones are truncated)",
                                            callback=_positive("--max-length"))] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="texts per forward pass",
                                            callback=_positive("--batch-size"))] = 16,
    repeats: Annotated[int, typer.Option("--repeats", help="timed forward passes per model",
                                         callback=_positive("--repeats"))] = 5,
    threads: c.Threads = None,
    seed: c.Seed = 0,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Prune tokens of an encoder; write OUT/metrics.json: fidelity, flops_ratio, speedup, tokens_kept, settings."""
    if model_dir != BUILTIN and not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"MODEL_DIR {model_dir} is not a Hugging Face model folder (no config.json); "
                                f"give such a folder or {BUILTIN!r}")
    if not texts.is_file():
        raise FileNotFoundError(f"--texts {texts} does not exist")
    layer_list = _layers(layers)
    c.check_out(out, overwrite=overwrite, inputs=[texts, None if model_dir == BUILTIN else Path(model_dir)])
    from ..data.texts import read_texts

    docs = read_texts(texts)
    if not docs:
        raise ValueError(f"--texts {texts} holds no non-empty line")
    c.set_threads(threads)
    settings = {"model": model_dir, "method": method, "keep": keep, "layers": layer_list,
                "max_length": max_length, "batch_size": batch_size, "repeats": repeats, "seed": seed,
                "texts": str(texts), "num_texts": len(docs)}
    c.say(f"token pruning {model_dir} with {method} at keep {keep} on {len(docs)} texts")
    metrics = _evaluate(docs, settings)
    _write(out, metrics, overwrite)
    from .prune import record

    record(db, out, "tokens-eval", settings, "model", metrics)
    typer.echo(f"fidelity {metrics['fidelity']:.4f}, tokens kept {metrics['tokens_kept']:.3f}, FLOPs ratio "
               f"{metrics['flops_ratio']:.3f}, speedup {metrics['speedup']:.2f}x -> {out / 'metrics.json'}")


def _evaluate(docs: list[str], s: dict[str, Any]) -> dict[str, Any]:
    from ..tokens.evaluate import evaluate_tokens, load_encoder

    tok, model = load_encoder(None if s["model"] == BUILTIN else s["model"])
    return {**evaluate_tokens(model, tok, docs, method=s["method"], keep=s["keep"], layers=s["layers"],
                              max_length=s["max_length"], batch_size=s["batch_size"], repeats=s["repeats"],
                              seed=s["seed"]), **{k: v for k, v in s.items()}}


def _write(out: Path, metrics: dict[str, Any], overwrite: bool) -> None:
    from ..io import atomic_dir, write_json

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "manifest.json", {"version": 1, "kind": "tokens-eval", "method": metrics["method"],
                                           "keep": metrics["keep"]})
