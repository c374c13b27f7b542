"""``prunekit bench``, ``prunekit report`` and ``prunekit demo``: sweeps into a results store, and reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no per-run lines")]


def register(app: typer.Typer) -> None:
    """Add ``bench``, ``report`` and ``demo`` to ``app``."""
    c.command(app, "bench")(bench)
    c.command(app, "report")(report)
    c.command(app, "demo")(demo)


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
        typer.echo(f"  {done['n']:>3}. {run.label}: accuracy {100 * m['accuracy']:.2f}%, "
                   f"sparsity {m['sparsity']:.4f} ({record.timings.get('total_s', 0.0):.1f} s)")

    return on_run


def _resumable(out: Path, overwrite: bool) -> None:
    """``--out`` that holds a results store of an earlier run is resumed; any other non-empty one is refused."""
    c.check_out(out, overwrite=overwrite or (out / c.RESULTS_FILE).is_file())


def _summary_table(db: Path, experiment: str) -> None:
    from ..bench.report import format_summary, summarize
    from ..bench.store import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        typer.echo(format_summary(summarize(store.runs(experiment))))


def bench(
    config: Annotated[Path, typer.Argument(help="sweep config, .json or .yaml")],
    db: c.Db = None,
    out: Annotated[Path | None, typer.Option("--out", help="folder for the results store (and the report); an "
                                             "earlier sweep's folder is resumed")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report", help="also write the report into this "
                                                    "folder")] = None,
    quiet: Quiet = False,
    overwrite: c.Overwrite = False,
) -> None:
    """Run a sweep (model x method x sparsity x seed); runs already in the store are skipped (resume)."""
    if db is None and out is None:
        raise ValueError("give --db FILE.sqlite or --out FOLDER (the results store is never put in the current "
                         "folder by default)")
    if out is not None:
        _resumable(out, overwrite)
    if report_dir is not None:
        c.check_out(report_dir, overwrite=overwrite, inputs=[config])
    from ..bench.report import write_report
    from ..bench.runner import run_sweep

    path = c.results_db(db, out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    bar = c.on_tty() and not quiet
    result = run_sweep(config, path, progress=bar, on_run=None if bar else _printer(quiet))
    typer.echo(f"sweep {result.experiment}: {len(result.ran)} runs done, {len(result.skipped)} found stored, in "
               f"{result.seconds:.1f} s; results in {result.db}")
    _summary_table(result.db, result.experiment)
    for folder in (f for f in (out, report_dir) if f is not None):
        paths = write_report(result.db, folder, experiment=result.experiment)
        typer.echo(f"report: {paths['html']} and {paths['markdown']}")


def report(
    db: Annotated[Path, typer.Option("--db", help="SQLite results store to read")],
    out: c.Out,
    experiment: Annotated[str | None, typer.Option("--experiment", "-e", help="only this experiment")] = None,
    x: Annotated[str, typer.Option("--x", help="x axis: a config or metric key (keep_fraction for "
                                   "data)")] = "sparsity",
    y: Annotated[str, typer.Option("--y", help="y axis: a metric key")] = "accuracy",
    overwrite: c.Overwrite = False,
) -> None:
    """Write an HTML page and a Markdown summary with plots from the results store."""
    c.check_out(out, overwrite=overwrite, inputs=[db])
    from ..bench.report import write_report

    paths = write_report(db, out, experiment=experiment, x=x, y=y)
    typer.echo(paths["markdown"].read_text())
    typer.echo(f"report written: {paths['html']} (and {paths['markdown']})")


def demo(
    out: Annotated[Path, typer.Option("--out", help="folder for the report and the results store; an earlier "
                                      "demo's folder is resumed")] = Path("demo-out"),
    db: c.Db = None,
    seeds: Annotated[str, typer.Option("--seeds", help="number of seeds ('3') or a list ('0,1,2')")] = "1",
    quick: Annotated[bool, typer.Option("--quick", help="a few epochs per run: a smoke test, not the real "
                                        "numbers")] = False,
    quiet: Quiet = False,
    threads: c.Threads = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Dense 1-D CNN on MNIST-1D, one-shot and gradual magnitude pruning at 50-95%; stores runs, writes a report."""
    from ..bench.demo import parse_seeds

    parse_seeds(seeds)
    _resumable(out, overwrite)
    c.set_threads(threads)
    from ..bench.demo import run_demo

    bar = c.on_tty() and not quiet
    res = run_demo(out, db=db, seeds=seeds, quick=quick, progress=bar, on_run=None if bar else _printer(quiet))
    typer.echo(res.summary)
    typer.echo(f"demo done in {res.seconds:.1f} s ({len(res.sweep.ran)} runs, {len(res.sweep.skipped)} found "
               f"stored). Report: {res.paths['html']} and {res.paths['markdown']}; runs in {res.db}")
