"""DSIR on mixed text pools built from local files: does it pick the target domain, with KL reduction?

    nice -n 10 .venv/bin/python benchmarks/data_dsir.py --out /tmp/datap_bench

Two pools, both offline and deterministic for a given Python and set of installed packages:

1. ``docstrings-vs-readmes``: target domain = standard-library docstrings (``prunekit.zoo.text.stdlib_corpus``,
   split in two halves by ``train_val_split``: one half is the target sample, the other feeds the pool);
   the other domain = paragraphs (>= 200 characters) of the installed packages' ``METADATA`` descriptions
   (READMEs). The pool mixes them so that docstrings are 20% of it.
2. ``asyncio-in-stdlib``: target domain = docstrings of the ``asyncio`` package (read with ``ast`` from the
   standard-library sources; half for the target sample, half in the pool); the pool holds every other
   standard-library docstring too.

DSIR selects as many documents as the pool holds target-domain ones (hashed unigrams + bigrams, 10,000
buckets, Gumbel top-k); reported: target-domain fraction of the selection against the base rate, KL
reduction against a random selection of the same size, whether the same seed gives the same selection.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import time
import warnings
from pathlib import Path

import numpy as np
from data_common import machine

from prunekit.data import dsir, hashed_ngrams, kl_reduction
from prunekit.zoo.text import stdlib_corpus, stdlib_root, train_val_split


def readme_paragraphs(min_chars: int = 200) -> list[str]:
    """Paragraphs of the installed distributions' METADATA bodies, sorted by distribution name."""
    out = []
    for d in sorted(importlib.metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        text = d.read_text("METADATA") or ""
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        out += [p.strip() for p in body.split("\n\n") if len(p.strip()) >= min_chars]
    return list(dict.fromkeys(out))


def docstrings_by_package(min_chars: int = 200) -> dict[str, list[str]]:
    """Standard-library docstrings grouped by top-level package (first path part), deterministic order."""
    root = stdlib_root()
    groups: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        parts = path.relative_to(root).parts
        if {"site-packages", "test", "tests", "idle_test"} & set(parts[:-1]) or path.name.startswith("test_"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef,
                                                                          ast.AsyncFunctionDef))]
        docs = [ast.get_docstring(n) for n in nodes]
        key = parts[0].removesuffix(".py")
        groups.setdefault(key, []).extend(d.strip() for d in docs if d and len(d.strip()) >= min_chars)
    return groups


def evaluate(label: str, pool: list[str], is_target: np.ndarray, target: list[str], seed: int) -> dict:
    """Run DSIR for ``is_target.sum()`` documents and measure what it picked."""
    k = int(is_target.sum())
    t = time.perf_counter()
    raw_c, tgt_c = hashed_ngrams(pool), hashed_ngrams(target)
    featurize_s = time.perf_counter() - t
    t = time.perf_counter()
    res = dsir(raw_c, tgt_c, k, seed=seed)
    select_s = time.perf_counter() - t
    kept = res.kept.numpy()
    again = dsir(raw_c, tgt_c, k, seed=seed).kept.numpy()
    other = dsir(raw_c, tgt_c, k, seed=seed + 1).kept.numpy()
    rnd = np.random.default_rng(seed).choice(len(pool), k, replace=False)
    return {"pool": label, "pool_docs": len(pool), "target_docs": len(target), "selected": k,
            "base_rate": float(is_target.mean()), "target_fraction": float(is_target[kept].mean()),
            "random_fraction": float(is_target[rnd].mean()),
            "kl_reduction": kl_reduction(tgt_c, raw_c, kept, seed=seed),
            "same_seed_same_selection": bool(np.array_equal(kept, again)),
            "overlap_with_seed+1": float(np.isin(kept, other).mean()),
            "featurize_s": featurize_s, "dsir_s": select_s}


def pools(seed: int) -> list[tuple[str, list[str], np.ndarray, list[str]]]:
    """(name, pool, is-target mask, target sample) for the two pools."""
    docs = stdlib_corpus()
    target, rest = train_val_split(docs, val_fraction=0.5, seed=seed)
    readmes = readme_paragraphs()
    n_doc = len(readmes) // 4  # docstrings are 20% of the pool
    pool1 = rest[:n_doc] + readmes
    mask1 = np.r_[np.ones(n_doc, bool), np.zeros(len(readmes), bool)]
    groups = docstrings_by_package()
    a_target, a_rest = train_val_split(groups["asyncio"], val_fraction=0.5, seed=seed)
    others = [d for k, v in sorted(groups.items()) if k != "asyncio" for d in v]
    pool2 = a_rest + others
    mask2 = np.r_[np.ones(len(a_rest), bool), np.zeros(len(others), bool)]
    return [("docstrings-vs-readmes", pool1, mask1, target), ("asyncio-in-stdlib", pool2, mask2, a_target)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/datap_bench"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = [evaluate(name, pool, mask, target, args.seed) for name, pool, mask, target in pools(args.seed)]
    md = ["| pool | pool docs | target sample | selected | base rate | DSIR target fraction | random | KL reduction "
          "| same seed, same selection | overlap with seed+1 | featurize s | DSIR s |", "|---" * 12 + "|"]
    for r in rows:
        md.append(f"| {r['pool']} | {r['pool_docs']} | {r['target_docs']} | {r['selected']} | {r['base_rate']:.3f} | "
                  f"{r['target_fraction']:.3f} | {r['random_fraction']:.3f} | {r['kl_reduction']:.3f} | "
                  f"{r['same_seed_same_selection']} | {r['overlap_with_seed+1']:.2f} | {r['featurize_s']:.1f} | "
                  f"{r['dsir_s']:.2f} |")
    md += ["", f"Machine: {json.dumps(machine())}; wall time {time.perf_counter() - t0:.0f} s."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dsir.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
