"""Bad input and faults through the real CLI: rc 2 naming the argument or file, no traceback, the user's files intact.

Every case runs ``python -m prunekit.cli`` in a subprocess (PYTHONPATH = this checkout's ``src``). With
``PRUNEKIT_WRITE_RESULTS=1`` the module rewrites the table between ``<!-- cli-table:begin -->`` and
``<!-- cli-table:end -->`` in ``docs/results/reliability.md`` (one row per case).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "docs" / "results" / "reliability.md"
BEGIN, END = "<!-- cli-table:begin -->", "<!-- cli-table:end -->"
ROWS: dict[str, tuple[str, str, int, str, bool]] = {}
EXCHANGE_STEPS = ("file-written", "after-write", "after-new-moved", "mid-cleanup")
WORKERS = min(8, os.cpu_count() or 2)  # cases are independent processes in their own folders: run them side by side
RENAME_STEPS = ("file-written", "after-write", "after-journal", "after-old-moved", "after-new-moved", "mid-cleanup",
                "after-cleanup")


@dataclass
class Run:
    """One finished CLI call."""

    rc: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def text(self) -> str:
        return self.out + self.err

    def first_line(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.startswith(("error:", "Error:"))] or self.text.splitlines()
        return lines[0] if lines else ""


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``prunekit ARGS`` through ``python -m prunekit.cli`` in a fresh process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PRUNEKIT_")}
    base.update(PYTHONPATH=str(ROOT / "src"), **(env or {}))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "prunekit.cli", *args], capture_output=True, text=True, cwd=cwd,
                       env=base, timeout=300)
    return Run(r.returncode, r.stdout, r.stderr, time.perf_counter() - t0)


def tree(path: Path) -> dict[str, str]:
    """{relative path: sha256 of the file, or 'dir'} for everything under ``path`` (hidden names included)."""
    if not path.exists():
        return {}
    got = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        got[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return got


def record(case: str, command: str, run: Run, message: str | None, intact: bool) -> None:
    """Keep one row of the table (written at the end of the module when asked)."""
    msg = (message if message is not None else run.first_line()).replace("|", "/").replace("`", "'")
    ROWS[case] = (case, command, run.rc, msg if len(msg) <= 150 else msg[:147] + "...", intact)


def assert_refused(run: Run, *names: str) -> None:
    """rc 2, a one-line error naming every ``names`` entry, no traceback."""
    assert run.rc == 2, run.text
    assert "Traceback" not in run.text, run.text
    for n in names:
        assert n in run.text, (n, run.text)


@pytest.fixture(scope="module", autouse=True)
def write_table():
    """Rewrite the table in docs/results/reliability.md after the module when PRUNEKIT_WRITE_RESULTS=1."""
    yield
    if os.environ.get("PRUNEKIT_WRITE_RESULTS") != "1" or not ROWS:
        return
    lines = [BEGIN, "", "| case | command | rc | message (first line) | files intact |", "|---|---|---:|---|---|"]
    lines += [f"| {c} | `{cmd}` | {rc} | {msg} | {'yes' if ok else 'NO'} |" for c, cmd, rc, msg, ok in ROWS.values()]
    text = TABLE.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    TABLE.write_text(head + "\n".join(lines) + "\n\n" + END + rest.split(END, 1)[1], encoding="utf-8")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with a data file, scores, the source checkpoint (mlp, 0.5), its 0.8 replacement and a slim model."""
    d = tmp_path_factory.mktemp("reliab")
    rng = np.random.default_rng(0)
    np.savez(d / "sig.npz", X=rng.normal(size=(120, 40)).astype(np.float32), y=np.arange(120) % 10)
    np.save(d / "scores.npy", rng.normal(size=120))
    jobs = {"ck": ["--sparsity", "0.5"], "new": ["--sparsity", "0.8"], "st": ["--structured", "--target-params", "0.5"]}
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = pool.map(lambda kv: cli("prune", "mlp", *kv[1], "--dataset", "sig.npz", "--out", kv[0], cwd=d),
                        jobs.items())
    for r in runs:
        assert r.rc == 0, r.text
    return d


