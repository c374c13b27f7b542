"""Start-up time of the ``prunekit`` command against importing torch, measured side by side.

Runs ``prunekit --help``, ``prunekit prune --help`` and ``python -c "import torch"`` as fresh processes,
interleaved (one of each per round, 5 rounds by default), and prints the median wall time of each and
the two ratios ``median(help) / median(import torch)``. Exits 1 if a ratio is above 0.3 (issue 10: every
``--help`` imports neither torch nor transformers).

Run:  .venv/bin/python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

LIMIT = 0.3
COMMANDS = {
    "prunekit --help": [sys.executable, "-m", "prunekit.cli", "--help"],
    "prunekit prune --help": [sys.executable, "-m", "prunekit.cli", "prune", "--help"],
    "import torch": [sys.executable, "-c", "import torch"],
}


def wall_seconds(cmd: list[str]) -> float:
    """Wall time of one run of ``cmd`` (its output discarded; a failure is an error)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def measure(runs: int) -> dict[str, float]:
    """Median seconds of each command over ``runs`` interleaved rounds (after one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for cmd in COMMANDS.values():  # warm the file cache once, not counted
        wall_seconds(cmd)
    for _ in range(runs):
        for name, cmd in COMMANDS.items():
            times[name].append(wall_seconds(cmd))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> int:
    """Print the medians and the ratios; return 1 if a ratio exceeds the limit."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    args = ap.parse_args()
    med = measure(args.runs)
    base = med["import torch"]
    for name, s in med.items():
        print(f"{name:<24} median {s * 1000:8.1f} ms over {args.runs} runs")
    worst = 0.0
    for name in ("prunekit --help", "prunekit prune --help"):
        ratio = med[name] / base
        worst = max(worst, ratio)
        print(f"{name} / import torch = {ratio:.3f} (limit {LIMIT})")
    return 1 if worst > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
