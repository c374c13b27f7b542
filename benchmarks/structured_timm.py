"""Structured removal over every timm model family, prunekit vs torch-pruning 1.6.1.

    nice -n 10 .bench-env/bin/python benchmarks/structured_timm.py --out docs/results/structured_timm.json
    BENCH_COMMIT=$(git rev-parse --short HEAD) nice -n 15 .bench-env/bin/python benchmarks/structured_timm.py \
        --tasks ours_macs0.5_retry,tp_r0.3,tp_macs0.5 --clock cpu --limit 60
    .bench-env/bin/python benchmarks/structured_timm.py --report docs/results/structured_timm.json

One model per family (``timm.list_modules()``, 98 in timm 1.0.31; :func:`pick_models`), ``pretrained=False``,
batch 1 at its default input size, CPU, one thread.
Each family runs in its own subprocess (a pool of one, so runs never overlap), every task under its own time limit
(``--clock wall``: wall-clock seconds; ``--clock cpu``: the worker's CPU seconds, for a busy shared machine):
- prunekit ``remove_(m, x, Structured(sparsity=0.3))`` (a 0.3 channel ratio) and ``Structured(target_macs=0.5)``,
  defaults otherwise (exact: widths normalized by LayerNorm/RMSNorm kept whole);
- the retry rule (task ``ours_macs0.5_retry``, only where the defaults failed at target_macs=0.5, :func:`_retries`):
  a refusal "unreachable" is retried with ``remove_blocks="auto"`` (depth first, exact), then
  ``prune_normalized=True`` (approximate: norm statistics over the kept channels), then both (approximate); a
  timeout once more with the defaults; a module prunekit cannot trace with that module added to ``ignore`` (its
  error's advice, as a glob over stack indices, up to 4 modules). The first setting that succeeds is recorded;
- torch-pruning ``BasePruner`` at ratio 0.3 (group L2, the classifier ignored, ``num_heads`` for every ``qkv``
  Linear of a module with ``num_heads``, attributes fixed afterwards as its timm example does), and at target MACs
  0.5 its own progressive way (:func:`_tp_macs`: ratio rising 0.05 a step to 0.9, ``count_ops_and_params`` after
  every step, stop at the first step at or below the target).
A run succeeds if it finishes, the pruned forward works, output shapes are unchanged and outputs finite; "ok, nothing
removed" is flagged (prunekit must then have warned; torch-pruning has no such warning: MACs kept > 0.9999).
Recorded: stage reached, MACs kept (prunekit's analytic count for prunekit, ``prunekit.accounting.count_macs`` for
both), graph-building seconds, per task the clock, limit and ``BENCH_COMMIT`` (environment) it ran at.
Results are keyed per family and task and rewritten atomically after every family: a rerun resumes.

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


# "wall": the limit counts wall-clock seconds (SIGALRM); "cpu": this process's CPU seconds (SIGPROF), so that a
# task's limit does not depend on how busy the shared machine is (set by --clock in the worker)
CLOCK = {"name": "wall"}


def _limited(fn, limit: float, *args: Any) -> tuple[Any, str | None, float]:
    cpu = CLOCK["name"] == "cpu"
    sig, timer = (signal.SIGPROF, signal.ITIMER_PROF) if cpu else (signal.SIGALRM, signal.ITIMER_REAL)
    signal.signal(sig, _alarm)
    signal.setitimer(timer, limit)
    t0 = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - t0
    except _Timeout:
        return None, f"timeout after {limit:.0f} {'CPU ' if cpu else ''}s", time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - every failure is recorded
        import traceback

        tb = traceback.extract_tb(e.__traceback__)[-1]
        return None, f"{type(e).__name__}: {str(e)[:300]} ({tb.filename.split('/')[-1]}:{tb.lineno})", \
            time.perf_counter() - t0
    finally:
        signal.setitimer(timer, 0)


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


def _tp_pruner(model, x, ratio: float, heads_mode: str = "heads", keep_hidden: bool = False, steps: int = 1):
    """torch-pruning 1.6.1's ``BasePruner`` at channel ratio ``ratio`` (reached in ``steps`` linear steps); attention
    heads removed whole (``heads_mode="heads"``) or its default, head dims thinned (``"dims"``); ``keep_hidden``
    ignores :func:`_hidden_writers` too."""
    import torch_pruning as tp
    from torch import nn

    heads = {m.qkv: m.num_heads for m in model.modules()
             if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)}
    whole = heads_mode == "heads" and bool(heads)
    return tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, num_heads=heads, iterative_steps=steps,
                                ignored_layers=_classifier(model) + (_hidden_writers(model) if keep_hidden else []),
                                prune_num_heads=whole, prune_head_dims=not whole,
                                head_pruning_ratio=ratio if whole else 0.0)


def _tp_fix(model, pruner) -> None:
    """The attribute fixes torch-pruning's timm example makes after a step (``num_heads``, ``head_dim``, and timm
    1.0's ``attn_dim``, which sizes the attention output reshape)."""
    for m in model.modules():
        if getattr(m, "qkv", None) in pruner.num_heads:
            m.num_heads = pruner.num_heads[m.qkv]
            if m.num_heads < 1:  # its local head pruning removes ceil(ratio * heads left) a step
                raise RuntimeError(f"torch-pruning removed every attention head of a {type(m).__name__} "
                                   f"(step {pruner.current_step})")
            if hasattr(m, "head_dim"):
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if isinstance(getattr(m, "attn_dim", None), int):
                m.attn_dim = m.num_heads * m.head_dim


