"""The method registry: unique names across kinds, aliases within a kind, clear errors, no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prunekit.registry import KINDS, METHODS, MethodRegistry


def _fresh() -> MethodRegistry:
    """A registry that loads no engine module, for tests that register throw-away methods."""
    return MethodRegistry(engines=())


def test_register_get_kind_names_config():
    reg = _fresh()

    class Cfg:
        """A config."""

        type_name = "config"

    @reg.register("alpha", kind="oneshot", config=Cfg, aliases=("a",))
    def alpha(model, config, data=None):
        return "alpha ran"

    @reg.register("beta", kind="calibrated", stats=("gram",), summary="Beta solver.")
    def beta(model, config, data=None):
        return "beta ran"

    assert reg.names() == ["alpha", "beta"] and reg.names("oneshot") == ["alpha"] and reg.names("training") == []
    assert reg.kind("alpha") == "oneshot" and reg.kind("a") == "oneshot"
    assert reg.config("alpha") is Cfg and Cfg.type_name == "alpha"  # a config's JSON type is its method's name
    assert reg.get("a").obj is alpha and reg.get("a", kind="oneshot").name == "alpha"
    e = reg.get("beta")
    assert (e.stats, e.summary, e.obj(None, None)) == (("gram",), "Beta solver.", "beta ran")
    assert reg.get("alpha").summary == "A config."  # summary defaults to the config's docstring
    assert reg.spellings("oneshot") == ["a", "alpha"] and "a" in reg and "gamma" not in reg


def test_duplicates_are_errors_across_kinds():
    reg = _fresh()
    reg.register("alpha", kind="oneshot", aliases=("old",))(lambda: None)
    with pytest.raises(ValueError, match="'alpha' is registered twice"):
        reg.register("alpha", kind="oneshot")(lambda: None)
    with pytest.raises(ValueError, match=r"'alpha' is registered twice \(oneshot and training\)"):
        reg.register("alpha", kind="training")(lambda: None)
    with pytest.raises(ValueError, match="alias 'old' of 'beta' is already taken"):
        reg.register("beta", kind="oneshot", aliases=("old",))(lambda: None)
    with pytest.raises(ValueError, match="'old' is already an alias"):
        reg.register("old", kind="oneshot")(lambda: None)
    reg.register("gamma", kind="training", aliases=("old",))(lambda: None)  # another kind may reuse a spelling
    assert reg.get("old", kind="training").name == "gamma" and reg.get("old", kind="oneshot").name == "alpha"
    with pytest.raises(ValueError, match="'old' is ambiguous.*alpha \\(oneshot\\).*gamma \\(training\\)"):
        reg.get("old")


def test_bad_registrations_and_unknown_names_list_the_accepted_ones():
    reg = _fresh()
    reg.register("alpha", kind="data-score", aliases=("a",))(lambda: None)
    reg.register("beta", kind="oneshot")(lambda: None)
    with pytest.raises(ValueError, match="unknown data score 'z'; accepted: a, alpha$"):
        reg.get("z", kind="data-score")
    with pytest.raises(ValueError, match="unknown method 'z'; accepted: alpha, beta$"):
        reg.get("z")
    with pytest.raises(ValueError, match="unknown method kind 'pruning'; accepted: oneshot, calibrated"):
        reg.register("x", kind="pruning")
    with pytest.raises(ValueError, match="unknown statistics \\['hessian'\\].*accepted: gram, input_norms"):
        reg.register("x", kind="calibrated", stats=("hessian",))
    with pytest.raises(ValueError, match="tuples of strings"):
        reg.register("x", kind="oneshot", aliases="y")


def test_view_keeps_the_old_table_surface():
    reg = _fresh()
    view = reg.view("data-selector")
    view.register("keep-all", aliases=("all",))(lambda scores, keep_fraction: "kept")
    assert view.get("all")(None, 1.0) == "kept" and view.names() == ["all", "keep-all"] and "all" in view
    assert view.entry("keep-all").kind == "data-selector"


def test_the_project_registry_covers_every_kind_and_keeps_old_spellings():
    for kind in KINDS:
        assert METHODS.names(kind), kind
    old = {"calibrated_magnitude": "calibrated-magnitude", "gradual_magnitude": "gradual",
           "gradual_movement": "movement", "magnitude_init": "magnitude-init"}
    assert all(METHODS.get(o).name == n for o, n in old.items())
    assert METHODS.get("snip").kind == "oneshot" and METHODS.get("snip", kind="training").name == "snip-init"
    assert METHODS.get("magnitude", kind="calibrated").name == "calibrated-magnitude"
    assert METHODS.get("random", kind="data-selector").name == "random-subset"
    assert METHODS.get("sparsegpt").stats == ("gram",) and METHODS.get("wanda").stats == ("input_norms",)
    assert METHODS.get("calibrated-magnitude").stats == ()
    assert all(e.summary for e in METHODS.entries()), [e.name for e in METHODS.entries() if not e.summary]


def test_old_json_types_still_load():
    from prunekit.calibrate import CalibratedMagnitude
    from prunekit.config import CONFIGS, Config

    cfg = Config.from_dict({"type": "calibrated_magnitude", "sparsity": 0.5})
    assert isinstance(cfg, CalibratedMagnitude) and cfg.to_dict()["type"] == "calibrated-magnitude"
    assert CONFIGS.get("calibrated_magnitude") is CalibratedMagnitude and "magnitude" in CONFIGS
    with pytest.raises(ValueError, match="unknown method config 'rigl'"):  # a callback, not a JSON config
        Config.from_dict({"type": "rigl"})


def test_registry_module_imports_no_torch():
    """registry.py alone (the file, without the package __init__) imports neither torch nor an engine."""
    path = Path(__file__).parents[1] / "src" / "prunekit" / "registry.py"
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('registry_alone', {str(path)!r})\n"
            "mod = importlib.util.module_from_spec(spec); sys.modules['registry_alone'] = mod\n"
            "spec.loader.exec_module(mod)\n"
            "mod.MethodRegistry(engines=()).names()\n"
            "bad = [m for m in ('torch', 'prunekit') if m in sys.modules]\n"
            "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_importing_prunekit_registry_imports_no_torch():
    """Through the package: holds once ``prunekit/__init__.py`` is lazy (the CLI's fast ``--help`` needs it)."""
    pkg = subprocess.run([sys.executable, "-c", "import sys, prunekit; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert pkg.returncode == 0, pkg.stderr
    if pkg.stdout.strip() == "True":
        pytest.skip("prunekit/__init__.py still imports torch eagerly; registry.py alone is checked above")
    code = "import sys, prunekit.registry; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", (res.stdout, res.stderr)


def test_prune_applies_only_one_shot_and_calibrated_methods(tiny_net):
    import prunekit as pk
    from prunekit.structured import Structured

    with pytest.raises(ValueError, match="'structured' is a structured method, not one prune_ applies; accepted: "
                                         "grasp, magnitude"):
        pk.prune_(tiny_net, Structured(sparsity=0.5))
    assert pk.prune_(tiny_net, pk.Magnitude(0.5)).sparsity == pytest.approx(0.5, abs=1e-3)


def test_get_within_a_kind_needs_no_other_engine():
    reg = MethodRegistry(engines=("prunekit_no_such_engine",))  # loading the engines would raise ImportError
    reg.register("sgpt_x", kind="calibrated", aliases=("sgpt-old",))(lambda: None)
    assert reg.get("sgpt_x", kind="calibrated").name == "sgpt_x"
    assert reg.get("sgpt-old", kind="calibrated").name == "sgpt_x"
    with pytest.raises(ModuleNotFoundError):
        reg.get("sgpt_x", kind="oneshot")  # not there: the full lookup, which loads every engine
    with pytest.raises(ModuleNotFoundError):
        reg.get("sgpt_x")  # no kind: the full lookup too


def test_cli_resolves_a_calibrated_method_of_a_hf_folder_without_the_other_engines(tmp_path):
    code = ("import sys; from prunekit.cli.prune import path_of; print(path_of(sys.argv[1], 'wanda', False), "
            "path_of(sys.argv[1], 'calibrated-magnitude', False), "
            "[m for m in ('prunekit.oneshot', 'prunekit.structured.api', 'prunekit.training.methods') "
            "if m in sys.modules])")
    (tmp_path / "config.json").write_text("{}")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "('calibrated', 'wanda') ('calibrated', 'calibrated-magnitude') []"
