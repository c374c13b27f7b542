"""Paper check on MNIST-1D: run the sweep (resumable), write the report, print the checks as Markdown.

    nice -n 10 .venv/bin/python benchmarks/bench_paper_check.py \
        --config benchmarks/configs/paper_check_mnist1d.json --db paper-check.sqlite --out paper-check-report

Checks, per model (mean over seeds): dense >= 90% test accuracy; gradual magnitude at 90% within
2 points of dense; one-shot magnitude at 90% without fine-tuning loses clearly (>= 5 points) more
than with it.
"""

from __future__ import annotations

import argparse
import logging
import time

from prunekit.bench.report import Cell, format_summary, summarize, write_report
from prunekit.bench.runner import run_sweep, validate_config
from prunekit.bench.store import ResultsStore

GRADUAL, ONESHOT, ONESHOT_FT, DENSE = "gradual-magnitude", "one-shot-magnitude", "one-shot-magnitude+finetune", "dense"


def _cell(cells: list[Cell], model: str, method: str, x: float) -> Cell:
    return next(c for c in cells if c.model == model and c.method == method and c.x == x)


def _pm(c: Cell) -> str:
    return f"{100 * c.mean:.2f} ± {100 * c.std:.2f} (min {100 * c.lo:.1f}, max {100 * c.hi:.1f}, n={c.n})"


def checks(cells: list[Cell], model: str) -> list[str]:
    """The three paper-check lines for one model, each with its numbers and a pass/fail verdict."""
    dense = _cell(cells, model, DENSE, 0.0)
    grad, noft, ft = (_cell(cells, model, m, 0.9) for m in (GRADUAL, ONESHOT, ONESHOT_FT))
    gap = 100 * (dense.mean - grad.mean)
    extra_loss = 100 * (ft.mean - noft.mean)
    return [
        f"- dense test accuracy {_pm(dense)}: {'PASS' if dense.mean >= 0.90 else 'FAIL'} (>= 90%)",
        f"- gradual magnitude at 90%: {_pm(grad)}, {gap:.2f} points below dense: "
        f"{'PASS' if gap <= 2.0 else 'FAIL'} (within 2 points)",
        f"- one-shot magnitude at 90%: without fine-tuning {_pm(noft)}, with {_pm(ft)}; without loses "
        f"{extra_loss:.2f} points more: {'PASS' if extra_loss >= 5.0 else 'FAIL'} (clearly: >= 5 points)",
    ]


def main() -> None:
    """Run the sweep, write the report, print the summary tables and the checks."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="benchmarks/configs/paper_check_mnist1d.json")
    ap.add_argument("--db", default="paper-check.sqlite")
    ap.add_argument("--out", default="paper-check-report")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for name in ("prunekit.api", "prunekit.training"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sweep = validate_config(args.config)
    t0 = time.perf_counter()
    result = run_sweep(args.config, args.db)
    wall = time.perf_counter() - t0
    paths = write_report(args.db, args.out, experiment=sweep.experiment)
    with ResultsStore(args.db, readonly=True) as store:
        runs = store.runs(sweep.experiment)
    cells = summarize(runs)
    print(f"sweep {sweep.experiment}: {len(result.ran)} runs now, {len(result.skipped)} stored before; "
          f"{wall:.1f} s this call; sum of stored run times {sum(r['timings']['total_s'] for r in runs):.1f} s")
    print(format_summary(cells))
    for model in dict.fromkeys(c.model for c in cells):
        print(f"**{model}**\n")
        print("\n".join(checks(cells, model)) + "\n")
    print(f"report: {paths['html']}")


if __name__ == "__main__":
    main()
