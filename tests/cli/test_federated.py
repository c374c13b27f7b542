"""``prunekit federated run`` (local engine, tiny) and ``prunekit sparse train --method edge-popup|jackpot``."""

import json

import pytest
from typer.testing import CliRunner

from prunekit.bench.store import ResultsStore
from prunekit.cli import app
from prunekit.training.supermask import load_supermask

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("small_data")


def test_federated_run_writes_metrics_and_store_rows(tmp_path):
    out = tmp_path / "fed"
    res = runner.invoke(app, ["federated", "run", "--dataset", "mnist1d", "--clients", "3", "--alpha", "0.5",
                              "--rounds", "2", "--method", "hidenseek", "--sparsity", "0.9", "--seed", "0",
                              "--engine", "local", "--out", str(out)])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    for k in ("accuracy", "global_accuracy", "uplink_bytes", "downlink_bytes", "rounds", "wall_s"):
        assert k in m, k
    assert m["rounds"] == 2 and 0.0 <= m["accuracy"] <= 1.0
    assert m["uplink_bytes"] == sum(r["uplink_bytes"] for r in m["per_round"])
    with ResultsStore(out / "prunekit-results.sqlite", readonly=True) as store:
        runs = store.runs()
    assert sorted(r["config"]["round"] for r in runs) == [1, 2]
    assert runs[0]["kind"] == "federated" and runs[0]["config"]["method"] == "hidenseek s=0.9"
    rep = runner.invoke(app, ["report", "--db", str(out / "prunekit-results.sqlite"), "--out", str(tmp_path / "r"),
                              "--x", "round"])
    assert rep.exit_code == 0, rep.output
    assert list((tmp_path / "r").glob("accuracy_vs_round_*.png"))
    rep = runner.invoke(app, ["report", "--db", str(out / "prunekit-results.sqlite"), "--out", str(tmp_path / "r2"),
                              "--x", "uplink_bytes_cum"])
    assert rep.exit_code == 0 and list((tmp_path / "r2").glob("accuracy_vs_uplink_bytes_cum_*.png"))


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "0"], "--alpha"),
    (["--sparsity", "1.5"], "--sparsity"),
    (["--sparsity", "0"], "--sparsity in (0, 1)"),
    (["--clients", "5000"], "more than the examples per class allow"),
    (["--pai", "none"], "pruning-at-initialization mask"),
    (["--method", "fedprox"], "--method must be one of"),
    (["--method", "fedavg"], "does not apply to --method fedavg"),
    (["--vote-rate", "0"], "--vote-rate must be a number in (0, 1]"),
    (["--vote-rate", "1.5"], "--vote-rate must be a number in (0, 1]"),
])
def test_federated_bad_input_before_any_client(tmp_path, flags, message):
    base = {"--method": "hidenseek", "--sparsity": "0.9"}
    for i in range(0, len(flags), 2):
        base[flags[i]] = flags[i + 1]
    args = [x for kv in base.items() for x in kv]
    res = runner.invoke(app, ["federated", "run", "--rounds", "1", "--engine", "local", "--out", str(tmp_path / "o"),
                              *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (tmp_path / "o").exists()


def test_sparse_train_edge_popup_saves_bits_and_dense_export(tmp_path):
    res = runner.invoke(app, ["sparse", "train", "mlp", "--method", "edge-popup", "--sparsity", "0.5", "--epochs", "1",
                              "--out", str(tmp_path / "ep")])
    assert res.exit_code == 0, res.output
    st = load_supermask(tmp_path / "ep" / "supermask")
    assert st.mode == "edge-popup" and not st.signs
    kept = sum(int(m.sum()) for m in st.masks.values())
    assert kept == round(0.5 * sum(m.numel() for m in st.masks.values()))
    from prunekit.checkpoint import load_checkpoint

    net, _, _ = load_checkpoint(tmp_path / "ep")
    assert all((v == st.export()[k]).all() for k, v in net.state_dict().items())


def test_sparse_train_jackpot_needs_a_trained_model(tmp_path):
    res = runner.invoke(app, ["train", "mlp", "--method", "jackpot", "--sparsity", "0.5", "--out", str(tmp_path / "j")])
    assert res.exit_code == 2 and "--init" in res.output
