"""Graph-building time on the largest timm graphs (issue 12 item 4), beside a plain forward, one thread.

    PYTHONPATH=src .bench-env/bin/python benchmarks/structured_graph_time.py

Needs the benchmark venv of ``structured_timm.py`` (timm; torchvision's meta registrations replaced by an
empty module, as there). Prints, per model and repetition, the forward time, ``build_graph``'s time and
whether ``torch._dynamo`` is loaded (timm's own import loads it; prunekit's tracer does not, see
``tests/structured/test_blockers.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
import types


def main() -> None:
    """Time a forward and ``build_graph`` for each model, twice, interleaved."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="nasnetalarge,pnasnet5large")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import timm
    import torch

    from prunekit.structured import build_graph

    torch.set_num_threads(1)
    for name in args.models.split(","):
        model = timm.create_model(name, pretrained=False).eval()
        x = torch.randn(1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))
        for rep in range(args.repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                model(x)
            fwd = time.perf_counter() - t0
            t0 = time.perf_counter()
            build_graph(model, x)
            graph = time.perf_counter() - t0
            print(f"{name} rep {rep}: forward {fwd:.2f} s, build_graph {graph:.2f} s, "
                  f"torch._dynamo loaded: {'torch._dynamo' in sys.modules}", flush=True)


if __name__ == "__main__":
    main()
