"""Run a federated method on Flower's simulation engine (``flwr.simulation``, Ray-backed virtual clients).

The server side is a Flower ``Strategy`` around a ``methods.Server``; every client is a Flower ``Client``
that trains on its own Dirichlet split. Sampling is seeded: the strategy picks the partitions of each
round with its own generator and tells each virtual client which partition it plays. Bytes up and down
are the lengths of the ``Parameters.tensors`` buffers really sent; accuracy is measured every round on
each client's own test split (a Flower evaluate round over all clients) and on the global test set.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import MODEL_KWARGS, FedConfig
from .data import client_splits
from .methods import SERVERS, FedSpec, Server, client_accuracy, client_update

log = logging.getLogger(__name__)
TENSOR_TYPE = "prunekit-raw"


@dataclass
class FedResult:
    """Per-round rows and totals of one simulation (the keys of ``metrics.json``)."""

    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    initial_global_accuracy: float = float("nan")
    wall_s: float = 0.0
    engine: str = ""

    def metrics(self) -> dict[str, Any]:
        """Final mean client accuracy (a fraction), global accuracy, byte totals, rounds, wall time."""
        last = self.rounds[-1] if self.rounds else {}
        return {"accuracy": last.get("accuracy"), "accuracy_std": last.get("accuracy_std"),
                "global_accuracy": last.get("global_accuracy"),
                "uplink_bytes": sum(r["uplink_bytes"] for r in self.rounds),
                "downlink_bytes": sum(r["downlink_bytes"] for r in self.rounds),
                "eval_downlink_bytes": sum(r["eval_downlink_bytes"] for r in self.rounds),
                "client_compute_s": sum(r["compute_s_sum"] for r in self.rounds),
                "rounds": len(self.rounds), "wall_s": self.wall_s,
                "initial_global_accuracy": self.initial_global_accuracy, "engine": self.engine,
                "per_round": self.rounds, "config": self.config}


def make_spec(cfg: FedConfig) -> tuple[FedSpec, tuple[torch.Tensor, torch.Tensor]]:
    """Split the data set among the clients (checked first) -> the client spec and the global test set."""
    from ..zoo import get_dataset

    data = get_dataset(cfg.dataset, **({"flat": True} if cfg.dataset == "digits" else {}))
    x, y = data.train
    splits = client_splits(y, cfg.clients, float(cfg.alpha), cfg.seed)
    kwargs = {**MODEL_KWARGS[cfg.dataset], "hidden": list(cfg.hidden), "num_classes": int(data.num_classes)}
    spec = FedSpec(cfg.method, cfg.model, kwargs, float(cfg.sparsity or 0.0), cfg.seed, x, y, splits, cfg.rounds,
                   cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.pai, cfg.prune_round,
                   vote_rate=float(cfg.vote_rate))
    return spec, data.test


ENGINES = ("flwr", "local")


def run_federated(cfg: FedConfig, *, engine: str = "flwr", keep_ray: bool = False) -> FedResult:
    """Simulate ``cfg`` on Flower's Ray-backed simulation engine; ``keep_ray`` leaves Ray up for the next run.

    ``engine="local"`` runs the same server and client code round by round in this process, without Flower
    (for sweeps on a small machine, where each Flower simulation spends about a minute starting Ray workers);
    the test suite checks that both engines give the same rows."""
    cfg.validate()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    spec, test = make_spec(cfg)
    if engine == "local":
        t0 = time.perf_counter()
        result = FedResult(cfg.to_dict(), engine="local (same code, one process, no Flower)")
        _run_local(cfg, spec, SERVERS[cfg.method](spec), test, result)
        result.wall_s = time.perf_counter() - t0
        return result
    try:
        import flwr
        from flwr.simulation import start_simulation
    except ImportError as e:  # the extra is missing
        raise ImportError("federated runs need Flower's simulation engine: "
                          f"pip install 'prunekit[federated]' ({e})") from e
    t0 = time.perf_counter()
    server = SERVERS[cfg.method](spec)  # a PaI or mask error here is raised before any client starts
    result = FedResult(cfg.to_dict(), engine=f"flwr {flwr.__version__} simulation (ray)")
    strategy = _strategy(cfg, server, test, result)
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.WARNING)
    try:
        start_simulation(client_fn=_client_fn(spec), num_clients=cfg.clients,
                         config=flwr.server.ServerConfig(num_rounds=cfg.rounds), strategy=strategy,
                         client_resources={"num_cpus": 1},
                         ray_init_args={"num_cpus": cfg.cpus, "include_dashboard": False, "log_to_driver": False,
                                        "ignore_reinit_error": True}, keep_initialised=keep_ray)
    finally:
        flwr_log.setLevel(level)
    if len(result.rounds) != cfg.rounds:
        raise RuntimeError(f"the simulation ran {len(result.rounds)} of {cfg.rounds} rounds; see the log above")
    result.wall_s = time.perf_counter() - t0
    return result


def _client_fn(spec: FedSpec) -> Any:
    from flwr.client import Client
    from flwr.common import Code, EvaluateRes, FitRes, Parameters, Status

    class FedClient(Client):
        """A virtual client: trains on the partition the server names, replies with its payload."""

        def fit(self, ins: Any) -> Any:
            r = client_update(spec, ins.parameters.tensors, int(ins.config["partition"]), int(ins.config["round"]))
            return FitRes(Status(Code.OK, ""), Parameters(tensors=r.payload, tensor_type=TENSOR_TYPE), r.examples,
                          {"compute_s": r.compute_s, "partition": int(ins.config["partition"])})

        def evaluate(self, ins: Any) -> Any:
            acc, n = client_accuracy(spec, ins.parameters.tensors, int(ins.config["partition"]))
            return EvaluateRes(Status(Code.OK, ""), 1.0 - acc, n,
                               {"accuracy": acc, "partition": int(ins.config["partition"])})

    def client_fn(context: Any) -> Any:
        torch.set_num_threads(1)
        return FedClient()

    return client_fn


def _strategy(cfg: FedConfig, server: Server, test: tuple[torch.Tensor, torch.Tensor], result: FedResult) -> Any:
    from flwr.common import EvaluateIns, FitIns, Parameters
    from flwr.server.strategy import Strategy

    from .payload import payload_bytes

    gen = torch.Generator().manual_seed(cfg.seed)
    t_start = time.perf_counter()

    class FedStrategy(Strategy):
        """Seeded sampling, byte accounting and per-round records around one ``methods.Server``."""

        def initialize_parameters(self, client_manager: Any) -> Any:
            return Parameters(tensors=server.downlink(), tensor_type=TENSOR_TYPE)

        def _proxies(self, client_manager: Any, n: int) -> list[Any]:
            client_manager.wait_for(n)
            proxies = list(client_manager.all().values())
            if len(proxies) < n:
                raise RuntimeError(f"only {len(proxies)} of {n} virtual clients are up")
            return proxies[:n]

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list:
            parts = torch.randperm(cfg.clients, generator=gen)[:cfg.sampled].sort().values.tolist()
            down = server.downlink()
            self.row = {"round": server_round, "clients": len(parts), "partitions": parts,
                        "downlink_bytes": payload_bytes(down) * len(parts)}
            return [(proxy, FitIns(Parameters(tensors=down, tensor_type=TENSOR_TYPE),
                                   {"partition": p, "round": server_round}))
                    for proxy, p in zip(self._proxies(client_manager, len(parts)), parts)]

        def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
            if failures:
                raise RuntimeError(f"{len(failures)} client(s) failed in round {server_round}: {failures[0]!r}")
            results = sorted(results, key=lambda r: int(r[1].metrics["partition"]))  # arrival order never matters
            ups = [(list(res.parameters.tensors), int(res.num_examples)) for _, res in results]
            _aggregate(server, server_round, self.row, ups, [float(res.metrics["compute_s"]) for _, res in results])
            return Parameters(tensors=server.downlink(), tensor_type=TENSOR_TYPE), {}

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> list:
            down = server.downlink()
            self.row["eval_downlink_bytes"] = payload_bytes(down) * cfg.clients
            return [(proxy, EvaluateIns(Parameters(tensors=down, tensor_type=TENSOR_TYPE),
                                        {"partition": p, "round": server_round}))
                    for p, proxy in enumerate(self._proxies(client_manager, cfg.clients))]

        def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple:
            if failures:
                raise RuntimeError(f"{len(failures)} client evaluation(s) failed in round {server_round}: "
                                   f"{failures[0]!r}")
            results = sorted(results, key=lambda r: int(r[1].metrics["partition"]))
            _finish_round(result, self.row, [float(res.metrics["accuracy"]) for _, res in results], t_start)
            return 1.0 - self.row["accuracy"], {}

        def evaluate(self, server_round: int, parameters: Any) -> tuple | None:
            acc = _global_eval(server, test, result, server_round, getattr(self, "row", {}))
            return 1.0 - acc, {"accuracy": acc}

    return FedStrategy()


def _aggregate(server: Server, server_round: int, row: dict[str, Any], ups: list[tuple[list[bytes], int]],
               times: list[float]) -> None:
    from .payload import payload_bytes

    row.update({"uplink_bytes": sum(payload_bytes(p) for p, _ in ups), "compute_s_mean": statistics.fmean(times),
                "compute_s_max": max(times), "compute_s_sum": sum(times)})
    server.aggregate(ups)
    server.end_round(server_round)


def _global_eval(server: Server, test: tuple[torch.Tensor, torch.Tensor], result: FedResult, server_round: int,
                 row: dict[str, Any]) -> float:
    from ..training.loop import evaluate

    net = server.global_model()
    acc = evaluate(net, test)["accuracy"]
    if server_round == 0:
        result.initial_global_accuracy = acc
    else:
        row["global_accuracy"] = acc
        row["global_sparsity"] = _sparsity(net, server)
    return acc


def _finish_round(result: FedResult, row: dict[str, Any], accs: list[float], t_start: float) -> None:
    row.update({"accuracy": statistics.fmean(accs), "accuracy_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                "accuracy_min": min(accs), "accuracy_max": max(accs)})
    row["uplink_bytes_cum"] = sum(r["uplink_bytes"] for r in result.rounds) + row["uplink_bytes"]
    row["downlink_bytes_cum"] = sum(r["downlink_bytes"] for r in result.rounds) + row["downlink_bytes"]
    row["wall_s"] = time.perf_counter() - t_start
    result.rounds.append(row)
    log.info("round %d: %s", row["round"], {k: v for k, v in row.items() if k != "partitions"})


def _run_local(cfg: FedConfig, spec: FedSpec, server: Server, test: tuple[torch.Tensor, torch.Tensor],
               result: FedResult) -> None:
    """The same rounds in one process without Flower: same sampling, payloads, aggregation and evaluation."""
    from .payload import payload_bytes

    gen = torch.Generator().manual_seed(cfg.seed)
    t_start = time.perf_counter()
    _global_eval(server, test, result, 0, {})
    for r in range(1, cfg.rounds + 1):
        parts = torch.randperm(cfg.clients, generator=gen)[:cfg.sampled].sort().values.tolist()
        down = server.downlink()
        row: dict[str, Any] = {"round": r, "clients": len(parts), "partitions": parts,
                               "downlink_bytes": payload_bytes(down) * len(parts)}
        replies = [client_update(spec, down, p, r) for p in parts]
        _aggregate(server, r, row, [(c.payload, c.examples) for c in replies], [c.compute_s for c in replies])
        _global_eval(server, test, result, r, row)
        down = server.downlink()
        row["eval_downlink_bytes"] = payload_bytes(down) * cfg.clients
        _finish_round(result, row, [client_accuracy(spec, down, p)[0] for p in range(cfg.clients)], t_start)


def _sparsity(net: Any, server: Server) -> float:
    params = dict(net.named_parameters())
    total = sum(params[n].numel() for n in server.wnames)
    zeros = sum(int((params[n] == 0).sum()) for n in server.wnames)
    return zeros / total if total else math.nan
