"""Reports from the results store: PNG plots, an HTML page and a Markdown summary.

Every file is rendered in memory first and then written atomically (temporary file in the same
folder, then ``os.replace``), so a failed report never leaves a half-written file behind.
"""

from __future__ import annotations

import html
import io
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, folder_writable
from .store import ResultsStore, ResultsStoreError

log = logging.getLogger(__name__)

BASELINE = "dense"  # the method label of unpruned runs, drawn as a horizontal line


@dataclass(frozen=True)
class Cell:
    """Statistics of one (experiment, model, method, x) group of runs over seeds."""

    experiment: str
    model: str
    method: str
    x: float
    mean: float
    std: float  # sample standard deviation (0 for one run)
    lo: float
    hi: float
    n: int


def _value(run: Mapping[str, Any], key: str) -> Any:
    """``key`` from the run's config, else from its metrics (None if in neither)."""
    return run["config"].get(key, run["metrics"].get(key))


def model_label(run: Mapping[str, Any]) -> str:
    """The model of a run as reports name it: its zoo name, plus its constructor arguments if any."""
    cfg = run["config"]
    args = cfg.get("model_args") or {}
    name = str(cfg.get("model", "-"))
    return name + "(" + ",".join(f"{k}={v}" for k, v in sorted(args.items())) + ")" if args else name


