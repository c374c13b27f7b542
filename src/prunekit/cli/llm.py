"""``prunekit prune`` on Hugging Face models (calibrated path), ``prunekit llm eval``, ``prunekit zoo train-lm``.

``prunekit llm prune`` stays as a deprecated spelling of ``prunekit prune``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

llm_app = c.app_group("Post-training pruning of transformers / LLMs: evaluation (prune: `prunekit prune`).")


def register(app: typer.Typer) -> None:
    """Add the ``llm`` group (``prune`` alias, ``eval``, ``experts``, ``slice``, ``quantize``) to ``app``."""
    c.alias(llm_app, "prune", llm_prune, "llm prune", "prune MODEL_DIR --method ...")
    c.command(llm_app, "eval")(eval_)
    c.command(llm_app, "experts")(experts)
    c.command(llm_app, "slice")(slice_cmd)
    c.command(llm_app, "quantize")(quantize)
    app.add_typer(llm_app, name="llm", help="Post-training pruning of transformers / LLMs.")


def make_config(method: str, sparsity: float | None, pattern: str, owl: bool, owl_m: float | None,
                owl_lambda: float | None, dsnot: bool, batch_size: int | None, exclude: list[str] | None) -> Any:
    """The calibrated method's config from CLI flags (every check happens here, before any work)."""
    from ..registry import METHODS

    try:
        entry = METHODS.get(method, kind="calibrated")
    except ValueError:
        raise ValueError(f"--method must be a calibrated method for a Hugging Face model "
                         f"({', '.join(METHODS.names('calibrated'))}), got {method!r}") from None
    c.check_sparsity_pattern(sparsity, pattern)
    if not owl and (owl_m is not None or owl_lambda is not None):
        raise ValueError("--owl-m / --owl-lambda need --owl")
    owl_cfg = {"m": 5.0 if owl_m is None else owl_m, "lam": 0.08 if owl_lambda is None else owl_lambda} if owl \
        else None
    return entry.config(sparsity=sparsity, pattern=pattern, owl=owl_cfg, dsnot=dsnot or None,
                               batch_size=8 if batch_size is None else batch_size, exclude=c.excluded(exclude))


def prune_calibrated(source: str, out: Path, method: str, *, sparsity: float | None, pattern: str, owl: bool,
                     owl_m: float | None, owl_lambda: float | None, dsnot: bool, calib: Path | None,
                     nsamples: int | None, seq_len: int | None, seed: int, batch_size: int | None,
                     device: str | None, state_dir: Path | None, exclude: list[str] | None, db: Path | None,
                     show_layers: bool, overwrite: bool, threads: int | None = None,
                     attn_implementation: str | None = None) -> None:
    """Prune every transformer block of a HF model folder and save a model plain transformers loads."""
    from ..calibrate.io import check_attn_implementation

    check_attn_implementation(attn_implementation)  # before any work
    nsamples, seq_len = 128 if nsamples is None else nsamples, 256 if seq_len is None else seq_len
    cfg = make_config(method, sparsity, pattern, owl, owl_m, owl_lambda, dsnot, batch_size, exclude)
    model_dir = Path(source)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if calib is not None and not calib.exists():
        raise FileNotFoundError(f"--calib {calib} does not exist")
    c.check_out(out, overwrite=overwrite, inputs=[model_dir, calib], expected_bytes=c.folder_bytes(model_dir))
    c.set_threads(threads)
    from ..calibrate import io
    from ..calibrate.workflow import check_seq_len, layers_markdown

    model_dir = io.check_model_dir(model_dir)
    check_seq_len(model_dir, seq_len)
    with c.block_progress() as progress:
        report = _run(model_dir, out, None, cfg, calib=calib, nsamples=nsamples, seq_len=seq_len, seed=seed,
                      device=device, state_dir=state_dir, overwrite=overwrite, progress=progress,
                      attn_implementation=attn_implementation)
    if show_layers:
        typer.echo(layers_markdown(out))
    typer.echo(f"pruned {len(report.layers)} layers in {report.seconds:.1f}s -> {out}: {c.sparsity_line(report)}")
    for name, experts in report.extra.get("expert_fallbacks", {}).items():
        c.say(f"warning: {name}: experts {experts} got no calibration token; pruned by magnitude")
    from .prune import record

    record(db, out, "llm-prune", {"model": str(model_dir), "method": report.method,
                                  "calibration": report.extra["calibration"]}, "llm", {"sparsity": report.sparsity},
           {r.name: r.sparsity for r in report.layers}, {"prune_s": report.seconds})