def _tp(model, x, ratio: float, heads_mode: str = "heads", keep_hidden: bool = False) -> dict[str, Any]:
    """torch-pruning 1.6.1 at channel ratio ``ratio`` in one step (:func:`_tp_pruner`), then :func:`_tp_fix`."""
    pruner = _tp_pruner(model, x, ratio, heads_mode, keep_hidden)
    pruner.step()
    _tp_fix(model, pruner)
    return {}


TP_MAX_RATIO, TP_STEPS = 0.9, 18


def _tp_macs(model, x, target: float) -> dict[str, Any]:
    """torch-pruning's own way to a MACs target (its ``benchmarks/main.py`` ``progressive_pruning``): one pruner
    whose ratio rises linearly to ``TP_MAX_RATIO`` over ``TP_STEPS`` steps (0.05 a step; 0.9 is prunekit's default
    ``max_group_sparsity``); after every ``step()`` (and :func:`_tp_fix`) ``tp.utils.count_ops_and_params`` counts
    the MACs, and the loop stops at the first step that keeps <= ``target`` of them. A model that still keeps more
    after the last step fails ("target not reached")."""
    import torch_pruning as tp

    base, _ = tp.utils.count_ops_and_params(model, example_inputs=x)
    pruner = _tp_pruner(model, x, TP_MAX_RATIO, steps=TP_STEPS)
    kept = 1.0
    while kept > target and pruner.current_step < pruner.iterative_steps:
        pruner.step()
        _tp_fix(model, pruner)
        kept = tp.utils.count_ops_and_params(model, example_inputs=x)[0] / base
    if kept > target:
        raise RuntimeError(f"target not reached: keeps {kept:.3f} of its MACs (tp count) at ratio {TP_MAX_RATIO}")
    return {"tp_steps": pruner.current_step, "tp_ratio": round(pruner.per_step_pruning_ratio[pruner.current_step], 3),
            "macs_kept_tp": kept}


