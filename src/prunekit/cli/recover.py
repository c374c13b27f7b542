"""``prunekit recover DIR --method perp|lora|distill``: retrain a pruned transformers model, pattern kept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

RECOVERY_METHODS = ("perp", "lora", "distill")


def register(app: typer.Typer) -> None:
    """Add the ``recover`` command to ``app``."""
    c.command(app, "recover")(recover)


def texts_of(spec: str, split: str) -> tuple[list[str], str]:
    """``builtin`` (the built-in corpus, ``split``) or a text file / folder / saved dataset; (texts, name)."""
    from ..calibrate.data import builtin_texts, load_texts

    if spec == "builtin":
        return builtin_texts(split), f"builtin:stdlib-docstrings/{split}"
    if not Path(spec).exists():
        raise FileNotFoundError(f"--texts {spec} does not exist (give a text file, a folder of .txt files, a saved "
                                "dataset, or 'builtin')")
    return load_texts(spec), spec


def _check_bias_flags(model_dir: Path) -> None:
    """--add-bias needs a config that declares biases (read from config.json, before any work)."""
    import json

    from ..recover.params import bias_flags_of

    cfg_file = model_dir / "config.json"
    config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    missing = bias_flags_of(config)
    if missing:
        raise ValueError(f"--add-bias: {cfg_file} has no {' / '.join(missing)} field, so added biases would not load "
                         "(LLaMA-family configs have both); use --linear-scale instead")


def recover(
    model_dir: Annotated[Path, typer.Argument(help="a folder written by `prunekit prune` (calibrated or "
                                              "--structured)")],
    out: c.Out,
    method: Annotated[str, typer.Option(help="perp (biases + norms) | lora (masked LoRA, peft) | distill (KL to "
                                        "the dense model)", callback=c.choice("--method", RECOVERY_METHODS))
                      ] = "perp",
    texts: Annotated[str, typer.Option(help="training text: 'builtin' (built-in corpus, train split) or a text "
                                       "file / folder")] = "builtin",
    eval_texts: Annotated[str, typer.Option(help="perplexity text: 'builtin' (validation split) or a file")
                          ] = "builtin",
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 200,
    lr: Annotated[float | None, typer.Option(help="peak learning rate (default: 1e-3 perp/lora, 1e-4 all)")] = None,
    batch_size: Annotated[int, typer.Option(help="windows per step")] = 8,
    seq_len: Annotated[int, typer.Option(help="tokens per window (training and perplexity)")] = 128,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha (scale alpha / rank)")] = 16.0,
    linear_scale: Annotated[bool, typer.Option("--linear-scale", help="perp: also one scale per output row of "
                                               "every pruned linear")] = False,
    column_scale: Annotated[bool, typer.Option("--column-scale", help="perp: also one scale per input column of "
                                               "every pruned linear (with --linear-scale: rank-1 ScaleLoRA)")
                            ] = False,
    add_bias: Annotated[bool, typer.Option("--add-bias", help="perp: first give a bias-free model (LLaMA family) "
                                           "zero biases on its attention and MLP projections and train them too")
                        ] = False,
    scale_rank: Annotated[int | None, typer.Option(help="perp: PERP's ScaleLoRA W * (B A) of this rank on every "
                                                  "pruned linear (zeros kept; instead of --linear-scale / "
                                                  "--column-scale)")] = None,
    distill_params: Annotated[str, typer.Option(help="distill trains: all (kept weights, mask enforced) | perp | "
                                                "lora", callback=c.choice("--distill-params", ("all", "perp",
                                                                                               "lora")))] = "all",
    temperature: Annotated[float, typer.Option(help="distillation temperature")] = 1.0,
    dense: Annotated[Path | None, typer.Option(help="the dense model folder (default: the manifest's source_model); "
                                               "needed for structured folders")] = None,
    max_windows: Annotated[int | None, typer.Option(help="perplexity windows (default 64)")] = 64,
    max_minutes: Annotated[float | None, typer.Option(help="stop training after this many minutes (reported)")
                           ] = None,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Retrain a pruned model (PERP, masked LoRA or distillation); perplexity before/after; zeros kept exactly."""
    from ..recover.config import Recovery

    cfg = Recovery(method=method, steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len, lora_rank=lora_rank,
                   lora_alpha=lora_alpha, linear_scale=linear_scale, column_scale=column_scale, add_bias=add_bias,
                   scale_rank=scale_rank, distill_params=distill_params, temperature=temperature,
                   max_minutes=max_minutes, seed=seed)
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"--max-windows must be a positive integer, got {max_windows}")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if dense is not None and not dense.is_dir():
        raise FileNotFoundError(f"--dense {dense} does not exist")
    if add_bias:
        _check_bias_flags(model_dir)
    c.check_out(out, overwrite=overwrite, inputs=[model_dir, dense], expected_bytes=c.folder_bytes(model_dir))
    train_texts, train_name = texts_of(texts, "train")
    val_texts, val_name = texts_of(eval_texts, "validation")
    c.set_threads(threads)
    from ..recover.folder import recover_dir

    with c.block_progress("step", lines=20) as progress:
        m = recover_dir(model_dir, out, cfg, texts=train_texts, eval_texts=val_texts, dense=dense,
                        max_windows=max_windows, overwrite=overwrite, progress=progress)
    m["texts"], m["eval_texts"] = train_name, val_name
    _show(m, out)
    from .prune import record

    record(db, out, "recover", {"model": str(model_dir), "method": method, "recovery": cfg.to_dict(),
                                "texts": train_name, "eval_texts": val_name}, "llm", _metrics(m), {},
           {"recover_s": m["recover_seconds"], "train_s": m["train_seconds"]})


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("ppl_dense", "ppl_before", "ppl_after", "gap_closed", "trainable_params", "total_params",
            "trainable_fraction", "steps_done", "stopped_early", "pruned_nonzero")
    return {k: m[k] for k in keys if k in m}


def _show(m: dict[str, Any], out: Path) -> None:
    dense = f"dense {m['ppl_dense']:.2f}, " if "ppl_dense" in m else ""
    gap = f" (gap closed {m['gap_closed']:.1%})" if "gap_closed" in m else ""
    typer.echo(f"recovered ({m['method']}, {m['trainable_params']:,} trainable parameters = "
               f"{m['trainable_fraction']:.4%}, {m['steps_done']} steps, {m['recover_seconds']:.1f}s): perplexity "
               f"{dense}before {m['ppl_before']:.2f}, after {m['ppl_after']:.2f}{gap} -> {out}")
    if m.get("stopped_early"):
        c.say(f"warning: training stopped early at step {m['steps_done']} (--max-minutes)")