def _run(model_dir: Path, out: Path, solver: str | None, cfg: Any, **kw: Any) -> Any:
    """``calibrate.pipeline.prune_model_dir``: load, calibrate, save, check every tensor against the source."""
    from ..calibrate.pipeline import prune_model_dir

    return prune_model_dir(model_dir, out, solver, cfg, **kw)[0]


def llm_prune(
    model_dir: Annotated[Path, typer.Argument(help="a save_pretrained folder (config.json + weights + tokenizer)")],
    out: c.Out,
    method: Annotated[str, typer.Option(help="sparsegpt | wanda | calibrated-magnitude (magnitude)")] = "sparsegpt",
    sparsity: c.Sparsity = None,
    pattern: c.PatternOpt = "unstructured",
    owl: Annotated[bool, typer.Option("--owl", help="OWL per-layer allocation")] = False,
    owl_m: Annotated[float | None, typer.Option(help="OWL outlier threshold M (default 5)")] = None,
    owl_lambda: Annotated[float | None, typer.Option(help="OWL spread lambda (default 0.08)")] = None,
    dsnot: Annotated[bool, typer.Option("--dsnot", help="DSnoT mask refinement")] = False,
    calib: Annotated[Path | None, typer.Option(help="text file, folder or saved dataset (default: built-in "
                                               "corpus)")] = None,
    nsamples: Annotated[int | None, typer.Option(help="calibration samples (default 128)")] = None,
    seq_len: Annotated[int | None, typer.Option(help="tokens per calibration sample (default 256)")] = None,
    seed: c.Seed = 0,
    batch_size: Annotated[int | None, typer.Option(help="samples per forward pass (default 8)")] = None,
    device: Annotated[str | None, typer.Option(help="compute device of the current block")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="resume folder (default: .OUT.state)")] = None,
    exclude: c.Exclude = None,
    db: c.Db = None,
    show_layers: Annotated[bool, typer.Option("--show-layers", help="print the per-layer table")] = False,
    overwrite: c.Overwrite = False,
) -> None:
    """Prune every transformer block of MODEL_DIR and save a model plain transformers loads."""
    prune_calibrated(str(model_dir), out, method, sparsity=sparsity, pattern=pattern, owl=owl, owl_m=owl_m,
                     owl_lambda=owl_lambda, dsnot=dsnot, calib=calib, nsamples=nsamples, seq_len=seq_len, seed=seed,
                     batch_size=batch_size, device=device, state_dir=state_dir, exclude=exclude, db=db,
                     show_layers=show_layers, overwrite=overwrite)


