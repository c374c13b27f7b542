"""Structured removal over every timm model family, prunekit vs torch-pruning 1.6.1.

    nice -n 10 .bench-env/bin/python benchmarks/structured_timm.py --out docs/results/structured_timm.json
    .bench-env/bin/python benchmarks/structured_timm.py --report docs/results/structured_timm.json

One model per family (``timm.list_modules()``, 98 in timm 1.0.31; :func:`pick_models`), ``pretrained=False``,
batch 1 at its default input size, CPU, one thread.
Each family runs in its own subprocess (a pool of one, so runs never overlap), every task under its own time limit:
- prunekit ``remove_(m, x, Structured(sparsity=0.3))`` (a 0.3 channel ratio) and ``Structured(target_macs=0.5)``;
- torch-pruning ``BasePruner`` at ratio 0.3 (group L2, the classifier ignored, ``num_heads`` for every ``qkv``
  Linear of a module with ``num_heads``, attributes fixed afterwards as its timm example does).
A run succeeds if it finishes, the pruned forward works, output shapes are unchanged and outputs finite; "ok, nothing
removed" is flagged (prunekit must then have warned). Recorded: stage reached, MACs kept (prunekit's analytic count
for prunekit, ``prunekit.accounting.count_macs`` for both), graph-building seconds.

The benchmark environment (``.bench-env``, never a dependency of prunekit) pins torch 2.13.0+cpu; PyPI's torchvision
0.29.1 (a timm dependency, installed with ``--no-deps``) registers fake kernels for its C++ ops at import, which its
CPU build does not provide beside this torch ("operator torchvision::nms does not exist"); a no-op stand-in module for
``torchvision._meta_registrations`` is installed before timm is imported (:func:`_no_torchvision_meta`): timm's
models never call those ops.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any


def _no_torchvision_meta() -> None:
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


SMALL = ("atto", "femto", "pico", "nano", "xxxs", "xxs", "xs", "tiny", "small", "mini", "lite", "light", "m0",
         "b0", "_t", "_s", "18", "26", "_0")
NAMED = {"mlp_mixer": "gmlp_s16_224", "mobilenetv5": "mobilenetv5_base", "nasnet": "nasnetalarge",
         "pnasnet": "pnasnet5large", "tresnet": "tresnet_l", "sequencer": "sequencer2d_s", "sknet": "skresnet18",
         "dpn": "dpn107", "efficientvit_msra": "efficientvit_m0", "mobilenetv3": "mobilenetv3_large_100",
         # small, common members where the name rule picks a large or unusual one
         "senet": "legacy_seresnet18", "densenet": "densenet121", "vision_transformer_sam": "samvit_base_patch16_224",
         "levit": "levit_128s", "resnet": "resnet18", "swin_transformer": "swin_tiny_patch4_window7_224",
         "byoanet": "botnet26t_256", "regnet": "regnetx_002", "efficientnet": "efficientnet_b0",
         "xcit": "xcit_nano_12_p16_224", "vision_transformer": "vit_tiny_patch16_224",
         "naflexvit": "naflexvit_base_patch16_gap", "cspnet": "cs3darknet_s", "convnext": "convnext_atto"}


GRAPH_TIMED = ("nasnet", "pnasnet", "inception_v4", "densenet", "hrnet", "cait")
# the families the issue lists as failing on the old main, run first so that a partial sweep still answers it
FIRST = ("cait", "convit", "davit", "nest", "swin_transformer_v2_cr", "twins", "xcit", "edgenext", "pvt_v2",
         "metaformer", "nextvit", "efficientformer_v2", "hiera", "volo", "naflexvit", "focalnet", "inception_next",
         "mambaout", "shvit", "cspnet", "dpn", "rexnet", "sknet", "efficientvit_msra", "byoanet", "tresnet",
         "sequencer", "nasnet", "pnasnet", "mlp_mixer", "mobilenetv5", "mobilenetv3", "resnet", "convnext", "deit",
         "swin_transformer")


def _smallness(name: str) -> tuple[int, int, str]:
    hit = [i for i, tok in enumerate(SMALL) if tok in name]
    return (min(hit) if hit else len(SMALL), len(name), name)


def pick_models() -> dict[str, str]:
    """One model per timm family: the models the issue names, else the smallest-sounding name (size words such as
    atto/nano/tiny/small first, ``test_*`` excluded); counting every model's parameters took too long here."""
    _no_torchvision_meta()
    import timm

    out = {}
    for fam in timm.list_modules():
        names = [n for n in timm.list_models(module=fam) if not n.startswith("test_")]
        out[fam] = NAMED[fam] if fam in NAMED and NAMED[fam] in names else (min(names, key=_smallness) if names else "")
    return out