def _retries(err: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The benchmark's retry rule for a failed ``Structured(target_macs=0.5)`` (see the module docstring): the
    settings to try in order, each ``(label, exact|approximate, Structured overrides)``."""
    if "is unreachable" in err:  # widths alone cannot reach it: depth first (exact), then normalized widths
        return [("remove_blocks='auto'", "exact", {"remove_blocks": "auto"}),
                ("prune_normalized=True", "approximate", {"prune_normalized": True}),
                ("remove_blocks='auto', prune_normalized=True", "approximate",
                 {"remove_blocks": "auto", "prune_normalized": True})]
    if err.startswith("timeout"):
        return [("defaults, CPU-time limit", "exact", {})]
    return []


def _ignore_from(err: str) -> str | None:
    """The module a TraceError asks to ignore, as a glob over its stack indices (``stages.*.blocks.*.rnn``)."""
    if "to ignore=[" not in err or "add '" not in err:
        return None
    name = err.split("add '")[1].split("'")[0]
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def _ours_retry(model, x, prev: dict[str, Any], limit: float) -> dict[str, Any]:
    """Retries of a failed ``target_macs=0.5`` run by :func:`_retries` (and, for a module prunekit cannot trace,
    its own advice: that module, glob over stack indices, added to ``ignore``, up to 4 times); the first setting that
    succeeds is kept. Runs each attempt on a fresh copy of ``model``; returns the record and the slim model."""
    import copy

    from prunekit.structured import Structured

    tries, attempts = _retries(prev.get("error", "")), []
    ignore: list[str] = []
    glob = _ignore_from(prev.get("error", ""))
    while tries or glob:
        if glob:
            ignore.append(glob)
            label, kind, extra = f"ignore={ignore}", "exact", {"ignore": list(ignore)}
        else:
            label, kind, extra = tries.pop(0)
        m = copy.deepcopy(model)
        res, err, t = _limited(_ours, limit, m, x, Structured(target_macs=0.5, **extra))
        attempts.append({"setting": label, "seconds": round(t, 2), "error": err})
        glob = _ignore_from(err) if err and len(ignore) < 4 and glob else None
        if not err:
            return {"res": res, "model": m, "setting": label, "kind": kind, "attempts": attempts}
        del m
    return {"attempts": attempts}


TASKS = {"ours_r0.3": "ours", "ours_macs0.5": "ours", "ours_macs0.5_retry": "ours", "tp_r0.3": "tp",
         "tp_macs0.5": "tp"}


def _run_task(key: str, dense, x, limit: float, prev: dict[str, Any]):
    """One task on a copy of ``dense``: ``(model, result, error, seconds)``."""
    import copy

    from prunekit.structured import Structured

    if key == "ours_macs0.5_retry":
        t0 = time.perf_counter()
        got = _ours_retry(dense, x, prev.get("ours_macs0.5") or {}, limit)
        extra = {"attempts": got["attempts"]}
        if "res" not in got:
            return None, extra, "every retry failed: " + "; ".join(f"{a['setting']}: {a['error'][:80]}"
                                                                   for a in got["attempts"]), time.perf_counter() - t0
        return got["model"], {**got["res"], **extra, "setting": got["setting"], "exact": got["kind"]}, None, \
            time.perf_counter() - t0
    m = copy.deepcopy(dense)
    fn, arg = {"ours_r0.3": (_ours, Structured(sparsity=0.3)), "ours_macs0.5": (_ours, Structured(target_macs=0.5)),
               "tp_r0.3": (_tp, 0.3), "tp_macs0.5": (_tp_macs, 0.5)}[key]
    res, err, t = _limited(fn, limit, m, x, arg)
    return m, res or {}, err, t


def run_family(fam: str, name: str, limit: float, tasks: list[str], prev: dict[str, Any] | None = None,
               clock: str = "wall") -> dict[str, Any]:
    """Every task on one model, each under ``limit`` seconds (runs in a worker process); ``prev``: the family's
    earlier row (the retry task reads the failed ``ours_macs0.5``)."""
    _no_torchvision_meta()
    import gc

    import timm
    import torch

    from prunekit.accounting import count_macs
    from prunekit.structured import build_graph

    CLOCK["name"] = clock
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
    if fam in GRAPH_TIMED and "ours_r0.3" in tasks:  # the graph alone (prunekit's removal time: every family)
        _, err, t = _limited(build_graph, limit, dense, x)
        row["graph_s"] = round(t, 2) if not err else None
    for key in tasks:
        r03 = row.get("tp_r0.3") or (prev or {}).get("tp_r0.3") or {}
        if key == "tp_macs0.5" and r03.get("commit") and r03.get("error", "").startswith("timeout"):
            # its first step builds the same graph and prunes at least as much: not run, to save the machine
            row[key] = {"stage": "skipped", "error": "not run: torch-pruning r=0.3 timed out", "clock": clock,
                        "commit": os.environ.get("BENCH_COMMIT")}
            continue
        m, res, err, t = _run_task(key, dense, x, limit, prev or {})
        rec: dict[str, Any] = {"seconds": round(t, 2), "limit_s": limit, "clock": clock,
                               "commit": os.environ.get("BENCH_COMMIT")}
        if err:
            rec.update(res, stage="prune", error=err)
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


def _worker(jobs, results, limit, clock) -> None:
    """Runs families from ``jobs`` until a None arrives (one process, so timm is imported once)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while (job := jobs.get()) is not None:
        fam, name, tasks, prev = job
        try:
            results.put(run_family(fam, name, limit, tasks, prev, clock))
        except BaseException as e:  # noqa: BLE001
            results.put({"family": fam, "model": name, "error": f"worker: {type(e).__name__}: {str(e)[:200]}"})


def _needed(fam: str, tasks: list[str], done: dict[str, dict], redo: bool = False) -> list[str]:
    """The tasks of ``tasks`` not yet recorded for ``fam`` (so an interrupted sweep resumes per task), with ``redo``
    also those recorded without a commit (older runs); the retry task only where ``ours_macs0.5`` is recorded and
    failed."""
    row = done.get(fam, {})
    need = [k for k in tasks if k not in row or (redo and not row[k].get("commit"))]
    if "ours_macs0.5_retry" in need and (row.get("ours_macs0.5") or {}).get("stage", "ok") == "ok":
        need.remove("ours_macs0.5_retry")
    return need


def sweep(models: dict[str, str], limit: float, tasks: list[str], out: Path, clock: str = "wall",
          redo: bool = False) -> list[dict[str, Any]]:
    """Families one at a time in one worker subprocess, restarted when a family outlives every alarm (then its
    tasks are recorded as timed out); results are written after every family and keyed per task."""
    ctx = mp.get_context("spawn")
    data = json.loads(out.read_text()) if out.exists() else {"limit_s": limit, "rows": []}
    rows = data["rows"]
    done = {r["family"]: r for r in rows}
    proc = None
    for fam, name in models.items():
        need = _needed(fam, tasks, done, redo)
        if not need or not name or "error" in done.get(fam, {}):
            continue
        if proc is None or not proc.is_alive():
            jobs, results = ctx.Queue(), ctx.Queue()
            proc = ctx.Process(target=_worker, args=(jobs, results, limit, clock))
            proc.start()
        t0 = time.perf_counter()
        jobs.put((fam, name, need, done.get(fam)))
        try:  # a CPU-time limit on a busy machine takes longer in wall time: 3x margin
            row = results.get(timeout=limit * (3 + 4 * len(need)) * (3 if clock == "cpu" else 1) + 120)
        except Exception:  # noqa: BLE001 - a worker that hangs in C code past every alarm
            row = {"family": fam, "model": name, "error": "worker timed out"}
            proc.kill()
            proc = None
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        if fam in done:  # more tasks on a family already run: merge (a worker failure is each task's failure)
            if "error" in row:
                row.update({k: {"stage": "worker", "error": row["error"], "clock": clock} for k in need})
            done[fam].update({k: v for k, v in row.items() if k in need or k == "graph_s"})
            done[fam]["wall_s"] = round(done[fam].get("wall_s", 0) + row["wall_s"], 1)
            row = done[fam]
        else:
            rows.append(row)
            done[fam] = row
        print(json.dumps(row)[:400], flush=True)
        text = json.dumps(data, indent=1)
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.rename(out)  # atomic: an interruption never leaves a half-written results file
    if proc is not None:
        jobs.put(None)
        proc.join(30)
    return rows


def _cell(r: dict, key: str) -> str:
    """One task's table cell: ok (MACs kept), refused (with the floor), or the failure and its stage."""
    rec = r.get(key)
    if rec is None:
        return "not run" if "error" not in r else f"**fail** ({r['error'][:60]})"
    if rec["stage"] == "skipped":
        return "not run (its r=0.3 run timed out)"
    if rec["stage"] != "ok" and "is unreachable" in rec["error"]:
        floor = rec["error"].split("the model keeps ")[-1].split(" ")[0]
        return f"refused: unreachable, smallest widths keep {floor}"
    if rec["stage"] != "ok":
        return f"**fail** at {rec['stage']}: {rec['error'][:90]}"
    kept = rec.get("macs_kept_count") or rec.get("macs_kept")
    flag = " nothing removed, warned" if rec.get("removed_nothing") and rec.get("warning") else (
        " **nothing removed, no warning**" if rec.get("removed_nothing") or (
            key.startswith("tp_") and kept is not None and kept > 0.9999) else "")
    how = f" via {rec['setting']} [{rec['exact']}]" if key.endswith("_retry") else ""
    return (f"ok ({kept:.3f}){flag}" if kept is not None and not math.isnan(kept) else f"ok{flag}") + how


def _retry_cell(r: dict) -> str:
    if (r.get("ours_macs0.5") or {}).get("stage") == "ok":
        return "-"
    rec = r.get("ours_macs0.5_retry")
    if rec is not None and rec["stage"] != "ok" and rec.get("attempts"):
        return "**fail**: " + "; ".join(f"{a['setting']}: {(a['error'] or 'ok, then forward failed')[:70]}"
                                        for a in rec["attempts"])
    if rec is not None and rec["stage"] != "ok" and not rec.get("attempts"):
        return "no retry rule applies" if rec["error"].startswith("every retry") else _cell(r, "ours_macs0.5_retry")
    return _cell(r, "ours_macs0.5_retry")


def report(path: Path) -> str:
    """The coverage table (markdown) of a results file."""
    rows = json.loads(path.read_text())["rows"]
    lines = ["| family | model | graph alone (s) / prunekit r=0.3 removal (s) | prunekit r=0.3 | "
             "prunekit MACs 0.5, defaults (exact) | prunekit MACs 0.5, retry rule (setting [exact/approximate]) | "
             "torch-pruning r=0.3 | torch-pruning MACs 0.5 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        secs = (r.get("ours_r0.3") or {}).get("seconds", "-")
        lines.append(f"| {r['family']} | {r['model']} | {r.get('graph_s', '-')} / {secs} | {_cell(r, 'ours_r0.3')} | "
                     f"{_cell(r, 'ours_macs0.5')} | {_retry_cell(r)} | {_cell(r, 'tp_r0.3')} | "
                     f"{_cell(r, 'tp_macs0.5')} |")

    def ok(key: str, exact: str | None = None) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "ok"
                   and (exact is None or r[key].get("exact") == exact))

    def run(key: str) -> int:
        return sum(1 for r in rows if r.get(key) or "error" in r)

    def silent(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "ok" and " no warning" in _cell(r, key))

    def removed(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "ok" and not r[key].get("removed_nothing"))

    def reached(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "ok"
                   and (r[key].get("macs_kept_count") or 1.0) <= 0.505)

    def skipped(key: str) -> int:
        return sum(1 for r in rows if (r.get(key) or {}).get("stage") == "skipped")

    def median(key: str) -> str:
        v = sorted(r[key].get("macs_kept_count") or r[key]["macs_kept"] for r in rows
                   if (r.get(key) or {}).get("stage") == "ok")
        return f"{v[len(v) // 2]:.3f} ({len(v)} successes)" if v else "-"

    n = len(rows)
    m0, m_ex, m_ap = ok("ours_macs0.5"), ok("ours_macs0.5_retry", "exact"), ok("ours_macs0.5_retry", "approximate")
    lines += ["", f"Families run: {n}. Succeeded (finished, shapes unchanged, finite): prunekit r=0.3 "
              f"{ok('ours_r0.3')}/{run('ours_r0.3')} ({removed('ours_r0.3')} removed something); "
              f"prunekit target_macs=0.5: {m0}/{run('ours_macs0.5')} with defaults (exact), {m0 + m_ex}/{n} exact "
              f"(defaults, or the retry rule's exact settings), {m0 + m_ex + m_ap}/{n} with the approximate settings "
              f"too; torch-pruning r=0.3 {ok('tp_r0.3')}/{run('tp_r0.3')}; torch-pruning MACs 0.5 "
              f"{ok('tp_macs0.5')}/{run('tp_macs0.5')} ({skipped('tp_macs0.5')} of them not run: their r=0.3 run "
              f"timed out; {reached('tp_macs0.5')} of its successes keep <= 0.505 of the MACs by the common "
              f"count, its own count_ops_and_params leaving some attention products out). "
              f"'ok' with nothing removed and no warning: prunekit "
              f"{sum(silent(k) for k in ('ours_r0.3', 'ours_macs0.5', 'ours_macs0.5_retry'))}, torch-pruning "
              f"{silent('tp_r0.3') + silent('tp_macs0.5')} (MACs kept > 0.9999; it has no such warning).",
              f"Median MACs kept at r=0.3: prunekit {median('ours_r0.3')}, torch-pruning {median('tp_r0.3')}; "
              f"at the 0.5 target, torch-pruning (first step at or below it) {median('tp_macs0.5')}."]
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
    ap.add_argument("--tools", default="ours,tp", help="ours, tp: their tasks (ours: r0.3, macs0.5 and its retry)")
    ap.add_argument("--tasks", default="", help=f"comma-separated task keys instead of --tools: {', '.join(TASKS)}")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="what --limit counts: wall-clock seconds, or the worker's CPU seconds (a busy machine)")
    ap.add_argument("--redo", action="store_true", help="rerun the tasks recorded without a commit (older runs)")
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
    tasks = a.tasks.split(",") if a.tasks else [k for k, tool in TASKS.items() if tool in a.tools.split(",")]
    bad = [k for k in tasks if k not in TASKS]
    if bad:
        ap.error(f"--tasks: unknown {bad}; accepted: {', '.join(TASKS)}")
    sweep(models, a.limit, tasks, a.out, a.clock, a.redo)
    print(report(a.out))


if __name__ == "__main__":
    main()
