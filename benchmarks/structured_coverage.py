"""Coverage and pruning time, prunekit vs torch-pruning 1.6.1, same models, same MACs targets.

    nice -n 10 .bench-env/bin/python benchmarks/structured_coverage.py --out docs/results/structured_coverage.json

For every zoo model and tiny transformers config, and targets of 30% and 50% fewer MACs:
- prunekit: ``remove_(model, x, Structured(target_macs=t))``;
- torch-pruning: ``BasePruner`` with group L2 importance, output layer ignored, ``num_heads`` given for
  q/k/v and the README's attribute fixes afterwards; its channel ratio is bisected to the MACs target.
A run passes if it finishes, the forward pass works, the outputs keep their shapes and MACs fall to
the target (the MACs ratio column shows how close). "exact" is prunekit's check that removing zeroed units changes the
output by less than 1e-5. torch-pruning gets 150 s per model and target (its bisection included).
Times are one graph build + removal at the final setting (median of 3).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import queue
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from structured_common import HF, ZOO, attempt, build, machine, outputs, tp_prune, tp_to_macs  # noqa: E402

from prunekit.accounting import count_macs  # noqa: E402
from prunekit.structured import Structured, remove_  # noqa: E402
from structured._util import removal_error  # noqa: E402

TP_LIMIT_S = 150.0


def check(model, inputs, shapes, base, target) -> tuple[bool, float | None, str | None]:
    res, err, _ = attempt(outputs, model, inputs)
    if err:
        return False, None, "forward: " + err
    got = [tuple(o.shape) for o in res]
    ratio = count_macs(model, inputs) / base
    if got != shapes:
        return False, ratio, f"output shape changed {shapes} -> {got}"
    if ratio > target + 0.005:
        return False, ratio, f"MACs ratio {ratio:.3f} above target {target}"
    return True, ratio, None


def timed(fn, reps: int = 3) -> float:
    ts = []
    for _ in range(reps):
        _, err, t = attempt(fn)
        if err:
            return float("nan")
        ts.append(t)
    return statistics.median(ts)


def run_model(name: str, target: float) -> dict:
    model, x = build(name)
    base, shapes = count_macs(model, x), [tuple(o.shape) for o in outputs(model, x)]
    row = {"model": name, "target_macs": target}
    m = copy.deepcopy(model)
    _, err, _ = attempt(remove_, m, x, Structured(target_macs=target))
    ok, ratio, why = (False, None, err) if err else check(m, x, shapes, base, target)
    row.update(ours_ok=ok, ours_ratio=ratio, ours_error=why)
    row["ours_seconds"] = timed(lambda: remove_(copy.deepcopy(model), x, Structured(target_macs=target)))
    row.update(in_child(lambda: _tp_row(model, x, shapes, base, target), TP_LIMIT_S))
    return row


def _tp_row(model, x, shapes, base, target) -> dict:
    res, err, _ = attempt(tp_to_macs, copy.deepcopy(model), x, target)
    if err:
        return {"tp_ok": False, "tp_ratio": None, "tp_error": err, "tp_seconds": float("nan")}
    tp_model, r = res
    ok, ratio, why = check(tp_model, x, shapes, base, target)
    return {"tp_ok": ok, "tp_ratio": ratio, "tp_error": why, "tp_channel_ratio": r,
            "tp_seconds": timed(lambda: tp_prune(copy.deepcopy(model), x, r))}


def in_child(fn, limit_s: float) -> dict:
    """Run ``fn`` in a forked process; a run past ``limit_s`` counts as a timeout (as in the anchors' sweep)."""
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put(fn()))
    p.start()
    p.join(limit_s)
    if p.is_alive():
        p.kill()
        p.join()
        return _failed(f"timeout after {limit_s:.0f} s")
    try:
        return q.get(timeout=10)
    except queue.Empty:
        return _failed(f"crashed (exit code {p.exitcode})")


def _failed(why: str) -> dict:
    return {"tp_ok": False, "tp_ratio": None, "tp_error": why, "tp_seconds": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results/structured_coverage.json"))
    ap.add_argument("--models", nargs="*", default=ZOO + HF)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.models:
        model, x = build(name)
        res, err, _ = attempt(removal_error, model, x)
        max_err = res[0] if res else None
        for target in (0.7, 0.5):
            row = run_model(name, target)
            row["ours_exact_max_abs"] = max_err
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    print(markdown(rows))


def _fmt(ok: bool, ratio: float | None, err: str | None) -> str:
    if ok:
        return f"ok ({ratio:.3f})"
    return f"FAIL: {err}" if ratio is None else f"FAIL ({ratio:.3f}): {err}"


def markdown(rows: list[dict]) -> str:
    lines = ["| model | MACs target | prunekit (MACs ratio) | exact (max abs diff) | prunekit s | torch-pruning 1.6.1 "
             "(MACs ratio) | torch-pruning s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ex = "-" if r["ours_exact_max_abs"] is None else f"{r['ours_exact_max_abs']:.1e}"
        lines.append(f"| {r['model']} | {r['target_macs']} | {_fmt(r['ours_ok'], r['ours_ratio'], r['ours_error'])} "
                     f"| {ex} | {r['ours_seconds']:.3f} | {_fmt(r['tp_ok'], r['tp_ratio'], r['tp_error'])} | "
                     f"{r['tp_seconds']:.3f} |")
    n_ours = sum(r["ours_ok"] for r in rows)
    n_tp = sum(r["tp_ok"] for r in rows)
    lines.append(f"\npasses: prunekit {n_ours}/{len(rows)}, torch-pruning {n_tp}/{len(rows)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