def copy_base(base: Path, dest: Path) -> Path:
    """``dest`` (created) holding copies of the base files (a case may damage its copies)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in base.iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy)(p, dest / p.name)
    return dest


@pytest.fixture
def work(base, tmp_path) -> Path:
    """A case folder holding copies of the base files."""
    return copy_base(base, tmp_path)


def side_by_side(fn, cases: list) -> dict:
    """{case: fn(*case)} computed in a thread pool (each case runs its own subprocesses)."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(cases, pool.map(lambda c: fn(*c), cases), strict=True))


# ---------------------------------------------------------------- non-empty --out

@pytest.mark.parametrize("label,args", [
    ("train", ["train", "mlp", "--epochs", "1", "--dataset", "sig.npz"]),
    ("prune", ["prune", "mlp", "--sparsity", "0.5", "--dataset", "sig.npz"]),
    ("train --method rigl", ["train", "mlp", "--method", "rigl", "--sparsity", "0.5", "--epochs", "1",
                             "--dataset", "sig.npz"]),
    ("data select", ["data", "select", "--scores", "scores.npy", "--keep", "0.5"]),
])
def test_non_empty_out_without_overwrite(work, label, args):
    (work / "mine").mkdir()
    (work / "mine" / "thesis.txt").write_text("years of work")
    before = tree(work)
    r = cli(*args, "--out", "mine", cwd=work)
    assert_refused(r, "--out mine", "--overwrite")
    intact = tree(work) == before
    record(f"non-empty --out, no --overwrite ({label})", f"prunekit {' '.join(args)} --out mine", r, None, intact)
    assert intact and (work / "mine" / "thesis.txt").read_text() == "years of work"


# ---------------------------------------------------------------- --out and the input

@pytest.mark.parametrize("label,out", [("--out = the source", "wrap/ck"), ("--out inside the source", "wrap/ck/inner"),
                                       ("the source inside --out", "wrap")])
def test_overwrite_never_takes_the_input(work, label, out):
    (work / "wrap").mkdir()
    shutil.move(work / "ck", work / "wrap" / "ck")
    before = tree(work)
    args = ["prune", "wrap/ck", "--sparsity", "0.8", "--out", out, "--overwrite"]
    r = cli(*args, cwd=work)
    assert_refused(r, f"--out {out}", "input wrap/ck")
    intact = tree(work) == before
    record(f"{label}, with --overwrite", f"prunekit {' '.join(args)}", r, None, intact)
    assert intact


# ---------------------------------------------------------------- read-only parent

@pytest.mark.parametrize("label,args", [
    ("train", ["train", "mlp", "--epochs", "1", "--dataset", "sig.npz"]),
    ("prune", ["prune", "mlp", "--sparsity", "0.5", "--dataset", "sig.npz"]),
    ("data select", ["data", "select", "--scores", "scores.npy", "--keep", "0.5"]),
])
def test_read_only_out_parent_is_refused_before_any_work(work, label, args):
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = tree(work)
        r = cli(*args, "--out", "ro/out", cwd=work)
        assert_refused(r, "--out ro/out", "not writable")
        assert "epoch" not in r.out.lower() and "sparsity" not in r.out  # no training, no pruning happened
        intact = tree(work) == before
        record(f"read-only --out parent (chmod 555, as root) ({label})", f"prunekit {' '.join(args)} --out ro/out",
               r, f"{r.first_line()} [returned in {r.seconds:.1f} s, nothing computed]", intact)
        assert intact
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------- kill -9 during a save

def _digest(path: Path) -> str:
    """sha256 over the names, shapes, dtypes and bytes of a safetensors file's tensors (its header order varies)."""
    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        for k in sorted(f.keys()):
            t = f.get_tensor(k)
            h.update(f"{k}{list(t.shape)}{t.dtype}".encode())
            h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _weights(folder: Path) -> tuple[str, str]:
    return _digest(folder / "model.safetensors"), _digest(folder / "masks.safetensors")


FAULTS = [("exchange", s) for s in EXCHANGE_STEPS] + [("rename", s) for s in RENAME_STEPS]
REPLACE = ["prune", "mlp", "--sparsity", "0.8", "--dataset", "sig.npz", "--out", "ck", "--overwrite"]


