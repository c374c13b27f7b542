"""The shared vocabulary of every ``prunekit`` command: each flag, its help text and its check, written once.

Imports only typer and the standard library at module level: ``prunekit --help`` must not load torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer

from prunekit.registry import KINDS  # registry.py imports no torch

log = logging.getLogger("prunekit.cli")
F = TypeVar("F", bound=Callable[..., Any])

SCOPES = ("layer", "global")
BACKENDS = ("local", "ray")
DEDUP_RULES = ("farthest", "closest", "random", "first")
RESULTS_FILE = "prunekit-results.sqlite"
DEBUG_ENV = "PRUNEKIT_DEBUG"
PATTERN_HELP = "unstructured | N:M (e.g. 2:4) | block:HxW (e.g. block:4x4) | channel"
_PATTERN_RE = re.compile(r"^(unstructured|channel|\d+:\d+|block:\d+x\d+)$")
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError, OSError, ImportError)


def app_group(help_text: str) -> typer.Typer:
    """A typer group with the settings every prunekit group shares (plain click errors, no completion)."""
    return typer.Typer(help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode=None)


# ---- value checks (typer callbacks: they run while parsing, before the command does any work) ----

def choice(flag: str, choices: Sequence[str]) -> Callable[[Any], Any]:
    """A typer callback accepting only ``choices`` for ``flag`` (the error lists them)."""

    def check(value: Any) -> Any:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{flag} must be one of {', '.join(choices)}; got {value!r}")
        return value

    return check


def registered(flag: str, kind: str) -> Callable[[Any], Any]:
    """A typer callback accepting the names (and aliases) registered for ``kind`` (checked at parse time)."""

    def check(value: Any) -> Any:
        from prunekit.registry import METHODS

        if value is not None and value not in METHODS.spellings(kind):
            raise typer.BadParameter(f"{flag} must be one of {', '.join(METHODS.spellings(kind))}; got {value!r}")
        return value

    return check


def _sparsity(value: float | None) -> float | None:
    if value is not None and not 0.0 <= value < 1.0:
        raise typer.BadParameter(f"--sparsity must be in [0, 1); got {value!r}")
    return value


def _keep(value: float | None) -> float | None:
    if value is not None and not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"--keep must be a fraction in (0, 1]; got {value!r}")
    return value


def _pattern(value: str) -> str:
    v = value.strip().lower()
    if not _PATTERN_RE.match(v):
        raise typer.BadParameter(f"--pattern must be {PATTERN_HELP}; got {value!r}")
    nm = re.fullmatch(r"(\d+):(\d+)", v)
    if nm and not 0 < int(nm.group(1)) < int(nm.group(2)):
        raise typer.BadParameter(f"--pattern N:M needs integers with 0 < n < m (e.g. 2:4); got {value!r}; "
                                 f"accepted: {PATTERN_HELP}")
    if v.startswith("block:") and 0 in map(int, re.findall(r"\d+", v)):
        raise typer.BadParameter(f"--pattern block:HxW needs H, W >= 1 (e.g. block:4x4); got {value!r}")
    return v


def _threads(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise typer.BadParameter(f"--threads must be a positive integer; got {value!r}")
    return value


# ---- the shared flags: one definition each, the same help text in every command ----

Out = Annotated[Path, typer.Option("--out", help="output folder; an existing non-empty one is refused unless "
                                   "--overwrite")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace the existing output (never an input, never "
                                         "a folder holding an input)")]
def _db(value: Path | None) -> Path | None:
    """``--db`` must be a writable SQLite file (or creatable), checked before any work."""
    if value is not None:
        from prunekit.bench.store import check_db_writable

        try:
            check_db_writable(value)
        except (ValueError, OSError) as e:
            raise typer.BadParameter(str(e)) from e
    return value


Db = Annotated[Path | None, typer.Option("--db", help=f"SQLite results store to record the run in (default: "
                                         f"OUT/{RESULTS_FILE} where the command keeps results; never the current "
                                         f"folder)", callback=_db)]
PatternOpt = Annotated[str, typer.Option("--pattern", help=PATTERN_HELP, callback=_pattern)]
Sparsity = Annotated[float | None, typer.Option("--sparsity", help="fraction of zeros in [0, 1); not with an N:M "
                                                "--pattern (N:M fixes it)", callback=_sparsity)]
Scope = Annotated[str, typer.Option("--scope", help="layer (each layer to its own sparsity) | global (one ranking "
                                    "across layers)", callback=choice("--scope", SCOPES))]
Exclude = Annotated[list[str] | None, typer.Option("--exclude", metavar="NAME",
                                                  help="module name or glob left dense (repeatable)")]
ModelArg = Annotated[list[str] | None, typer.Option("--model-arg", metavar="NAME=VALUE",
                                                    help="zoo model argument NAME=VALUE, e.g. channels=32 "
                                                    "(repeatable)")]
Seed = Annotated[int, typer.Option("--seed", help="random seed")]
Threads = Annotated[int | None, typer.Option("--threads", help="torch CPU threads (default: torch's choice)",
                                             callback=_threads)]
Keep = Annotated[float, typer.Option("--keep", help="kept fraction in (0, 1]: of the examples (data commands), of "
                                     "each MoE layer's experts (llm experts), of each text's tokens (tokens eval)",
                                     callback=_keep)]
Backend = Annotated[str, typer.Option("--backend", help="local | ray (Ray Data, extra 'ray')",
                                      callback=choice("--backend", BACKENDS))]
Dataset = Annotated[str | None, typer.Option("--dataset", help="zoo data set name or a local .npz/.csv file "
                                             "(default: the model's recipe data set)")]
DedupRule = Annotated[str, typer.Option("--rule", help="which near-duplicate to keep: farthest | closest (from the own "
                                        "centroid) | random | first (lowest index)",
                                        callback=choice("--rule", DEDUP_RULES))]
DEFAULT_SCOPE = "layer"


# ---- checks across flags, parsing ----

def is_nm(pattern: str) -> bool:
    """True for an N:M spelling such as ``2:4``."""
    return re.fullmatch(r"\d+:\d+", pattern.strip()) is not None


def check_sparsity_pattern(sparsity: float | None, pattern: str, required: bool = True) -> None:
    """``--sparsity`` is rejected with an N:M ``--pattern`` (N:M fixes it) and needed without one."""
    if is_nm(pattern) and sparsity is not None:
        raise ValueError(f"--sparsity cannot be combined with --pattern {pattern}: an N:M pattern fixes the "
                         f"sparsity (1 - N/M); drop --sparsity")
    if required and sparsity is None and not is_nm(pattern):
        raise ValueError("give --sparsity (a fraction of zeros in [0, 1), e.g. 0.5) or an N:M --pattern (e.g. 2:4)")


def model_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``["channels=32", "kernel_sizes=[5,3,3]"]`` -> ``{"channels": 32, "kernel_sizes": [5, 3, 3]}``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg must look like NAME=VALUE (e.g. channels=32), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def excluded(items: Sequence[str] | None, defaults: bool = True) -> list[str]:
    """The ``--exclude`` list, after the library's defaults (``lm_head``) when ``defaults``."""
    base = ["lm_head"] if defaults else []
    return base + [e for e in (items or ()) if e not in base]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (torch's intra-op thread count)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# ---- method names: one question asked of the registries ----

def method_table(spellings: bool = False) -> dict[str, list[str]]:
    """Every registered method name by kind (with ``spellings``: their aliases too)."""
    from prunekit.registry import METHODS

    return {k: list(METHODS.spellings(k) if spellings else METHODS.names(kind=k)) for k in KINDS}


def canonical_method(name: str, kind: str) -> str:
    """The registered name of ``name`` (an alias, or ``calibrated-magnitude`` for ``calibrated_magnitude``)."""
    from prunekit.registry import METHODS

    return METHODS.get(name, kind).name


def method_kind(name: str, *, kinds: Sequence[str] = ("oneshot", "calibrated", "structured", "training")) -> str:
    """The registry kind of method ``name``, looked for in ``kinds`` in order; unknown -> an error listing them."""
    table = method_table(spellings=True)
    for kind in kinds:
        if name in table[kind] or name.replace("-", "_") in table[kind]:
            return kind
    names = method_table()
    listed = "; ".join(f"{k}: {', '.join(names[k])}" for k in kinds)
    raise ValueError(f"--method {name!r} is not a registered method; accepted: {listed}")


# ---- outputs: refuse before any work ----

def check_out(out: str | os.PathLike, *, overwrite: bool, inputs: Sequence[str | os.PathLike | None] = (),
              expected_bytes: int = 0, what: str = "--out") -> Path:
    """Refuse a bad ``--out`` before any work (``prunekit.io.check_out``; inputs that do not exist are skipped)."""
    from prunekit.io import check_out as io_check_out

    ins = [Path(p) for p in inputs if p is not None and Path(p).exists()]
    return io_check_out(out, overwrite=overwrite, inputs=ins, expected_bytes=expected_bytes, what=what)


def folder_bytes(path: str | os.PathLike | None) -> int:
    """Total size of the files under ``path`` (0 if it does not exist): the expected size of a copy."""
    from prunekit.io import folder_bytes as io_folder_bytes

    return io_folder_bytes(path) if path is not None and Path(path).exists() else 0


def sparsity_line(report: Any) -> str:
    """The report's labelled figures (pruned weights, all weight matrices, all parameters) when measured."""
    ledger = getattr(report, "ledger", None)
    if ledger is not None and getattr(ledger, "measured", None) is not None:
        return ledger.measured.line()
    return f"sparsity (pruned weights) {report.sparsity:.4f}"


def results_db(db: Path | None, out: Path | None) -> Path | None:
    """``--db`` if given, else ``OUT/prunekit-results.sqlite`` (never the current folder), else None."""
    if db is not None:
        return db
    return out / RESULTS_FILE if out is not None else None


# ---- errors, deprecations, progress ----

def fail(e: BaseException, code: int = 2) -> None:
    """Print ``error: ...`` to stderr and exit with ``code``."""
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code)


