"""prunekit.io: output checks, atomic folders that survive kill -9 at every step, manifests, header checks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import prunekit.io as pio
from prunekit.io import (
    FAULT_STEPS,
    NotWritableError,
    OutputError,
    OutputExistsError,
    atomic_dir,
    check_out,
    check_tensor_file,
    read_json,
    read_manifest,
    recover,
    save_tensors,
    write_manifest,
)

FILES = ("a.txt", "b.txt", "c.txt")


def _folder(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    for f in FILES:
        (path / f).write_text(tag)
    return path


def _state(out: Path) -> str | None:
    """The tag of a complete folder at ``out`` (all files, one tag), None if absent; fails on a half one."""
    if not out.exists():
        return None
    tags = {(out / f).read_text() for f in FILES if (out / f).is_file()}
    assert sorted(p.name for p in out.iterdir()) == list(FILES) and len(tags) == 1, f"half folder at {out}"
    return tags.pop()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "prunekit-" in p.name)


# ---------------------------------------------------------------- check_out

def test_check_out_refuses_a_non_empty_folder_and_the_users_file_survives(tmp_path):
    out = _folder(tmp_path / "out", "mine")
    with pytest.raises(OutputExistsError, match=r"out already exists.*--overwrite"):
        check_out(out, overwrite=False)
    assert _state(out) == "mine"
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="f already exists and is a file"):
        check_out(tmp_path / "f", overwrite=False)
    (tmp_path / "empty").mkdir()
    assert check_out(tmp_path / "empty", overwrite=False) == tmp_path / "empty"
    assert check_out(tmp_path / "new" / "deeper", overwrite=False) == tmp_path / "new" / "deeper"
    assert check_out(out, overwrite=True) == out and _state(out) == "mine"  # checks only; writes nothing


def test_check_out_never_accepts_an_input_or_its_parent_or_child(tmp_path):
    src = _folder(tmp_path / "model", "source")
    for out, overwrite in [(src, False), (src, True), (tmp_path, True), (src / "sub", True)]:
        with pytest.raises(OutputError, match="input"):
            check_out(out, overwrite=overwrite, inputs=[src])
    (tmp_path / "link").symlink_to(src)
    with pytest.raises(OutputError, match="link is, contains or lies inside the input"):
        check_out(tmp_path / "link", overwrite=True, inputs=[src])
    assert check_out(tmp_path / "other", overwrite=True, inputs=[src]) == tmp_path / "other"
    assert _state(src) == "source"


def test_check_out_refuses_a_read_only_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(NotWritableError, match=r"ro is not writable \(read-only\?\)"):
            check_out(ro / "out", overwrite=False)
        with pytest.raises(PermissionError):  # NotWritableError is a PermissionError too
            check_out(ro / "a" / "b", overwrite=False)
    finally:
        ro.chmod(0o755)


def test_check_out_probes_the_folder_for_real(tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(pio.tempfile, "mkstemp", refuse)  # os.access says yes, the file system says no
    with pytest.raises(NotWritableError, match="not writable"):
        check_out(tmp_path / "out", overwrite=False)


def test_check_out_refuses_when_the_disk_is_too_full(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pio.shutil, "disk_usage", lambda p: usage(10 * pio.MIB, 8 * pio.MIB, 2 * pio.MIB))
    with pytest.raises(OutputError, match=rf"{2 * pio.MIB} bytes free, {int(pio.MIB * 1.1) + pio.MIB} needed"):
        check_out(tmp_path / "out", overwrite=False, expected_bytes=pio.MIB)
    assert check_out(tmp_path / "out", overwrite=False, expected_bytes=pio.MIB // 2) == tmp_path / "out"


# ---------------------------------------------------------------- atomic_dir

@pytest.mark.parametrize("swap", ["exchange", "rename"])
def test_atomic_dir_publishes_whole_and_replaces_only_with_overwrite(tmp_path, monkeypatch, swap):
    if swap == "rename":
        monkeypatch.setenv("PRUNEKIT_SWAP", "rename")
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.prunekit-new-")
        assert not out.exists()
        for f in FILES:
            (tmp / f).write_text("v1")
    assert _state(out) == "v1" and _leftovers(tmp_path) == []
    with pytest.raises(OutputExistsError, match="overwrite"):
        with atomic_dir(out):
            raise AssertionError("never entered: refused before any work")
    with atomic_dir(out, overwrite=True) as tmp:
        for f in FILES:
            (tmp / f).write_text("v2")
    assert _state(out) == "v2" and _leftovers(tmp_path) == []


def test_atomic_dir_failure_leaves_out_untouched_and_no_temp(tmp_path):
    out = _folder(tmp_path / "out", "old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("boom")
    assert _state(out) == "old" and _leftovers(tmp_path) == []
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty folder is replaced without overwrite
        for f in FILES:
            (tmp / f).write_text("x")
    assert _state(tmp_path / "empty") == "x"


_CHILD = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("pkio", sys.argv[1])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
with io.atomic_dir(Path(sys.argv[2]), overwrite=True) as tmp:
    for name in ("a.txt", "b.txt", "c.txt"):
        io.atomic_write_text(tmp / name, "new")
"""


