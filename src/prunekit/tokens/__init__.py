"""Input-dependent sparsity: token pruning and merging of transformers, and soft hyperedges.

``apply_(model, TokenPrune(method, keep))`` patches a BERT-like Hugging Face encoder or the zoo ViT;
methods (kind ``token`` in ``METHODS``): ``zero-tprune``, ``attention``, ``tome``, ``token-random``
(alias ``random``). ``SoftHyperedge`` is the SoftHGNN layer.
"""

from .config import TokenPrune
from .patch import TokenPatch, TokenPrunedEncoder, apply_
from .scores import Selection, attention_received, weighted_pagerank
from .state import TokenState

__all__ = ["Selection", "TokenPatch", "TokenPrune", "TokenPrunedEncoder", "TokenState", "apply_",
           "attention_received", "weighted_pagerank"]