def guard(fn: F) -> F:
    """Wrap a command: user errors -> ``error: ...`` rc 2; anything else one line, rc 1 (PRUNEKIT_DEBUG=1: raise)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except USER_ERRORS as e:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            fail(e, 2)
        except Exception as e:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            fail(f"{type(e).__name__}: {e} (set {DEBUG_ENV}=1 for the traceback)", 1)

    return run  # type: ignore[return-value]


def command(group: typer.Typer, name: str | None = None, **kw: Any) -> Callable[[F], F]:
    """``@command(app, "prune")``: register a guarded command."""

    def deco(fn: F) -> F:
        group.command(name, **kw)(guard(fn))
        return fn

    return deco


def alias(group: typer.Typer, name: str, target: Callable[..., Any], old: str, new: str) -> None:
    """Register ``target`` again as a deprecated spelling that prints one line to stderr first."""

    @functools.wraps(target)
    def run(*args: Any, **kwargs: Any) -> Any:
        typer.echo(f"warning: `prunekit {old}` is deprecated; use `prunekit {new}`", err=True)
        return target(*args, **kwargs)

    run.__doc__ = f"Deprecated spelling of `prunekit {new}`. " + (target.__doc__ or "")
    group.command(name)(guard(run))


def on_tty() -> bool:
    """Progress bars only on a terminal; one line per step otherwise."""
    return sys.stderr.isatty()


def say(msg: str) -> None:
    """A progress line on stderr."""
    typer.echo(msg, err=True)


def epoch_lines(label: str = "epoch") -> list[Any]:
    """Without a TTY: a ``fit`` callback printing one line per epoch (epoch, step, loss, accuracy) to stderr."""
    if on_tty():
        return []
    from prunekit.training.loop import Callback

    class EpochLine(Callback):
        def __init__(self) -> None:
            self.shown = 0

        def _show(self, state: Any) -> None:
            while self.shown < len(state.history):
                rec = state.history[self.shown]
                self.shown += 1
                epochs = max(1, -(-state.total_steps // max(1, state.steps_per_epoch)))
                vals = ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k not in ("epoch", "step"))
                say(f"{label} {int(rec.get('epoch', self.shown))}/{epochs} (step {int(rec.get('step', 0))}"
                    f"/{state.total_steps}){': ' + vals if vals else ''}")

        def on_fit_start(self, state: Any) -> None:
            self.shown = len(state.history)

        def on_epoch_start(self, state: Any) -> None:
            self._show(state)

        def on_fit_end(self, state: Any) -> None:
            self._show(state)

    return [EpochLine()]


def block_progress(unit: str = "block", lines: int | None = None) -> Any:
    """A context manager yielding ``progress(stage, done, total)``: rich bars on a TTY; otherwise one line per
    ``unit`` (or about ``lines`` lines in all, for many small steps)."""
    if on_tty():
        return _bars()
    last: dict[str, int] = {}

    def line(stage: str, done: int, total: int) -> None:
        tick = done * lines // max(1, total) if lines else done
        if tick != last.get(stage) or done == total:
            last[stage] = tick
            say(f"{stage}: {unit} {done}/{total}")

    return contextlib.nullcontext(line)


@contextlib.contextmanager
def _bars() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bars:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(f"{stage} blocks", total=total)
            bars.update(tasks[stage], completed=done)

        yield progress