class _Timeout(Exception):
    pass


def _alarm(_sig: int, _frame: Any) -> None:
    raise _Timeout()


def _limited(fn, limit: float, *args: Any) -> tuple[Any, str | None, float]:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    t0 = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - t0
    except _Timeout:
        return None, f"timeout after {limit:.0f} s", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - every failure is recorded
        import traceback

        tb = traceback.extract_tb(e.__traceback__)[-1]
        return None, f"{type(e).__name__}: {str(e)[:300]} ({tb.filename.split('/')[-1]}:{tb.lineno})", \
            time.perf_counter() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _check(model, x, shapes) -> str | None:
    import torch

    with torch.no_grad():
        out = model(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    got = [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]
    if got != shapes:
        return f"output shapes changed {shapes} -> {got}"
    if not all(bool(torch.isfinite(o).all()) for o in outs if isinstance(o, torch.Tensor)):
        return "non-finite outputs"
    return None


def _ours(model, x, cfg) -> dict[str, Any]:
    from prunekit.structured import remove_

    plan = remove_(model, x, cfg)
    s = plan.summary
    return {"macs_kept": s["macs_after"] / s["macs_before"], "removed_nothing": s.get("removed_nothing", False),
            "warning": s.get("removed_nothing_reason"), "blocks": plan.blocks}


def _classifier(model):
    import torch.nn as nn

    try:
        head = model.get_classifier()
    except Exception:  # noqa: BLE001
        head = None
    if isinstance(head, nn.Module) and any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in head.modules()):
        return [head]
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return lin[-1:]


def _hidden_writers(model) -> list:
    """The layers that write a transformer's residual-stream widths: patch embeddings and patch-merging
    reductions (``patch_embed``, ``downsample``); ignoring them keeps the hidden widths whole, as prunekit does."""
    from torch import nn

    return [m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
            and any(part in ("patch_embed", "downsample") for part in n.split("."))]


def _tp(model, x, ratio: float, heads_mode: str = "heads", keep_hidden: bool = False) -> dict[str, Any]:
    """torch-pruning 1.6.1 at channel ratio ``ratio``; attention heads removed whole (``heads_mode="heads"``) or
    its default, head dims thinned (``"dims"``); ``keep_hidden`` ignores :func:`_hidden_writers` too; then the
    attribute fixes its timm example makes (``num_heads``, ``head_dim``, and timm 1.0's ``attn_dim``, which sizes
    the attention output reshape)."""
    import torch_pruning as tp
    from torch import nn

    heads = {m.qkv: m.num_heads for m in model.modules()
             if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)}
    whole = heads_mode == "heads" and bool(heads)
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, num_heads=heads,
                                  ignored_layers=_classifier(model) + (_hidden_writers(model) if keep_hidden else []),
                                  prune_num_heads=whole, prune_head_dims=not whole,
                                  head_pruning_ratio=ratio if whole else 0.0)
    pruner.step()
    for m in model.modules():
        if getattr(m, "qkv", None) in pruner.num_heads:
            m.num_heads = pruner.num_heads[m.qkv]
            if hasattr(m, "head_dim"):
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if isinstance(getattr(m, "attn_dim", None), int):
                m.attn_dim = m.num_heads * m.head_dim
    return {}


