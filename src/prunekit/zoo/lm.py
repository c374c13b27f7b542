"""A small LLaMA-architecture causal LM trained on the built-in standard-library docstring corpus.

``train_lm`` trains a byte-level BPE tokenizer and a few-million-parameter LLaMA on the corpus's
train split in a fixed number of steps (deterministic under ``seed`` on CPU), with a wall-clock cap
as a safety net, then saves it with ``save_pretrained`` (plus the tokenizer and a ``zoo_lm.json``
record of how it was made) into a cache folder: ``cache_dir`` if given, else ``$PRUNEKIT_CACHE``,
else ``~/.cache/prunekit``. ``load_zoo_lm`` loads it back without training.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
LM_DIR = "zoo-lm"
RECORD = "zoo_lm.json"


@dataclass
class LMRecipe:
    """Architecture and training schedule of the zoo LM."""

    vocab_size: int = 2048
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 512
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 1500  # 600 left the model undertrained (val ppl 90 vs 46) and without the input-norm signal Wanda uses
    lr: float = 3e-3
    warmup: int = 30
    weight_decay: float = 0.1
    seed: int = 0
    max_minutes: float = 15.0
    max_docs: int | None = None  # corpus documents used (None: all; small values for tests)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$PRUNEKIT_CACHE``, else ``~/.cache/prunekit``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("PRUNEKIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prunekit"


def lm_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the cached zoo LM."""
    return cache_root(cache_dir) / LM_DIR


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def build_lm(recipe: LMRecipe) -> torch.nn.Module:
    """A randomly initialised LLaMA causal LM of the recipe's size (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=recipe.vocab_size, hidden_size=recipe.hidden_size,
                      num_hidden_layers=recipe.num_layers, num_attention_heads=recipe.num_heads,
                      num_key_value_heads=recipe.num_heads, intermediate_size=recipe.intermediate_size,
                      max_position_embeddings=recipe.max_positions, tie_word_embeddings=False,
                      bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(recipe.seed)
    return LlamaForCausalLM(cfg)


def _lr_at(step: int, recipe: LMRecipe) -> float:
    """Linear warmup then cosine decay to 10% of the peak."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _train(model: torch.nn.Module, stream: torch.Tensor, recipe: LMRecipe, progress: Any = None) -> dict[str, Any]:
    """AdamW on random windows of the token stream; returns steps done, seconds and the last losses."""
    gen = torch.Generator().manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr, betas=(0.9, 0.95))
    model.train()
    t0, c0, losses, step = time.perf_counter(), time.process_time(), [], 0
    for step in range(recipe.steps):
        if time.perf_counter() - t0 > recipe.max_minutes * 60:
            log.warning("zoo LM: stopped at step %d of %d (max_minutes=%s)", step, recipe.steps, recipe.max_minutes)
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, recipe)
        starts = torch.randint(0, stream.numel() - recipe.seq_len, (recipe.batch_size,), generator=gen)
        x = torch.stack([stream[s : s + recipe.seq_len] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, recipe.steps, losses[-1])
    else:
        step = recipe.steps
    model.eval()
    return {"steps_done": step, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "threads": torch.get_num_threads(), "final_train_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


def train_lm(out_dir: str | os.PathLike | None = None, recipe: LMRecipe | None = None, overwrite: bool = False,
             progress: Any = None) -> Path:
    """Train the zoo LM and save it (model, tokenizer, ``zoo_lm.json``) to ``out_dir`` (default: the cache)."""
    from ..calibrate.data import tokenize_stream
    from ..calibrate.evaluate import perplexity
    from .text import corpus_info, stdlib_corpus, train_val_split

    recipe = recipe or LMRecipe()
    out = Path(out_dir) if out_dir is not None else lm_dir()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to retrain")
    torch.manual_seed(recipe.seed)
    train_docs, val_docs = train_val_split(stdlib_corpus(max_docs=recipe.max_docs))
    tok = train_tokenizer(train_docs, recipe.vocab_size)
    stream = tokenize_stream(train_docs, tok)
    model = build_lm(recipe)
    info = _train(model, stream, recipe, progress)
    val = perplexity(model, tokenize_stream(val_docs, tok), seq_len=recipe.seq_len, dataset="stdlib-docstrings")
    record = {"version": 1, "recipe": asdict(recipe), "train": info, "val_ppl": val["ppl"],
              "val_protocol": val["protocol"], "corpus": corpus_info(),
              "params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    _save_dir(model, tok, record, out, overwrite)
    log.info("zoo LM saved to %s (val ppl %.2f)", out, val["ppl"])
    return out


def _save_dir(model: torch.nn.Module, tok: Any, record: dict[str, Any], out: Path, overwrite: bool) -> None:
    """Write the folder with ``prunekit.io.atomic_dir``: nothing half-written, a replace is crash-safe."""
    from ..io import atomic_dir, write_json

    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / RECORD, record)


def load_zoo_lm(cache_dir: str | os.PathLike | None = None) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """The cached zoo LM, its tokenizer and its training record; a clear error if it was never trained."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    d = lm_dir(cache_dir) if cache_dir is None or not (Path(cache_dir) / RECORD).exists() else Path(cache_dir)
    if not (d / RECORD).is_file():
        raise FileNotFoundError(f"no zoo LM in {d}: train it first with `prunekit zoo train-lm` (about 15 min on CPU)")
    model = LlamaForCausalLM.from_pretrained(d, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    record = json.loads((d / RECORD).read_text())
    done, planned = record.get("train", {}).get("steps_done"), record.get("recipe", {}).get("steps")
    if isinstance(done, int) and isinstance(planned, int) and done < planned:
        log.warning("the zoo LM in %s stopped at step %d of %d (its max_minutes cap): it is not the reference "
                    "model and its perplexity (%.4g) differs; retrain it on an idle machine with "
                    "`prunekit zoo train-lm --overwrite`", d, done, planned, record.get("val_ppl", float("nan")))
    return model, tok, record