def _stats(values: Sequence[float]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, min(values), max(values)


def summarize(runs: Iterable[Mapping[str, Any]], x: str = "sparsity", y: str = "accuracy") -> list[Cell]:
    """Group runs by experiment, model, method and ``x``; mean, std, min, max of metric ``y`` over seeds."""
    groups: dict[tuple[str, str, str, float], list[float]] = defaultdict(list)
    for run in runs:
        xv, yv = _value(run, x), run["metrics"].get(y)
        if xv is None or not isinstance(yv, (int, float)) or math.isnan(yv):
            continue
        key = (run["experiment"], model_label(run), str(run["config"].get("method", "-")), float(xv))
        groups[key].append(float(yv))
    return [Cell(*key, *_stats(vals), n=len(vals)) for key, vals in sorted(groups.items())]


def _fmt(c: Cell, scale: float) -> str:
    if c.n == 1:
        return f"{c.mean * scale:.2f} (n=1)"
    return f"{c.mean * scale:.2f} ± {c.std * scale:.2f} (n={c.n})"


def _pivot(cells: Sequence[Cell]) -> dict[tuple[str, str], tuple[list[float], dict[str, dict[float, Cell]]]]:
    """Per (experiment, model): the sorted x values and method -> x -> cell."""
    out: dict[tuple[str, str], tuple[list[float], dict[str, dict[float, Cell]]]] = {}
    for c in cells:
        xs, table = out.setdefault((c.experiment, c.model), ([], {}))
        if c.x not in xs:
            xs.append(c.x)
        table.setdefault(c.method, {})[c.x] = c
    for xs, _ in out.values():
        xs.sort()
    return out


def format_summary(cells: Sequence[Cell], x: str = "sparsity", y: str = "accuracy", percent: bool = True) -> str:
    """Markdown tables, one per (experiment, model): rows are methods, columns ``x`` values, cells mean ± std."""
    scale = 100.0 if percent else 1.0
    parts = []
    for (exp, model), (xs, table) in _pivot(cells).items():
        head = [f"method \\ {x}"] + [f"{v:g}" for v in xs]
        lines = [f"### {exp} / {model}: {y}{' (%)' if percent else ''}, mean ± std over seeds", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in sorted(table, key=lambda m: (m != BASELINE, m)):
            row = [_fmt(table[method][v], scale) if v in table[method] else "" for v in xs]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_accuracy(cells: Sequence[Cell], title: str, x: str = "sparsity", y: str = "accuracy") -> bytes:
    """PNG: ``y`` vs ``x`` per method (mean line, min-max band over seeds); the dense baseline as a line."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.subplots()
    by_method: dict[str, list[Cell]] = defaultdict(list)
    for c in cells:
        by_method[c.method].append(c)
    for method, cs in sorted(by_method.items()):
        cs.sort(key=lambda c: c.x)
        if method == BASELINE:
            base = cs[0]
            ax.axhline(base.mean * 100, color="black", ls="--", lw=1, label=f"{BASELINE} ({base.mean * 100:.1f})")
            ax.axhspan(base.lo * 100, base.hi * 100, color="black", alpha=0.08)
            continue
        xs = [c.x for c in cs]
        line, = ax.plot(xs, [c.mean * 100 for c in cs], marker="o", label=method)
        ax.fill_between(xs, [c.lo * 100 for c in cs], [c.hi * 100 for c in cs], color=line.get_color(), alpha=0.2)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def pick_layer_runs(runs: Iterable[Mapping[str, Any]], x: str = "sparsity") -> dict[str, Mapping[str, Any]]:
    """Per method (dense excluded): its run at the highest ``x``, lowest seed, with per-layer sparsities."""
    best: dict[str, tuple[tuple[float, float], Mapping[str, Any]]] = {}
    for run in runs:
        method, xv = str(run["config"].get("method", "-")), _value(run, x)
        if method == BASELINE or xv is None or not run.get("per_layer"):
            continue
        rank = (float(xv), -float(run["config"].get("seed", 0) or 0))
        if method not in best or rank > best[method][0]:
            best[method] = (rank, run)
    return {m: r for m, (_, r) in sorted(best.items())}


def plot_layer_sparsity(chosen: Mapping[str, Mapping[str, Any]], title: str, x: str = "sparsity") -> bytes:
    """PNG: grouped bars of per-layer sparsity, one bar per chosen run (e.g. each method at its top sparsity)."""
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(name for r in chosen.values() for name in r["per_layer"]))
    width = 0.8 / max(1, len(chosen))
    fig = Figure(figsize=(max(6.4, 0.3 * len(layers) * max(1, len(chosen))), 4.2))
    ax = fig.subplots()
    for i, (method, run) in enumerate(chosen.items()):
        vals = [100 * float(run["per_layer"].get(name, float("nan"))) for name in layers]
        pos = [j + (i - (len(chosen) - 1) / 2) * width for j in range(len(layers))]
        ax.bar(pos, vals, width=width, label=f"{method} @ {_value(run, x):g}")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("layer sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Raise unless ``out_dir`` is (or can be created as) a writable folder; nothing is created."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file; pass a folder for the report")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not folder_writable(probe):
        raise ValueError(f"out_dir {str(out)!r} cannot be written (folder {str(probe)!r} is read-only); "
                         "pass another --out folder")
    return out


write_atomic = atomic_write_bytes  # older name: prunekit.io owns atomic writes


def _runs_table_html(runs: Sequence[Mapping[str, Any]], x: str, y: str) -> str:
    cols = ["id", "model", "method", x, "seed", y, "loss", "total_s"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in runs:
        vals = {"id": r["id"], "model": model_label(r), "method": r["config"].get("method"),
                x: _value(r, x), "seed": r["config"].get("seed"), y: r["metrics"].get(y),
                "loss": r["metrics"].get("loss"), "total_s": r["timings"].get("total_s")}
        cells = "".join(f"<td>{html.escape(_short(vals[c]))}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _summary_html(cells: Sequence[Cell], x: str, y: str) -> str:
    parts = []
    for (exp, model), (xs, table) in _pivot(cells).items():
        head = "".join(f"<th>{v:g}</th>" for v in xs)
        rows = []
        for method in sorted(table, key=lambda m: (m != BASELINE, m)):
            tds = "".join(f"<td>{html.escape(_fmt(table[method][v], 100.0)) if v in table[method] else ''}</td>"
                          for v in xs)
            rows.append(f"<tr><th>{html.escape(method)}</th>{tds}</tr>")
        parts.append(f"<h3>{html.escape(exp)} / {html.escape(model)}: {html.escape(y)} (%)</h3>"
                     f"<table><thead><tr><th>method \\ {html.escape(x)}</th>{head}</tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(parts)


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")


def _html_page(title: str, summary: str, images: Sequence[tuple[str, str]], runs_table: str, meta: str) -> bytes:
    imgs = "\n".join(f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}">'
                     f"<figcaption>{html.escape(cap)}</figcaption></figure>" for src, cap in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(meta)}</p>"
            f"<h2>Summary</h2>{summary}<h2>Plots</h2>{imgs}<h2>All runs</h2>{runs_table}</body></html>\n")
    return page.encode()


def _meta(runs: Sequence[Mapping[str, Any]]) -> str:
    versions = sorted({r["code_version"] for r in runs})
    env = runs[-1]["environment"] if runs else {}
    return (f"{len(runs)} runs; prunekit {', '.join(versions)}; python {env.get('python')}, "
            f"torch {env.get('torch')}, {env.get('cpu_count')} CPUs, {env.get('torch_threads')} torch threads")


def _load_runs(db_path: str | os.PathLike[str], experiment: str | None) -> list[dict[str, Any]]:
    with ResultsStore(db_path, readonly=True) as store:
        if experiment is not None and experiment not in store.experiments():
            raise ValueError(f"experiment {experiment!r} is not in {str(db_path)!r}; stored: "
                             f"{', '.join(map(repr, store.experiments())) or 'none'}")
        runs = store.runs(experiment)
    if not runs:
        raise ResultsStoreError(f"{str(db_path)!r} holds no runs; run `prunekit bench` first")
    return runs


def render_report(
    runs: Sequence[Mapping[str, Any]], x: str = "sparsity", y: str = "accuracy", title: str = "prunekit report"
) -> dict[str, bytes]:
    """All report files as ``{file name: bytes}``: PNG plots, ``index.html`` and ``summary.md``."""
    cells = summarize(runs, x, y)
    if not cells:
        seen = sorted({k for r in runs for k in (*r["config"], *r["metrics"])})
        raise ValueError(f"no run has both {x!r} (in its config or metrics) and metric {y!r}; keys seen: {seen}")
    files: dict[str, bytes] = {}
    images: list[tuple[str, str]] = []
    for (exp, model), _ in _pivot(cells).items():
        mine = [c for c in cells if (c.experiment, c.model) == (exp, model)]
        name = f"{y}_vs_{x}_{_slug(exp)}_{_slug(model)}.png"
        files[name] = plot_accuracy(mine, f"{exp} / {model}", x, y)
        images.append((name, f"{y} vs {x}: {exp} / {model}"))
        chosen = pick_layer_runs([r for r in runs if r["experiment"] == exp and model_label(r) == model], x)
        if chosen:
            name = f"layer_sparsity_{_slug(exp)}_{_slug(model)}.png"
            files[name] = plot_layer_sparsity(chosen, f"per-layer sparsity: {exp} / {model}", x)
            images.append((name, f"per-layer sparsity, each method at its highest {x}: {exp} / {model}"))
    meta = _meta(runs)
    md = [f"# {title}", "", meta, "", format_summary(cells, x, y)]
    md += [f"![{cap}]({src})" for src, cap in images]
    files["summary.md"] = ("\n".join(md) + "\n").encode()
    files["index.html"] = _html_page(title, _summary_html(cells, x, y), images, _runs_table_html(runs, x, y), meta)
    return files


def write_report(
    db_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    experiment: str | None = None,
    x: str = "sparsity",
    y: str = "accuracy",
) -> dict[str, Path]:
    """Write plots, ``index.html`` and ``summary.md`` for the runs in ``db_path`` into ``out_dir``.

    Returns ``{"html": ..., "markdown": ..., <png stem>: ...}``. Checks both paths before any work;
    files are rendered in memory and then each is written atomically.
    """
    out = check_out_dir(out_dir)
    runs = _load_runs(db_path, experiment)
    title = f"prunekit report: {experiment}" if experiment else "prunekit report"
    files = render_report(runs, x, y, title)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, data in files.items():
        write_atomic(out / name, data)
        key = {"index.html": "html", "summary.md": "markdown"}.get(name, Path(name).stem)
        paths[key] = out / name
    log.info("report written to %s", out / "index.html")
    return paths