def run_family(fam: str, name: str, limit: float, tools: list[str]) -> dict[str, Any]:
    """Every task on one model, each under ``limit`` seconds (runs in a worker process)."""
    _no_torchvision_meta()
    import copy
    import gc

    import timm
    import torch

    from prunekit.accounting import count_macs
    from prunekit.structured import Structured, build_graph

    torch.set_num_threads(1)
    torch.manual_seed(0)
    row: dict[str, Any] = {"family": fam, "model": name}
    dense, err, t = _limited(lambda: timm.create_model(name, pretrained=False).eval(), limit)
    if err:
        row["error"] = "build: " + err
        return row
    size = dense.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(1, *size)
    with torch.no_grad():
        out = dense(x)
    shapes = [tuple(o.shape) for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)]
    base = count_macs(dense, x)
    row.update(params=sum(p.numel() for p in dense.parameters()), input=list(size), macs=base)
    if fam in GRAPH_TIMED and "ours" in tools:  # the graph alone (prunekit's removal time is recorded for every family)
        _, err, t = _limited(build_graph, limit, dense, x)
        row["graph_s"] = round(t, 2) if not err else None
    tasks = {"ours_r0.3": ("ours", Structured(sparsity=0.3)), "ours_macs0.5": ("ours", Structured(target_macs=0.5)),
             "tp_r0.3": ("tp", 0.3)}
    for key, (tool, cfg) in tasks.items():
        if tool not in tools:
            continue
        m = copy.deepcopy(dense)
        res, err, t = _limited(_ours if tool == "ours" else _tp, limit, m, x, cfg)
        rec: dict[str, Any] = {"seconds": round(t, 2)}
        if err:
            rec.update(stage="prune", error=err)
        else:
            rec.update(res)
            bad = _limited(_check, limit, m, x, shapes)
            if bad[1] or bad[0]:
                rec.update(stage="forward", error=bad[1] or bad[0])
            else:
                rec["stage"] = "ok"
                got, e2, _ = _limited(count_macs, limit, m, x)
                rec["macs_kept_count"] = got / base if not e2 else None
        row[key] = rec
        del m
        gc.collect()
    return row