def _crash(work: Path, swap: str, step: str) -> dict:
    """Kill a replace of ``work/ck`` at ``step``, inspect it, run the next command; what each saw."""
    env = {"PRUNEKIT_FAULT": step, **({"PRUNEKIT_SWAP": "rename"} if swap == "rename" else {})}
    got = {"crash": cli(*REPLACE, cwd=work, env=env), "look": cli("inspect", "ck", cwd=work)}
    ck = work / "ck"
    got["files"] = set(tree(ck))
    if got["files"] >= {"model.safetensors", "masks.safetensors", "manifest.json"}:
        got["weights"] = _weights(ck)
        got["sparsity"] = json.loads((ck / "manifest.json").read_text())["method"]["sparsity"]
    got["next"] = cli("prune", "mlp", "--sparsity", "0.5", "--out", "ck", cwd=work)  # refused, but recovers first
    got["leftovers"] = [p.name for p in work.iterdir() if ".prunekit-" in p.name]
    got["after"] = _weights(ck) if (ck / "masks.safetensors").is_file() else None
    return got


@pytest.fixture(scope="module")
def crashes(base, tmp_path_factory) -> dict:
    """Every fault case, run side by side, each in its own copy of the base folder."""
    root = tmp_path_factory.mktemp("crash")
    return side_by_side(lambda swap, step: _crash(copy_base(base, root / f"{swap}-{step}"), swap, step), FAULTS)


@pytest.mark.parametrize("swap,step", FAULTS)
def test_kill_at_each_save_step_leaves_the_old_or_the_new_checkpoint(crashes, base, swap, step):
    old, new = _weights(base / "ck"), _weights(base / "new")
    assert old != new
    c = crashes[swap, step]
    crash, look = c["crash"], c["look"]
    assert crash.rc == -9, crash.text  # SIGKILL at that step
    assert look.rc == 0 and "Traceback" not in look.text, look.text
    assert c["files"] == {"manifest.json", "model.safetensors", "masks.safetensors"}
    got = c["weights"]
    assert got in (old, new)  # never neither, never half of each
    which = "old" if got == old else "new"
    sparsity = c["sparsity"]
    assert sparsity == (0.5 if which == "old" else 0.8)  # the manifest belongs to the weights beside it
    assert_refused(c["next"], "--out ck")
    leftovers, after = c["leftovers"], c["after"]
    assert leftovers == [] and after in (old, new)  # a journaled swap may be finished by the next run
    then = "old" if after == old else "new"
    record(f"kill -9 at {step} ({swap} swap)", f"PRUNEKIT_FAULT={step}"
           f"{' PRUNEKIT_SWAP=rename' if swap == 'rename' else ''} prunekit {' '.join(REPLACE)}", crash,
           f"killed; then inspect rc {look.rc}: the {which} checkpoint (sparsity {sparsity}); after the next "
           f"run: the {then} one, {len(leftovers)} leftovers", True)


# ---------------------------------------------------------------- damaged files, two readers

def _manifest(folder: Path, change) -> None:
    p = folder / "manifest.json"
    man = json.loads(p.read_text())
    change(man)
    p.write_text(json.dumps(man))