def eval_(
    model_dir: Annotated[Path, typer.Argument(help="a (pruned) save_pretrained folder")],
    dense: Annotated[Path | None, typer.Option(help="the dense model (needed for encoder fidelity)")] = None,
    data: Annotated[Path | None, typer.Option(help="evaluation text (default: built-in corpus, validation "
                                              "split)")] = None,
    seq_len: Annotated[int, typer.Option(help="window length (perplexity) or max length (fidelity)")] = 128,
    max_windows: Annotated[int | None, typer.Option(help="cap on evaluation windows")] = None,
    batch_size: Annotated[int, typer.Option(help="windows per forward pass")] = 8,
    threads: c.Threads = None,
    db: c.Db = None,
    show_layers: Annotated[bool, typer.Option("--show-layers", help="print the per-layer table of the "
                                              "manifest")] = False,
) -> None:
    """Perplexity (causal LM) or embedding fidelity against --dense (encoder); stored only with --db."""
    c.set_threads(threads)
    from ..calibrate import io
    from ..calibrate.data import builtin_texts, load_texts
    from ..calibrate.workflow import check_seq_len, evaluate_model, layers_markdown, load_tokenizer

    model_dir = io.check_model_dir(model_dir)
    check_seq_len(model_dir, seq_len)
    c.say(f"evaluating {model_dir}")
    model, tok = io.load_model(model_dir), load_tokenizer(model_dir)
    texts = builtin_texts("validation") if data is None else load_texts(data)
    name = "builtin:stdlib-docstrings" if data is None else str(data)
    with c.block_progress("batch", lines=20) as progress:  # about 20 lines without a TTY
        metrics = evaluate_model(model, tok, texts, name, dense, seq_len, max_windows, batch_size, progress)
    if show_layers:
        typer.echo(layers_markdown(model_dir))
    import json

    typer.echo(json.dumps(metrics, indent=2))
    from .prune import record

    record(db, None, "llm-eval", {"model": str(model_dir), "protocol": metrics.get("protocol"),
                                  "dense": str(dense)}, "llm", metrics)


