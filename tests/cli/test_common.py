"""The shared vocabulary: one help text per flag, checks before any work, no torch for --help, error wrapping."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from prunekit.cli import app
from prunekit.cli import common as c

runner = CliRunner()


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _commands(sub, (*path, name))


ALL = list(_commands(typer.main.get_command(app)))


def test_help_imports_neither_torch_nor_transformers():
    code = ("import sys; from typer.testing import CliRunner; from prunekit.cli import app; r = CliRunner(); "
            f"paths = {[list(p) for p, _ in ALL]!r}; "
            "codes = [r.invoke(app, [*p, '--help']).exit_code for p in paths]; "
            "print(set(codes), 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split()
    assert out == ["{0}", "False", "False"]
    assert len(ALL) > 20  # every command and group was asked


def test_console_script_help_runs_without_torch():
    code = "import sys; sys.argv = ['prunekit', 'prune', '--help']; import prunekit.cli as m\ntry:\n    m.main()\n" \
           "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.stdout.strip().splitlines()[-1] == "0 False" and "--structured" in r.stdout


@pytest.mark.parametrize("flag", ["--scope", "--exclude", "--model-arg", "--sparsity", "--pattern", "--out",
                                  "--overwrite", "--db", "--keep", "--backend", "--seed", "--threads", "--dataset"])
def test_each_shared_flag_has_one_help_text(flag):
    helps = {p: o.help for p, cmd in ALL for o in getattr(cmd, "params", []) if flag in getattr(o, "opts", [])}
    assert helps, flag
    if flag not in ("--out", "--db", "--dataset"):  # report reads --db; score/demo/bench describe their --out
        assert len(set(helps.values())) == 1, helps
    if flag == "--scope":
        assert {("prune",), ("train",), ("sparse", "lottery")} <= set(helps)
        defaults = {o.default for _, cmd in ALL for o in getattr(cmd, "params", []) if "--scope" in o.opts}
        assert defaults == {"layer"}


@pytest.mark.parametrize("args,flag", [
    (["prune", "mlp", "--pattern", "2:4", "--sparsity", "0.5"], "--sparsity"),
    (["train", "cnn1d", "--method", "srste", "--pattern", "2:4", "--sparsity", "0.5"], "--sparsity"),
    (["prune", "mlp", "--scope", "row", "--sparsity", "0.5"], "--scope"),
    (["prune", "mlp", "--pattern", "3x3", "--sparsity", "0.5"], "--pattern"),
    (["prune", "mlp", "--sparsity", "0.5", "--model-arg", "hidden"], "--model-arg"),
    (["prune", "mlp", "--sparsity", "0.5", "--threads", "0"], "--threads"),
    (["prune", "mlp", "--sparsity", "0.5", "--owl"], "--owl"),
    (["prune", "mlp", "--sparsity", "0.5", "--target-macs", "0.5"], "--target-macs"),
    (["prune", "mlp", "--method", "rigl", "--sparsity", "0.5"], "prunekit train"),
    (["prune", "mlp", "--method", "nope", "--sparsity", "0.5"], "--method"),
    (["data", "select", "--scores", "s.npy", "--keep", "2"], "--keep"),
    (["data", "resample", "--method", "rs2", "--num-examples", "10", "--keep", "2"], "--keep"),
    (["data", "dedup", "--embeddings", "e.npy", "--rule", "nearest"], "--rule"),
    (["data", "score", "--method", "grand", "--backend", "spark"], "--backend"),
])
def test_bad_shared_values_exit_2_naming_the_flag_before_any_work(tmp_path, args, flag):
    out = tmp_path / "never"
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert flag in r.output and "Traceback" not in r.output
    assert not out.exists() and not out.with_suffix(".npy").exists()


def test_scope_and_rule_errors_list_the_accepted_values(tmp_path):
    r = runner.invoke(app, ["prune", "mlp", "--scope", "row", "--out", str(tmp_path / "o")])
    assert "layer, global" in r.output
    r = runner.invoke(app, ["data", "dedup", "--embeddings", "e.npy", "--rule", "x", "--out", str(tmp_path / "o")])
    assert "farthest, closest, random" in r.output


@pytest.mark.parametrize("args", [
    ["train", "cnn1d", "--epochs", "1"],
    ["sparse", "train", "cnn1d", "--method", "rigl", "--sparsity", "0.5", "--epochs", "1"],
    ["prune", "mlp", "--sparsity", "0.5"],
    ["prune", "mlp", "--structured", "--target-params", "0.5"],
])
def test_non_empty_out_is_refused_and_the_users_file_survives(tmp_path, args):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    r = runner.invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output and str(out) in r.output
    assert [p.name for p in out.iterdir()] == ["thesis.txt"] and (out / "thesis.txt").read_text() == "years of work"


def test_overwrite_never_accepts_an_input(tmp_path, small_data):
    ck = tmp_path / "ck"
    assert runner.invoke(app, ["prune", "mlp", "--sparsity", "0.5", "--out", str(ck)]).exit_code == 0
    before = sorted((p.name, p.stat().st_size) for p in ck.iterdir())
    for out in (ck, ck / "inner"):
        r = runner.invoke(app, ["prune", str(ck), "--sparsity", "0.8", "--out", str(out), "--overwrite"])
        assert r.exit_code == 2 and "input" in r.output
    assert sorted((p.name, p.stat().st_size) for p in ck.iterdir()) == before


def test_nm_on_cnn1d_from_the_shell(tmp_path, signals_npz):
    """2:4 on the zoo's cnn1d: its first conv has one input channel, so it stays dense by --exclude."""
    out = tmp_path / "nm"
    cmd = [sys.executable, "-m", "prunekit.cli", "prune", "cnn1d", "--pattern", "2:4", "--exclude", "convs.0",
           "--model-arg", "channels=32", "--dataset", str(signals_npz), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    assert "sparsity (pruned weights) 0.5000" in r.stdout
    from prunekit.checkpoint import load_checkpoint

    model, manifest, masks = load_checkpoint(out)
    assert "convs.0.weight" not in masks and manifest["model"]["kwargs"] == {"channels": 32}
    w = model.convs[1].weight.detach().permute(0, 2, 1)  # (out, k, in): 2 of every 4 input channels kept
    assert ((w.reshape(32, -1, 4) != 0).sum(-1) <= 2).all() and (w == 0).float().mean() >= 0.5
    no_exclude = subprocess.run(cmd[:5] + cmd[7:], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert no_exclude.returncode == 2 and "error:" in no_exclude.stderr and "Traceback" not in no_exclude.stderr


def test_method_kind_asks_the_registries():
    assert c.method_kind("magnitude") == "oneshot" and c.method_kind("sparsegpt") == "calibrated"
    assert c.method_kind("calibrated-magnitude") == "calibrated" and c.method_kind("rigl") == "training"
    assert c.method_kind("fpgm") == "structured" and c.method_kind("taylor", kinds=("structured",)) == "structured"
    with pytest.raises(ValueError, match="accepted: oneshot: .*magnitude"):
        c.method_kind("obs")
    table = c.method_table()
    assert "el2n" in table["data-score"] and "keep-hard" in table["data-selector"]


def test_methods_lists_every_kind():
    r = runner.invoke(app, ["methods"])
    assert r.exit_code == 0
    lines = dict(line.split(": ", 1) for line in r.output.splitlines())
    assert {"oneshot", "calibrated", "training", "structured", "data-score", "data-selector"} <= set(lines)
    assert "rigl" in lines["training"] and "wanda" in lines["calibrated"]


def test_guard_turns_errors_into_one_line(monkeypatch, capsys):
    def boom(kind):
        raise {"value": ValueError("bad --thing"), "runtime": RuntimeError("engine broke")}[kind]

    wrapped = c.guard(boom)
    for kind, code, text in (("value", 2, "error: bad --thing"),
                             ("runtime", 1, "error: RuntimeError: engine broke (set PRUNEKIT_DEBUG=1 for the "
                                            "traceback)")):
        with pytest.raises(typer.Exit) as e:
            wrapped(kind)
        assert e.value.exit_code == code and capsys.readouterr().err == text + "\n"
    monkeypatch.setenv("PRUNEKIT_DEBUG", "1")
    with pytest.raises(RuntimeError):
        wrapped("runtime")


def test_check_out_refuses_what_would_lose_data(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    for out, kw in ((tmp_path / "file", {"overwrite": False}), (src, {"overwrite": True}),
                    (src / "sub", {"overwrite": True}), (tmp_path, {"overwrite": True})):
        with pytest.raises(ValueError):
            c.check_out(out, inputs=[src], **kw)
    assert c.check_out(tmp_path / "new", overwrite=False, inputs=[src]) == tmp_path / "new"


def test_model_args_and_sparsity_pattern_checks():
    assert c.model_args(["channels=32", "kernel_sizes=[5,3,3]", "act=relu"]) == \
        {"channels": 32, "kernel_sizes": [5, 3, 3], "act": "relu"}
    c.check_sparsity_pattern(None, "2:4")
    c.check_sparsity_pattern(0.5, "block:4x4")
    with pytest.raises(ValueError, match="--sparsity"):
        c.check_sparsity_pattern(None, "unstructured")
    assert c.excluded(["convs.0"]) == ["lm_head", "convs.0"] and c.excluded(None, defaults=False) == []


def test_import_prunekit_is_lazy_but_complete():
    code = ("import sys, prunekit; lazy = 'torch' not in sys.modules; "
            "cfg = prunekit.Config.from_dict({'type': 'wanda', 'sparsity': 0.5}); "
            "print(lazy, type(cfg).__name__, all(hasattr(prunekit, n) for n in prunekit.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.split()
    assert out == ["True", "Wanda", "True"]  # every method config is registered after the first public name
