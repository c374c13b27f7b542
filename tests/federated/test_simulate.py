"""A 2-client, 2-round simulation on Flower's engine; the local engine gives the same rows."""

import pytest

from prunekit.federated import FedConfig
from prunekit.federated.simulate import run_federated

pytest.importorskip("flwr")


def test_flower_two_clients_two_rounds_matches_local():
    cfg = FedConfig(dataset="digits", clients=2, alpha=1.0, rounds=2, method="hidenseek", sparsity=0.9, seed=0,
                    hidden=(32,), cpus=2)
    fl = run_federated(cfg).metrics()
    lo = run_federated(cfg, engine="local").metrics()
    assert fl["rounds"] == lo["rounds"] == 2
    assert fl["engine"].startswith("flwr")
    keys = ("accuracy", "accuracy_std", "global_accuracy", "uplink_bytes", "downlink_bytes", "eval_downlink_bytes")
    for a, b in zip(fl["per_round"], lo["per_round"]):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
        assert a["partitions"] == b["partitions"] == [0, 1]
    # 64 -> 32 -> 10 weights: 2048 + 320; kept 10%; up: one bit per kept weight per client
    kept = round(0.1 * (2048 + 320))
    assert fl["per_round"][0]["uplink_bytes"] >= 2 * (kept // 8)
    assert fl["per_round"][0]["uplink_bytes"] <= 2 * (kept // 8 + 2)
    assert fl["per_round"][0]["downlink_bytes"] == 2 * ((2048 + 7) // 8 + (320 + 7) // 8 + kept)
    assert 0.0 <= fl["accuracy"] <= 1.0 and fl["wall_s"] > 0