def train_lm(
    cache_dir: Annotated[Path | None, typer.Option(help="default: $PRUNEKIT_CACHE or ~/.cache/prunekit")] = None,
    steps: Annotated[int | None, typer.Option(help="training steps (default: the recipe's)")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        help="wall-clock cap in minutes (default: the recipe's 15); a run stopped by it is not the reference "
             "model and says so when loaded")] = None,
    overwrite: c.Overwrite = False,
    threads: c.Threads = None,
) -> None:
    """Train the small LLaMA zoo LM on the built-in corpus (about 15-20 min on 2 idle cores) and cache it
    (--overwrite: retrain)."""
    if max_minutes is not None and not max_minutes > 0:
        raise typer.BadParameter(f"--max-minutes must be > 0, got {max_minutes}")
    if steps is not None and steps < 1:
        raise typer.BadParameter(f"--steps must be >= 1, got {steps}")
    c.set_threads(threads)
    from ..zoo.lm import LMRecipe, lm_dir
    from ..zoo.lm import train_lm as run

    fields = {k: v for k, v in (("steps", steps), ("max_minutes", max_minutes)) if v is not None}
    recipe = LMRecipe(**fields)
    out = lm_dir(cache_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        typer.echo(f"zoo LM already cached in {out} (use --overwrite to retrain)")
        return
    c.check_out(out, overwrite=overwrite)
    with c.block_progress("step", lines=20) as progress:
        path = run(out, recipe, overwrite=overwrite, progress=lambda s, n, _l: progress("train", s, n))
    typer.echo(f"zoo LM saved to {path}")


EXPERT_SCORES = ("reap", "frequency", "random")


def experts(
    model_dir: Annotated[Path, typer.Argument(help="a save_pretrained MoE folder (Mixtral, Qwen2-MoE, Qwen3-MoE)")],
    out: c.Out,
    keep: c.Keep = 0.5,
    score: Annotated[str, typer.Option("--score", help="reap (gate x expert output norm) | frequency | random",
                                       callback=c.choice("--score", EXPERT_SCORES))] = "reap",
    calib: Annotated[Path | None, typer.Option(help="text file, folder or saved dataset (default: built-in "
                                               "corpus)")] = None,
    nsamples: Annotated[int, typer.Option(help="calibration samples")] = 64,
    seq_len: Annotated[int, typer.Option(help="tokens per calibration sample")] = 128,
    batch_size: Annotated[int, typer.Option(help="samples per forward pass")] = 8,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Remove the lowest-scoring experts of every MoE layer (router statistics) and save a smaller model."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if calib is not None and not calib.exists():
        raise FileNotFoundError(f"--calib {calib} does not exist")
    if nsamples < 1 or seq_len < 2 or batch_size < 1:
        raise ValueError(f"--nsamples, --batch-size must be >= 1 and --seq-len >= 2, got {nsamples}, {batch_size}, "
                         f"{seq_len}")
    c.check_out(out, overwrite=overwrite, inputs=[model_dir, calib], expected_bytes=c.folder_bytes(model_dir))
    c.set_threads(threads)
    from ..calibrate import io
    from ..calibrate.moe import remove_experts_dir
    from ..calibrate.workflow import check_seq_len

    model_dir = io.check_model_dir(model_dir)
    check_seq_len(model_dir, seq_len)
    rep, saved = remove_experts_dir(model_dir, out, keep, score, calib=calib, nsamples=nsamples, seq_len=seq_len,
                                    seed=seed, batch_size=batch_size, overwrite=overwrite)
    for name, d in rep.layers.items():
        unrouted = f"; no calibration token: {d['unrouted']}" if d["unrouted"] else ""
        typer.echo(f"{name}: removed experts {d['removed']}, kept {d['kept']}{unrouted}")
    typer.echo(f"experts per layer {rep.experts_before} -> {rep.experts_after}, top-k {rep.top_k_before} -> "
               f"{rep.top_k_after}, parameters {rep.params_before} -> {rep.params_after} ({score}) -> {saved}")
    from .prune import record

    record(db, out, "llm-experts", {"model": str(model_dir), "score": score, "keep": keep}, "llm",
           {"experts_after": rep.experts_after, "params_after": rep.params_after}, None, {})


def _fraction(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"--fraction must be in [0, 1) (the fraction of the hidden width removed); "
                                 f"got {value!r}")
    return value


def _check_slice_dir(model_dir: Path) -> Path:
    """A save_pretrained folder of a supported family, checked from config.json before any weight is read."""
    import json

    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    from ..calibrate import io
    from ..structured.slice import MODEL_TYPES

    model_dir = io.check_model_dir(model_dir)
    mtype = json.loads((model_dir / "config.json").read_text()).get("model_type")
    if mtype not in MODEL_TYPES:
        raise ValueError(f"MODEL_DIR {model_dir}: model_type {mtype!r} is not supported by SliceGPT; accepted: "
                         f"{', '.join(sorted(MODEL_TYPES))} causal LMs")
    return model_dir


def slice_cmd(
    model_dir: Annotated[Path, typer.Argument(help="a save_pretrained causal LM folder (LLaMA, Mistral, Qwen2/3, "
                                              "OPT) with its tokenizer")],
    out: c.Out,
    fraction: Annotated[float, typer.Option("--fraction", help="fraction of the hidden width removed, in [0, 1) "
                                            "(0: rotation only, the same function)", callback=_fraction)] = 0.25,
    calib: Annotated[Path | None, typer.Option(help="text file, folder or saved dataset (default: built-in "
                                               "corpus)")] = None,
    calib_samples: Annotated[int, typer.Option("--calib-samples", help="calibration sequences")] = 64,
    seq_len: Annotated[int, typer.Option(help="tokens per calibration sequence")] = 128,
    batch_size: Annotated[int, typer.Option(help="sequences per forward pass")] = 8,
    round_to: Annotated[int, typer.Option("--round-to", help="kept hidden width rounded to a multiple of this")] = 1,
    shortcuts: Annotated[bool, typer.Option("--shortcuts/--no-shortcuts", help="a rotation per norm input with "
                                            "shortcut matrices (default), or one rotation for the whole stream "
                                            "(LLaMA / Mistral / Qwen2 then save as a plain transformers folder)")
                         ] = True,
    seed: c.Seed = 0,
    threads: c.Threads = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """SliceGPT: rotate the residual stream onto its principal directions and delete --fraction of the hidden
    width (Ashkboos et al. 2024); saves a folder `load_sliced` / `llm eval` read."""
    if calib_samples < 1 or seq_len < 2 or batch_size < 1 or round_to < 1:
        raise ValueError(f"--calib-samples, --batch-size, --round-to must be >= 1 and --seq-len >= 2, got "
                         f"{calib_samples}, {batch_size}, {round_to}, {seq_len}")
    if calib is not None and not calib.exists():
        raise FileNotFoundError(f"--calib {calib} does not exist")
    model_dir = _check_slice_dir(model_dir)
    c.check_out(out, overwrite=overwrite, inputs=[model_dir, calib], expected_bytes=c.folder_bytes(model_dir))
    c.set_threads(threads)
    from ..calibrate import io
    from ..calibrate.data import calibration_data
    from ..calibrate.workflow import check_seq_len, load_tokenizer
    from ..structured.slice import save_sliced, slice_

    check_seq_len(model_dir, seq_len)
    model, tok = io.load_model(model_dir), load_tokenizer(model_dir)
    cal = calibration_data(tok, calib, calib_samples, seq_len, seed)
    c.say(f"slicing {model_dir}: {cal.nsamples} x {cal.seq_len} calibration tokens")
    rep = slice_(model, cal.input_ids, fraction, batch_size=batch_size, round_to=round_to, shortcuts=shortcuts)
    saved = save_sliced(model, rep, out, tokenizer=tok, overwrite=overwrite)
    if rep.untied_lm_head:
        c.say("warning: lm_head was tied to the embeddings; the sliced model has its own head")
    typer.echo(f"hidden width {rep.hidden_before} -> {rep.hidden_after}, parameters {rep.params_before} -> "
               f"{rep.params_after} ({rep.shortcuts} shortcut matrices), min kept variance "
               f"{min(rep.kept_variance.values()):.4f}, {rep.seconds:.1f}s -> {saved}")
    from .prune import record

    record(db, out, "llm-slice", {"model": str(model_dir), "fraction": fraction, "shortcuts": shortcuts,
                                  "calibration": cal.info}, "llm",
           {"hidden_after": rep.hidden_after, "params_after": rep.params_after}, None, {"slice_s": rep.seconds})


def _bits(value: int) -> int:
    if value not in (4, 8):
        raise typer.BadParameter(f"--bits must be one of 4, 8; got {value!r}")
    return value


def quantize(
    model_dir: Annotated[Path, typer.Argument(help="a (pruned) save_pretrained folder")],
    out: c.Out,
    bits: Annotated[int, typer.Option("--bits", help="4 | 8", callback=_bits)] = 4,
    group: Annotated[int, typer.Option("--group", help="inputs per scale / zero point (where it does not divide "
                                       "the input dimension: its largest divisor below it)")] = 128,
    exclude: c.Exclude = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Weight-only int8 / int4 group-wise quantization of Linear and fused expert weights, zeros kept (sparse)."""
    if group < 1:
        raise ValueError(f"--group must be a positive integer, got {group}")
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    c.check_out(out, overwrite=overwrite, inputs=[model_dir], expected_bytes=c.folder_bytes(model_dir))
    from ..calibrate import io
    from ..calibrate.pipeline import load_tokenizer
    from ..quant import save_quantized

    model_dir = io.check_model_dir(model_dir)
    model = io.load_model(model_dir)
    tok = load_tokenizer(model_dir, required=False)
    before = c.folder_bytes(model_dir)
    saved, man = save_quantized(model, out, bits, group, tokenizer=tok, exclude=c.excluded(exclude),
                                overwrite=overwrite, extra={"source_model": str(model_dir)})
    sparse = sum(e["sparse"] for e in man["quantized"].values())
    if man["group_fallback"]:
        c.say(f"warning: --group {group} does not divide the input dimension of {len(man['group_fallback'])} "
              "tensors: each uses the largest divisor below it (manifest: quantized.<name>.group)")
    typer.echo(f"int{bits} (group {group}): {len(man['quantized'])} weight tensors, {sparse} stored sparse "
               f"(bitmask); {man['bytes']['weights_file']} bytes of weights (source folder {before} bytes) -> {saved}")
