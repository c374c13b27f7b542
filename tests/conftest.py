"""Shared fixtures: tiny in-code models and data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

# Tiny models run fastest on one thread, and a shared 2-core CI box then runs them without contention.
torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Conv1d -> Conv1d -> Linear -> Linear: every prunable kind, divisible by 4 where N:M needs it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, 8, generator=g)
    y = (x[:, 0].sum(1) > 0).long() + 2 * (x[:, 1].sum(1) > 0).long()
    return x, y


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A random 2-layer BERT with a word-level tokenizer, saved as a local encoder folder."""
    import torch
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = tmp_path_factory.mktemp("enc") / "bert"
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "dog", "sat", "ran"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = T.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, max_position_embeddings=32)
    T.BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d
