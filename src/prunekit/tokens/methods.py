"""The registered token methods: each name files its selection function (``tokens.scores``) as kind ``token``."""

from __future__ import annotations

from ..registry import METHODS
from . import scores

METHODS.register("zero-tprune", kind="token")(scores.select_zero_tprune)
METHODS.register("attention", kind="token")(scores.select_attention)
METHODS.register("tome", kind="token")(scores.select_tome)
METHODS.register("token-random", kind="token", aliases=("random",))(scores.select_random)