def _save_in_child(out: Path, step: str, swap: str) -> int:
    """Replace ``out`` in a child process (stdlib only: io.py loaded from its file) killed at ``step``."""
    env = {**os.environ, "PRUNEKIT_FAULT": step, "PRUNEKIT_SWAP": swap}
    return subprocess.run([sys.executable, "-c", _CHILD, pio.__file__, str(out)], env=env, timeout=60).returncode


# what each kill leaves once recovered: the old folder, or the new one (the journal says it is complete)
_OUTCOME = {"file-written": "old", "after-write": "old", "after-journal": "new", "after-old-moved": "new",
            "after-new-moved": "new", "mid-cleanup": "new", "after-cleanup": "new"}
_JOURNAL_ONLY = ("after-journal", "after-old-moved", "after-cleanup")


@pytest.mark.parametrize("swap", ["exchange", "rename"])
@pytest.mark.parametrize("step", list(FAULT_STEPS))
def test_kill_9_at_every_step_leaves_old_or_new_and_the_next_run_cleans_up(tmp_path, step, swap):
    out = _folder(tmp_path / "out", "old")
    (tmp_path / ".out.mine").write_text("user file with a similar name")
    rc = _save_in_child(out, step, swap)
    reached = swap == "rename" or step not in _JOURNAL_ONLY
    assert rc == (-9 if reached else 0)
    journal = tmp_path / ".out.prunekit-swap.json"
    assert _state(out) in ("old", "new") or journal.is_file()  # never neither, never half, without a journal
    if step == "after-old-moved" and swap == "rename":
        assert not out.exists() and journal.is_file()
    recover(out) if step != "mid-cleanup" else check_out(out, overwrite=True)
    assert _state(out) == (_OUTCOME[step] if reached else "new")
    assert _leftovers(tmp_path) == []
    assert (tmp_path / ".out.mine").read_text() == "user file with a similar name"


def test_a_reader_finishes_a_swap_killed_while_out_was_absent(tmp_path):
    out = _folder(tmp_path / "out", "old")
    assert _save_in_child(out, "after-old-moved", "rename") == -9
    assert not out.exists()  # between the two renames: only the journal knows where the folders are
    pio.settle(tmp_path / "elsewhere")  # no journal for that path: nothing happens
    assert not out.exists() and (tmp_path / ".out.prunekit-swap.json").is_file()
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):  # settled first, then read
        read_manifest(out)
    assert _state(out) == "new" and _leftovers(tmp_path) == []


def test_recover_keeps_live_runs_foreign_names_and_legacy_leftovers(tmp_path, caplog):
    out = _folder(tmp_path / "out", "old")
    live = tmp_path / f".out.prunekit-new-{os.getppid()}-0123abcd"  # a running process's folder
    dead = tmp_path / ".out.prunekit-old-999999999-0123abcd"
    foreign = tmp_path / ".out.prunekit-new-notapid"
    legacy = tmp_path / ".out.old"
    for p in (live, dead, foreign, legacy):
        p.mkdir()
    with caplog.at_level(logging.WARNING, logger="prunekit.io"):
        assert recover(out) == [dead]
    assert live.exists() and foreign.exists() and legacy.exists() and not dead.exists()
    assert "older prunekit" in caplog.text and ".out.old" in caplog.text
    assert "stale temporary" in caplog.text


def test_a_journal_naming_foreign_folders_is_refused(tmp_path):
    out = _folder(tmp_path / "out", "old")
    (tmp_path / "precious").mkdir()
    (tmp_path / ".out.prunekit-swap.json").write_text(json.dumps({"new": "precious", "old": "precious", "pid": 1}))
    with pytest.raises(OutputError, match="did not make"):
        recover(out)
    assert (tmp_path / "precious").is_dir() and _state(out) == "old"


# ---------------------------------------------------------------- JSON and manifests

def test_read_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json", "plan")
    with pytest.raises(ValueError, match=r"list.json must hold a JSON object, got a list"):
        read_json(tmp_path / "list.json", "plan")
    with pytest.raises(FileNotFoundError, match="plan not found: .*none.json"):
        read_json(tmp_path / "none.json", "plan")