def _rewrite_masks(folder: Path, change) -> None:
    p = folder / "masks.safetensors"
    with safe_open(str(p), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(change(tensors), str(p), metadata=meta)


def _wide_plan(folder: Path) -> None:
    p = folder / "plan.json"
    plan = json.loads(p.read_text())
    plan["attributes"]["features.0"]["out_features"] = 10**6
    plan["attributes"]["features.2"]["in_features"] = 10**6
    plan["shapes"].update({"features.0.weight": [10**6, 40], "features.0.bias": [10**6],
                           "features.2.weight": [85, 10**6]})
    p.write_text(json.dumps(plan))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "manifest with wrong shapes": ("ck", "model.safetensors",
                                   lambda d: _manifest(d, lambda m: m["model"].update(kwargs={"hidden": [64, 32]}))),
    "manifest is a JSON list": ("ck", "manifest.json", lambda d: (d / "manifest.json").write_text("[1, 2]")),
    "structured plan with 10^6 channels": ("st", "model.safetensors", _wide_plan),
    "masks file with wrong shapes": ("ck", "masks.safetensors", lambda d: _rewrite_masks(
        d, lambda t: {**t, "features.0.weight": t["features.0.weight"].T.contiguous()})),
    "masks file with an unknown name": ("ck", "masks.safetensors", lambda d: _rewrite_masks(
        d, lambda t: {**t, "nope.weight": t["head.weight"].clone()})),
    "truncated safetensors": ("ck", "model.safetensors", lambda d: _truncate(d / "model.safetensors")),
    "corrupt JSON manifest": ("ck", "manifest.json", lambda d: _truncate(d / "manifest.json")),
    "corrupt JSON plan": ("st", "plan.json", lambda d: _truncate(d / "plan.json")),
}
READERS = {"inspect": lambda src: ["inspect", src],
           "prune": lambda src: ["prune", src, "--sparsity", "0.8", "--dataset", "sig.npz", "--out", "o"]}


DAMAGED = [(d, r) for d, (src, _, _) in DAMAGE.items() for r in READERS
           if src == "ck" or r == "inspect"]  # prune reads zoo checkpoints (a slim one is refused by its kind)


def _read_damaged(work: Path, damage: str, reader: str) -> tuple[Run, bool]:
    """Spoil a copy, run the reader on it; (its run, whether the folder tree stayed the same)."""
    src, _, spoil = DAMAGE[damage]
    spoil(work / src)
    before = tree(work)
    r = cli(*READERS[reader](src), cwd=work)
    return r, tree(work) == before


@pytest.fixture(scope="module")
def damaged(base, tmp_path_factory) -> dict:
    """Every damaged-file case, run side by side, each in its own copy of the base folder."""
    root = tmp_path_factory.mktemp("damaged")
    return side_by_side(lambda d, r: _read_damaged(copy_base(base, root / f"{len(d)}-{d[:8]}-{r}"), d, r), DAMAGED)


@pytest.mark.parametrize("damage,reader", DAMAGED)
def test_damaged_checkpoint_is_refused_naming_the_file(damaged, damage, reader):
    src, bad_file, _ = DAMAGE[damage]
    r, intact = damaged[damage, reader]
    assert_refused(r, f"{src}/{bad_file}")
    record(f"{damage} ({reader})", f"prunekit {' '.join(READERS[reader](src))}", r, None, intact)
    assert intact  # nothing written: no output folder, the damaged source unchanged


# ---------------------------------------------------------------- bad flag values

@pytest.mark.parametrize("label,args,names", [
    ("--sparsity 1.5", ["prune", "mlp", "--sparsity", "1.5"], ["--sparsity", "[0, 1)"]),
    ("--sparsity with an N:M pattern", ["prune", "mlp", "--sparsity", "0.5", "--pattern", "2:4"],
     ["--sparsity", "--pattern 2:4"]),
    ("--keep 0", ["data", "select", "--scores", "scores.npy", "--keep", "0"], ["--keep", "(0, 1]"]),
    ("--scope diagonal", ["prune", "mlp", "--sparsity", "0.5", "--scope", "diagonal"], ["--scope", "layer, global"]),
    ("--pattern 3:2", ["prune", "mlp", "--pattern", "3:2"], ["--pattern", "0 < n < m", "unstructured"]),
    ("unknown --method (prune)", ["prune", "mlp", "--method", "obs", "--sparsity", "0.5"],
     ["--method", "magnitude", "sparsegpt"]),
    ("unknown --method (train)", ["train", "mlp", "--method", "obs", "--sparsity", "0.5"], ["--method", "rigl"]),
])
def test_bad_flag_values_name_the_flag_and_the_accepted_values(work, label, args, names):
    before = tree(work)
    r = cli(*args, "--out", "o", cwd=work)
    assert_refused(r, *names)
    intact = tree(work) == before
    record(f"bad flag: {label}", f"prunekit {' '.join(args)} --out o", r, None, intact)
    assert intact
