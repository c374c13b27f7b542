"""The engine on tiny random configs of nine architectures: every solver and pattern, exact sparsity,
shapes, save/reload in plain transformers, resume after an interruption, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit  # noqa: F401  (registers the methods)
from prunekit.calibrate import CalibratedMagnitude, SparseGPT, Wanda, prune_blocks
from prunekit.calibrate.blocks import find_blocks
from prunekit.calibrate.io import MANIFEST_FILE, load_masks, load_pruned, save_pruned
from prunekit.masks import masks_of
from prunekit.patterns import NM, mask_respects

from .conftest import ARCHS, outputs, tiny_model

CASES = [
    ("magnitude", CalibratedMagnitude(0.5)),
    ("magnitude", CalibratedMagnitude(pattern="2:4")),
    ("wanda", Wanda(0.5, batch_size=4)),
    ("wanda", Wanda(pattern="2:4")),
    ("sparsegpt", SparseGPT(0.5, blocksize=16)),
    ("sparsegpt", SparseGPT(pattern="2:4", blocksize=16)),
]


def _check_exact(model, report, pattern):
    for r in report.layers:
        assert r.target == 0.5
        assert round((1 - r.sparsity) * r.numel) == round(0.5 * r.numel), r.name
    for name, m in report.masks.masks.items():
        if isinstance(pattern, NM):
            conv1d = type(model.get_submodule(name.rsplit(".", 1)[0])).__name__ == "Conv1D"  # GPT-2: (in, out)
            assert mask_respects(m.t() if conv1d else m, pattern), name


@pytest.mark.parametrize("arch", ARCHS)
def test_every_solver_and_pattern(arch, calib_ids):
    ids = calib_ids
    ref = outputs(tiny_model(arch), ids)
    n_linear = None
    for solver, cfg in CASES:
        model = tiny_model(arch)
        report = prune_blocks(model, solver, cfg, ids)
        _check_exact(model, report, cfg.pattern)
        n_linear = n_linear or len(report.layers)
        assert len(report.layers) == n_linear > 0
        out = outputs(model, ids)
        assert out.shape == ref.shape and torch.isfinite(out).all()
        params = dict(model.named_parameters())
        for name, m in report.masks.masks.items():
            assert torch.all(params[name][~m] == 0), name
        if solver == "sparsegpt" and cfg.pattern == NM(2, 4):
            errs = [r.error for r in report.layers]
            assert all(e is not None and 0 <= e < 1.5 for e in errs)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_model_reloads_in_plain_transformers(arch, calib_ids, tmp_path):
    import transformers as T

    model = tiny_model(arch)
    report = prune_blocks(model, "wanda", Wanda(0.5), calib_ids)
    out_dir = save_pruned(model, tmp_path / "pruned", report.masks.masks, {"method": report.method})
    cfg = json.loads((out_dir / "config.json").read_text())
    assert not any("prunekit" in k or "sparsity" in k for k in cfg)  # no key other tools choke on
    cls = T.AutoModel if arch == "bert" else T.AutoModelForCausalLM
    plain = cls.from_pretrained(out_dir, local_files_only=True).eval()
    assert torch.equal(outputs(plain, calib_ids), outputs(model, calib_ids))
    masks, manifest = load_masks(out_dir)
    assert set(masks) == set(report.masks.masks)
    assert all(torch.equal(masks[k], report.masks.masks[k]) for k in masks)
    assert manifest["method"]["type"] == "wanda"
    assert (out_dir / MANIFEST_FILE).is_file()


def test_load_pruned_attaches_masks(calib_ids, tmp_path):
    model = tiny_model("llama")
    report = prune_blocks(model, "sparsegpt", SparseGPT(0.5, blocksize=16), calib_ids)
    d = save_pruned(model, tmp_path / "m", report.masks.masks, {"method": report.method})
    loaded, masks, _ = load_pruned(d)
    attached = masks_of(loaded)
    assert set(attached) == set(masks) and all(torch.equal(attached[k], masks[k]) for k in masks)


def test_resume_after_interruption_gives_the_same_result(calib_ids, tmp_path):
    cfg = SparseGPT(0.6, owl=True, dsnot=True, batch_size=3, blocksize=16)
    full = tiny_model("llama")
    prune_blocks(full, "sparsegpt", cfg, calib_ids)

    class Killed(Exception):
        pass

    def kill_after_block_0(i, info):
        if i == 0:
            raise Killed

    first = tiny_model("llama")
    with pytest.raises(Killed):
        prune_blocks(first, "sparsegpt", cfg, calib_ids, state_dir=tmp_path / "state", on_block_end=kill_after_block_0)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["next_block"] == 1
    seen = []
    resumed = tiny_model("llama")  # a new process would start from the dense model again
    report = prune_blocks(resumed, "sparsegpt", cfg, calib_ids, state_dir=tmp_path / "state",
                          on_block_end=lambda i, info: seen.append(i))
    assert seen == [1]  # block 0 was not redone
    assert len(report.layers) == 14
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n


def test_owl_allocation_meets_the_target(calib_ids):
    model = tiny_model("llama")
    report = prune_blocks(model, "wanda", Wanda(0.7, owl={"m": 3.0, "lam": 0.1}), calib_ids)
    assert report.sparsity == pytest.approx(0.7, abs=1e-3)
    targets = {r.target for r in report.layers}
    assert len(targets) > 1 and max(targets) <= 0.8 + 2e-3 and min(targets) >= 0.6 - 2e-3  # [S - lam, S + lam]
    assert all(abs(r.sparsity - r.target) < 1e-3 for r in report.layers)


def test_prune_via_the_public_verb(calib_ids):
    model = tiny_model("qwen2")
    report = prunekit.prune_(model, prunekit.calibrate.SparseGPT(sparsity=0.5, blocksize=16), data=calib_ids)
    assert report.sparsity == pytest.approx(0.5)
    report = prunekit.prune_(tiny_model("qwen2"), prunekit.calibrate.Wanda(sparsity=0.5), data=calib_ids)
    assert report.sparsity == pytest.approx(0.5)


def test_foundation_magnitude_runs_through_the_engine(calib_ids):
    model = tiny_model("mistral")
    report = prunekit.prune_(model, prunekit.Magnitude(0.5), data=calib_ids)
    assert report.sparsity == pytest.approx(0.5)
    assert all(r.error is None for r in report.layers)  # magnitude gathers no X^T X: no error unless asked
    asked = prunekit.prune_(tiny_model("mistral"), prunekit.calibrate.CalibratedMagnitude(0.5, error_report=True),
                            data=calib_ids)
    assert all(r.error is not None and r.error > 0 for r in asked.layers)  # the engine's per-layer error report
    with pytest.raises(ValueError, match="scope"):
        prunekit.prune_(tiny_model("mistral"), prunekit.Magnitude(0.5, scope="global"), data=calib_ids)


def test_packed_masks_without_attaching(calib_ids, tmp_path):
    from prunekit.calibrate.io import unpack_mask

    ref = tiny_model("llama")
    attached = prune_blocks(ref, "wanda", Wanda(0.5), calib_ids).masks.masks
    model = tiny_model("llama")
    report = prune_blocks(model, "wanda", Wanda(0.5), calib_ids, attach_masks=False)
    assert report.masks is None and not masks_of(model)
    packed = report.extra["packed_masks"]
    assert set(packed) == set(attached)
    for k, (bits, shape) in packed.items():
        assert bits.dtype == torch.uint8 and bits.numel() * 8 < attached[k].numel() + 8
        assert torch.equal(unpack_mask(bits, shape), attached[k])
    d = save_pruned(model, tmp_path / "p", packed, {"method": report.method})
    masks, man = load_masks(d)
    assert all(torch.equal(masks[k], attached[k]) for k in masks)
    assert all(abs(v["sparsity"] - 0.5) < 1e-9 for v in man["layers"].values())


def test_find_blocks_names_the_block_list():
    assert find_blocks(tiny_model("opt"))[0] == "model.decoder.layers"
    assert find_blocks(tiny_model("gpt2"))[0] == "transformer.h"
    assert find_blocks(tiny_model("bert"))[0] == "encoder.layer"


def test_bad_input_fails_before_any_work(calib_ids, tmp_path):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="maximum sequence length"):
        prune_blocks(model, "wanda", Wanda(0.5), torch.zeros(2, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        prune_blocks(model, "wanda", Wanda(0.5), torch.zeros(0, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        prune_blocks(model, "wanda", Wanda(0.5), [])
    with pytest.raises(ValueError, match="sparsity"):
        Wanda(1.0)
    with pytest.raises(ValueError, match="multiple of 3"):
        prune_blocks(tiny_model("opt"), "wanda", Wanda(pattern=NM(1, 3)), calib_ids)
    with pytest.raises(ValueError, match="solver"):
        prune_blocks(model, "obs", Wanda(0.5), calib_ids)
    with pytest.raises(ValueError, match="owl"):
        Wanda(pattern="2:4", owl=True)
    with pytest.raises(ValueError, match="calibration data"):
        prunekit.prune_(model, SparseGPT(0.5), data=None)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "state").exists()


def test_cholesky_failure_raises_and_leaves_no_state(calib_ids, tmp_path):
    from prunekit.calibrate import CholeskyError

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight.zero_()  # q/k/v see all-zero inputs: H == 0
        model.model.layers[0].input_layernorm.weight[0] = float("nan")
    with pytest.raises((CholeskyError, ValueError)):
        prune_blocks(model, "sparsegpt", SparseGPT(0.5, blocksize=16), calib_ids, state_dir=tmp_path / "s")
    assert not (tmp_path / "s" / "block_0.safetensors").exists()


def test_malloc_thresholds_are_pinned_on_glibc():
    import ctypes.util
    import sys

    from prunekit.calibrate.engine import pin_malloc_thresholds

    glibc = sys.platform == "linux" and (ctypes.util.find_library("c") or "").startswith("libc.so")
    assert pin_malloc_thresholds() is bool(glibc)


class _FakeLibc:
    """Records mallopt / malloc_trim calls as (name, args)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