def _worker(jobs, results, limit) -> None:
    """Runs families from ``jobs`` until a None arrives (one process, so timm is imported once)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while (job := jobs.get()) is not None:
        fam, name, tools = job
        try:
            results.put(run_family(fam, name, limit, tools))
        except BaseException as e:  # noqa: BLE001
            results.put({"family": fam, "model": name, "error": f"worker: {type(e).__name__}: {str(e)[:200]}"})


def sweep(models: dict[str, str], limit: float, tools: list[str], out: Path) -> list[dict[str, Any]]:
    """Families one at a time in one worker subprocess, restarted when a family outlives every alarm (then that
    family is recorded as timed out); results are written after every family."""
    ctx = mp.get_context("spawn")
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {r["family"]: r for r in rows}
    proc = None
    for fam, name in models.items():
        need = [t for t in tools if fam not in done or not any(k.startswith(t + "_") for k in done[fam])]
        if not need or not name or "error" in done.get(fam, {}):
            continue
        if proc is None or not proc.is_alive():
            jobs, results = ctx.Queue(), ctx.Queue()
            proc = ctx.Process(target=_worker, args=(jobs, results, limit))
            proc.start()
        t0 = time.perf_counter()
        jobs.put((fam, name, need))
        try:
            row = results.get(timeout=limit * (3 + 2 * len(tools)) + 120)
        except Exception:  # noqa: BLE001 - a worker that hangs in C code past every alarm
            row = {"family": fam, "model": name, "error": "worker timed out"}
            proc.kill()
            proc = None
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        if fam in done:  # more tools on a family already run: merge
            done[fam].update({k: v for k, v in row.items() if k.startswith(tuple(need)) or k == "graph_s"})
            done[fam]["wall_s"] = round(done[fam].get("wall_s", 0) + row["wall_s"], 1)
            row = done[fam]
        else:
            rows.append(row)
        print(json.dumps(row)[:400], flush=True)
        out.write_text(json.dumps({"limit_s": limit, "rows": rows}, indent=1))
    if proc is not None:
        jobs.put(None)
        proc.join(30)
    return rows


def report(path: Path) -> str:
    """The coverage table (markdown) of a results file."""
    d = json.loads(path.read_text())
    rows = d["rows"]

    def cell(r: dict, key: str) -> str:
        rec = r.get(key)
        if rec is None:
            return "not run" if "error" not in r else f"**fail** ({r['error'][:60]})"
        if rec["stage"] != "ok" and "is unreachable" in rec["error"]:
            floor = rec["error"].split("the model keeps ")[-1].split(" ")[0]
            return f"refused: unreachable, smallest widths keep {floor}"
        if rec["stage"] != "ok":
            return f"**fail** at {rec['stage']}: {rec['error'][:90]}"
        kept = rec.get("macs_kept_count") or rec.get("macs_kept")
        flag = " nothing removed, warned" if rec.get("removed_nothing") and rec.get("warning") else (
            " **nothing removed, no warning**" if rec.get("removed_nothing") else "")
        return f"ok ({kept:.3f}){flag}" if kept is not None and not math.isnan(kept) else f"ok{flag}"

    lines = ["| family | model | graph alone (s) / prunekit r=0.3 removal (s) | prunekit r=0.3: MACs kept | "
             "prunekit target 0.5: MACs kept | "
             "torch-pruning r=0.3: MACs kept |", "|---|---|---|---|---|---|"]
    for r in rows:
        secs = (r.get("ours_r0.3") or {}).get("seconds", "-")
        lines.append(f"| {r['family']} | {r['model']} | {r.get('graph_s', '-')} / {secs} | {cell(r, 'ours_r0.3')} | "
                     f"{cell(r, 'ours_macs0.5')} | {cell(r, 'tp_r0.3')} |")

    def ok(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "ok")

    def silent(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("removed_nothing") and not r[key].get("warning"))

    def removed(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "ok" and not r[key].get("removed_nothing"))

    n = len(rows)
    n_tp = sum(1 for r in rows if r.get("tp_r0.3"))
    lines += ["", f"Families run: {n}. Succeeded (finished, shapes unchanged, finite): prunekit r=0.3 "
              f"{ok('ours_r0.3')}/{n} "
              f"({removed('ours_r0.3')} removed something), prunekit target_macs=0.5 {ok('ours_macs0.5')}/{n}, "
              f"torch-pruning r=0.3 {ok('tp_r0.3')}/{n_tp} run. 'ok' with nothing removed and no warning: prunekit "
              f"{silent('ours_r0.3') + silent('ours_macs0.5')}."]
    kept = sorted(r["ours_r0.3"]["macs_kept"] for r in rows if (r.get("ours_r0.3") or {}).get("stage") == "ok")
    tpk = sorted(r["tp_r0.3"]["macs_kept_count"] for r in rows if (r.get("tp_r0.3") or {}).get("stage") == "ok"
                 and r["tp_r0.3"].get("macs_kept_count") is not None)
    if kept:
        lines.append(f"Median MACs kept at r=0.3: prunekit {kept[len(kept) // 2]:.3f}" +
                     (f", torch-pruning {tpk[len(tpk) // 2]:.3f}" if tpk else "") + ".")
    gs = sorted((r["graph_s"], r["model"]) for r in rows if r.get("graph_s") is not None)
    if gs:
        lines.append(f"Graph building (one thread): median {gs[len(gs) // 2][0]} s, slowest {gs[-1][1]} "
                     f"{gs[-1][0]} s.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/structured_timm.json"))
    ap.add_argument("--limit", type=float, default=90.0, help="seconds per task")
    ap.add_argument("--families", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--tools", default="ours,tp")
    ap.add_argument("--report", type=Path, default=None, help="print the markdown table of a results file")
    a = ap.parse_args()
    if a.report:
        print(report(a.report))
        return
    sel = a.out.with_suffix(".models.json")
    models = json.loads(sel.read_text()) if sel.exists() else pick_models()
    sel.write_text(json.dumps(models, indent=1))
    models = {f: models[f] for f in sorted(models, key=lambda f: (FIRST.index(f) if f in FIRST else len(FIRST), f))}
    if a.families:
        models = {f: models[f] for f in a.families.split(",")}
    sweep(models, a.limit, a.tools.split(","), a.out)
    print(report(a.out))


if __name__ == "__main__":
    main()
