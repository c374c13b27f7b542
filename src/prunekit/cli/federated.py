"""``prunekit federated run``: one federated simulation on Flower -> ``OUT/metrics.json`` and per-round store rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import common as c

federated_app = c.app_group("Federated pruning on Flower's simulation engine (extra 'federated').")
METHOD_HELP = "fedavg | fedavg-prune | fedtiny | binary-supermask | hidenseek"


def register(app: typer.Typer) -> None:
    """Add the ``federated`` group to ``app``."""
    c.command(federated_app, "run")(run)
    app.add_typer(federated_app, name="federated", help="Federated pruning on Flower's simulation engine.")


def run(
    out: c.Out,
    dataset: Annotated[str, typer.Option("--dataset", help="mnist1d | digits")] = "mnist1d",
    clients: Annotated[int, typer.Option("--clients", help="number of clients")] = 10,
    alpha: Annotated[float, typer.Option("--alpha", help="Dirichlet concentration over labels, > 0 (small: "
                                         "non-IID)")] = 0.5,
    rounds: Annotated[int, typer.Option("--rounds", help="communication rounds")] = 30,
    method: Annotated[str, typer.Option("--method", help=METHOD_HELP)] = "hidenseek",
    sparsity: c.Sparsity = None,
    seed: c.Seed = 0,
    fraction: Annotated[float, typer.Option("--fraction", help="clients sampled per round, in (0, 1]")] = 1.0,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="local epochs per round")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="local batch size")] = 16,
    lr: Annotated[float | None, typer.Option("--lr", help="local learning rate (default: 0.1 SGD for weights, "
                                             "0.01 Adam for supermask scores)")] = None,
    pai: Annotated[str, typer.Option("--pai", help="hidenseek's pruning at init: synflow | magnitude | random | "
                                     "none")] = "synflow",
    prune_round: Annotated[int | None, typer.Option("--prune-round", help="fedavg-prune prunes after this round; "
                                                    "fedtiny reaches --sparsity by it (default: rounds // 2)")] = None,
    vote_rate: Annotated[float, typer.Option("--vote-rate", help="binary-supermask / hidenseek servers: weight of "
                                             "this round's votes against the earlier rounds' (0, 1]; 1: no "
                                             "memory")] = 0.25,
    engine: Annotated[str, typer.Option("--engine", help="flwr (Flower's Ray simulation) | local (the same code "
                                        "in one process)")] = "flwr",
    cpus: Annotated[int, typer.Option("--cpus", help="CPUs Ray may use (one virtual client each)")] = 2,
    experiment: Annotated[str | None, typer.Option("--experiment", help="experiment name in the store (default: "
                                                   "federated-DATASET-alphaALPHA)")] = None,
    db: c.Db = None,
    overwrite: c.Overwrite = False,
) -> None:
    """Simulate federated training/pruning; write OUT/metrics.json and one results-store row per round."""
    c.check_out(out, overwrite=overwrite, inputs=[db] if db is not None else [])
    if engine not in ("flwr", "local"):
        raise ValueError(f"--engine must be one of 'flwr', 'local', got {engine!r}")
    from ..federated.config import FedConfig

    cfg = FedConfig(dataset=dataset, clients=clients, alpha=alpha, rounds=rounds, method=method, sparsity=sparsity,
                    seed=seed, fraction=fraction, local_epochs=local_epochs, batch_size=batch_size, lr=lr, pai=pai,
                    prune_round=prune_round, vote_rate=vote_rate, cpus=cpus).validate()
    from ..federated.simulate import make_spec

    make_spec(cfg)  # the client split is checked (clients vs examples per class) before any client starts
    from ..federated.simulate import run_federated

    result = run_federated(cfg, engine=engine)
    metrics = result.metrics()
    exp = experiment or f"federated-{dataset}-alpha{alpha:g}"
    _write(out, metrics, exp, overwrite, db)
    typer.echo(f"{method}: client accuracy {metrics['accuracy']:.4f} ± {metrics['accuracy_std']:.4f}, global "
               f"{metrics['global_accuracy']:.4f}; uplink {metrics['uplink_bytes']} B, downlink "
               f"{metrics['downlink_bytes']} B over {metrics['rounds']} rounds in {metrics['wall_s']:.1f} s; "
               f"written to {out}")


def store_records(metrics: dict[str, Any], experiment: str) -> list[Any]:
    """One results-store record per round: config (with the round), the round's metrics."""
    from ..bench.store import RunRecord

    cfg = dict(metrics["config"])
    label = cfg["method"] if cfg["method"] == "fedavg" else f"{cfg['method']} s={cfg['sparsity']:g}"
    out = []
    for row in metrics["per_round"]:
        config = {**cfg, "method": label, "fed_method": cfg["method"], "model": cfg["model"], "round": row["round"]}
        m = {k: v for k, v in row.items() if k not in ("partitions", "round")}
        out.append(RunRecord(experiment, config, kind="federated", metrics=m,
                             timings={"wall_s": float(row["wall_s"])}))
    return out


def _write(out: Path, metrics: dict[str, Any], experiment: str, overwrite: bool, db: Path | None) -> None:
    from ..bench.store import ResultsStore
    from ..io import atomic_dir, write_json

    records = store_records(metrics, experiment)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_json(tmp / "metrics.json", metrics)
        if db is None:
            with ResultsStore(tmp / c.RESULTS_FILE) as store:
                for rec in records:
                    store.add(rec)
    if db is not None:
        with ResultsStore(db) as store:
            for rec in records:
                store.add(rec, replace=overwrite)