def test_manifest_round_trip_and_validation(tmp_path):
    write_manifest(tmp_path, "masks", {"n": 1})
    assert read_manifest(tmp_path) == {"format": "prunekit", "version": 2, "kind": "masks", "n": 1}
    with pytest.raises(ValueError, match=r"holds a 'masks' checkpoint; expected kind 'zoo'"):
        read_manifest(tmp_path, kinds=("zoo",))
    with pytest.raises(ValueError, match="kind must be one of"):
        write_manifest(tmp_path, "pickle", {})
    with pytest.raises(ValueError, match="may not set"):
        write_manifest(tmp_path, "zoo", {"version": 3})
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "prunekit", "version": 3, "kind": "zoo"}))
    with pytest.raises(ValueError, match=r"manifest.json has version 3"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a prunekit manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ValueError, match="manifest.json must hold a JSON object, got a list"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_manifest(tmp_path / "none")


@pytest.mark.parametrize("file, doc, kind", [
    ("manifest.json", {"format": "prunekit.checkpoint", "version": 1, "model": {"name": "mlp"}}, "zoo"),
    ("checkpoint.json", {"format": "prunekit.checkpoint", "version": 1, "tensors": "t.safetensors"},
     "training-state"),
    ("prunekit_manifest.json", {"format": "prunekit.llm-masks", "version": 1, "layers": {}}, "hf"),
    ("manifest.json", {"version": 1, "kind": "data-selection", "num_kept": 1}, "data-selection"),
    ("plan.json", {"type": "prunekit.structured.plan", "version": 1}, "structured"),
])
def test_version_1_layouts_are_read_in_the_version_2_shape(tmp_path, file, doc, kind):
    (tmp_path / file).write_text(json.dumps(doc))
    man = read_manifest(tmp_path)
    assert (man["format"], man["version"], man["kind"], man["legacy"]) == ("prunekit", 2, kind, 1)


# ---------------------------------------------------------------- header checks

def test_check_tensor_file_reads_only_the_header_and_names_the_first_bad_tensor(tmp_path):
    f = save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(2, 3), "m": torch.ones(4, dtype=torch.bool)})
    head = check_tensor_file(f, {"w": ((2, 3), torch.float32), "m": ((4,), torch.bool)})
    assert head == {"w": ((2, 3), "F32"), "m": ((4,), "BOOL")}
    cases = [({"w": ((3, 2), None), "m": (None, None)}, r"t.safetensors: tensor 'w' has shape \[2, 3\], expected"),
             ({"w": ((2, 3), None)}, r"t.safetensors: unknown tensor 'm'"),
             ({"w": (None, None), "m": (None, None), "b": (None, None)}, r"tensor 'b' is missing"),
             ({"w": (None, torch.float16), "m": (None, None)}, r"tensor 'w' has dtype F32, expected F16")]
    for expected, msg in cases:
        with pytest.raises(ValueError, match=msg):
            check_tensor_file(f, expected)
    with pytest.raises(ValueError, match=r"tensor 'w' has shape \[2, 3\] \(6 elements\), above the bound of 5"):
        check_tensor_file(f, None, max_numel=5)


def test_a_truncated_safetensors_file_is_refused_naming_it(tmp_path):
    f = save_tensors(tmp_path / "t.safetensors", {"w": torch.zeros(64, 64)})
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"weights .*t.safetensors is not a valid safetensors file"):
        check_tensor_file(f, None, what="weights")
    f.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        pio.load_tensors(f)


def test_a_failed_rename_in_the_journaled_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_SWAP", "rename")
    out = _folder(tmp_path / "out", "old")
    real, calls = os.rename, []

    def second_fails(a, b):
        calls.append(Path(b).name)
        if len(calls) == 2:  # out -> old worked, new -> out fails
            raise OSError(5, "I/O error")
        real(a, b)

    monkeypatch.setattr(pio.os, "rename", second_fails)
    with pytest.raises(OSError, match="I/O error"):
        with atomic_dir(out, overwrite=True) as tmp:
            for f in FILES:
                (tmp / f).write_text("new")
    assert calls[:2] == [calls[0], "out"] and calls[0].startswith(".out.prunekit-old-")
    assert _state(out) == "old" and _leftovers(tmp_path) == []


def test_a_torn_journal_is_dropped_since_nothing_was_moved_yet(tmp_path):
    out = _folder(tmp_path / "out", "old")
    (tmp_path / ".out.prunekit-swap.json").write_text('{"format": "prunekit", "new": ".out.prun')
    recover(out)
    assert _state(out) == "old" and _leftovers(tmp_path) == []


def test_expected_sizes_for_check_out(tmp_path):
    net = torch.nn.Linear(3, 2)  # 6 + 2 float32
    assert pio.model_bytes(net) == 8 * 4
    _folder(tmp_path / "m", "abc")
    assert pio.folder_bytes(tmp_path / "m") == 9 and pio.folder_bytes(tmp_path / "m" / "a.txt") == 3


def test_publish_file_refuses_an_existing_target_and_remove_owned_skips_missing(tmp_path):
    from prunekit.io import OutputExistsError, publish_file, remove_owned, temp_file_beside

    out = tmp_path / "e.npy"
    out.write_bytes(b"user's")
    tmp = temp_file_beside(out, ".npy")
    tmp.write_bytes(b"new")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        publish_file(tmp, out)
    assert out.read_bytes() == b"user's" and not tmp.exists()  # the user's file is untouched, the temp gone
    tmp = temp_file_beside(out, ".npy")
    tmp.write_bytes(b"new")
    assert publish_file(tmp, out, overwrite=True).read_bytes() == b"new"
    assert remove_owned([out, tmp_path / "missing"]) == 1 and not out.exists()
