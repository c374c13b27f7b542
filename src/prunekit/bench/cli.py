"""``prunekit bench``, ``prunekit report`` and ``prunekit demo``: thin wrappers that print with rich.

``register(app)`` adds the three commands to the main ``prunekit`` app; ``app`` holds them alone
(for tests and ``python -m``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from .store import DEFAULT_DB

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _fail(e: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {e}")
    raise typer.Exit(2)


def _printer(quiet: bool) -> Any:
    """An ``on_run`` callback printing one line per run (skipped runs are counted, not listed)."""
    if quiet:
        return None
    done = {"n": 0}

    def on_run(run: Any, record: Any) -> None:
        if record is None:
            return
        done["n"] += 1
        m = record.metrics
        console.print(f"  {done['n']:>3}. {run.label}: accuracy {100 * m['accuracy']:.2f}%, "
                      f"sparsity {m['sparsity']:.4f} ({record.timings.get('total_s', 0.0):.1f} s)")

    return on_run


def _summary_table(db: Path, experiment: str) -> None:
    from .report import format_summary, summarize
    from .store import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        console.print(format_summary(summarize(store.runs(experiment))))


def bench(
    config: Path = typer.Argument(..., help="sweep config, .json or .yaml"),
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="SQLite results database (created if missing)"),
    report_dir: Path | None = typer.Option(None, "--report", help="also write the report into this folder"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no per-run lines"),
) -> None:
    """Run a sweep (model x method x sparsity x seed); runs already in --db are skipped (resume)."""
    from .report import check_out_dir, write_report
    from .runner import run_sweep

    try:
        if report_dir is not None:
            check_out_dir(report_dir)
        bar = sys.stderr.isatty() and not quiet
        result = run_sweep(config, db, progress=bar, on_run=None if bar else _printer(quiet))
    except (ValueError, TypeError) as e:
        _fail(e)
    console.print(f"sweep [bold]{result.experiment}[/]: {len(result.ran)} runs done, {len(result.skipped)} "
                  f"found stored, in {result.seconds:.1f} s; results in {result.db}")
    _summary_table(result.db, result.experiment)
    if report_dir is not None:
        paths = write_report(result.db, report_dir, experiment=result.experiment)
        console.print(f"report: {paths['html']} and {paths['markdown']}")


def report(
    db: Path = typer.Option(Path(DEFAULT_DB), "--db", help="SQLite results database"),
    out: Path = typer.Option(Path("prunekit-report"), "--out", help="folder for index.html, summary.md, PNGs"),
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="only this experiment"),
    x: str = typer.Option("sparsity", "--x", help="x axis: a config or metric key (keep_fraction for data)"),
    y: str = typer.Option("accuracy", "--y", help="y axis: a metric key"),
) -> None:
    """Write an HTML page and a Markdown summary with plots from the results database."""
    from .report import write_report

    try:
        paths = write_report(db, out, experiment=experiment, x=x, y=y)
    except (ValueError, TypeError) as e:
        _fail(e)
    console.print(paths["markdown"].read_text())
    console.print(f"report written: [bold]{paths['html']}[/] (and {paths['markdown']})")


def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="folder for the report (and the database)"),
    db: Path | None = typer.Option(None, "--db", help="results database (default: <out>/prunekit-results.sqlite)"),
    seeds: str = typer.Option("1", "--seeds", help="number of seeds ('3') or a list ('0,1,2')"),
    quick: bool = typer.Option(False, "--quick", help="a few epochs per run: a smoke test, not the real numbers"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no per-run lines"),
) -> None:
    """Dense 1-D CNN on MNIST-1D, one-shot and gradual magnitude pruning at 50-95%; stores runs, writes a report."""
    from .demo import run_demo

    try:
        bar = sys.stderr.isatty() and not quiet
        res = run_demo(out, db=db, seeds=seeds, quick=quick, progress=bar, on_run=None if bar else _printer(quiet))
    except (ValueError, TypeError) as e:
        _fail(e)
    console.print(res.summary)
    console.print(f"demo done in {res.seconds:.1f} s ({len(res.sweep.ran)} runs, {len(res.sweep.skipped)} found "
                  f"stored). Report: [bold]{res.paths['html']}[/] and {res.paths['markdown']}; runs in {res.db}")


def register(app: typer.Typer) -> None:
    """Add ``bench``, ``report`` and ``demo`` to ``app`` (the main ``prunekit`` command)."""
    app.command("bench")(bench)
    app.command("report")(report)
    app.command("demo")(demo)


app = typer.Typer(help="Sweeps, results store and reports.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
register(app)