def test_forward_passes_lift_the_solve_thresholds_and_restore_them(monkeypatch, calib_ids):
    from prunekit.calibrate import engine as E

    fake = _FakeLibc()
    monkeypatch.setattr(E, "_glibc", lambda: fake)
    with E.forward_allocations(True):
        inside = list(fake.calls)
    mmap, trim = E.M_MMAP_THRESHOLD, E.M_TRIM_THRESHOLD
    assert inside == [("mallopt", mmap, 32 * 1024**2), ("mallopt", trim, 1024**3)]
    assert fake.calls[2:] == [("malloc_trim", 0), ("mallopt", mmap, 128 * 1024), ("mallopt", trim, 128 * 1024)]
    fake.calls.clear()
    with pytest.raises(KeyError), E.forward_allocations(True):
        raise KeyError("x")  # restored on errors too
    assert fake.calls[-2:] == [("mallopt", mmap, 128 * 1024), ("mallopt", trim, 128 * 1024)]
    fake.calls.clear()
    with E.forward_allocations(False):
        pass
    assert fake.calls == []
    # a whole run: every forward phase ends pinned again; without pin_malloc nothing is touched
    model = tiny_model("llama")
    prune_blocks(model, "wanda", Wanda(0.5), calib_ids, pin_malloc=True)
    assert fake.calls[:2] == [("mallopt", mmap, 128 * 1024), ("mallopt", trim, 128 * 1024)]
    assert fake.calls[-2:] == [("mallopt", mmap, 128 * 1024), ("mallopt", trim, 128 * 1024)]
    n_blocks = len(model.model.layers)
    assert sum(c[0] == "malloc_trim" for c in fake.calls) == 1 + 2 * n_blocks  # capture, gather + re-run per block
    fake.calls.clear()
    prune_blocks(tiny_model("llama"), "wanda", Wanda(0.5), calib_ids, pin_malloc=False)
    assert fake.calls == []
