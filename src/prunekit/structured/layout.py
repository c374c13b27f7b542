"""Axis algebra: every tensor dimension is a layout of *atoms* (channel spaces), joined by union-find.

A layout node is an atom id (``int``), a :class:`Prod` (row-major product: the index of ``Prod(a, b)``
is ``i_a * |b| + i_b``) or a :class:`Cat` (concatenation). An op that couples two dimensions *unifies*
their layouts; unifying an atom with a compound layout *refines* the atom (a flattened ``(C, H, W)``
feeding a Linear refines the Linear's input atom into ``Prod(C, H, W)``). After tracing, the leaf atoms
that are not fixed are the prunable groups: removing unit ``i`` of a leaf removes every position of
every dimension whose layout contains that leaf at coordinate ``i``.

This is the same coupling DepGraph finds with per-op index-mapping functions (Fang et al. 2023,
"DepGraph: Towards Any Structural Pruning", Sec. 3.2), written as unification so that reshape,
concatenation, split and grouped convolution need no special cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class Prod:
    """Row-major product of layouts (outer first)."""

    parts: tuple


@dataclass(frozen=True)
class Cat:
    """Concatenation of layouts."""

    parts: tuple


Node = Union[int, Prod, Cat]  # noqa: UP007 - a runtime alias


class Atoms:
    """Union-find over atoms with sizes, refinements (definitions) and flags (fixed, inexact)."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self.parent: list[int] = []
        self.defn: dict[int, object] = {}
        self.fixed: dict[int, str] = {}  # leaf root -> why it may not be pruned
        self.inexact: dict[int, str] = {}  # leaf root -> which statistic mixes its units
        self.conflicts: list[str] = []

    def new(self, size: int, fixed: str | None = None) -> int:
        """A fresh atom of ``size`` units, fixed (with the reason) if ``fixed`` is given."""
        a = len(self.size)
        self.size.append(int(size))
        self.parent.append(a)
        if fixed is not None:
            self.fixed[a] = fixed
        return a

    def find(self, a: int) -> int:
        """Root of atom ``a`` (with path halving)."""
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    # ---- sizes and canonical form -------------------------------------------------------------
    def nsize(self, n: Node) -> int:
        """Number of positions of layout ``n`` (original sizes)."""
        if isinstance(n, int):
            return self.size[n]
        vals = [self.nsize(p) for p in n.parts]
        if isinstance(n, Prod):
            out = 1
            for v in vals:
                out *= v
            return out
        return sum(vals)

    def expand(self, n: Node) -> Node:
        """Canonical form of ``n``: definitions substituted, nesting flattened, size-1 factors dropped."""
        if isinstance(n, int):
            r = self.find(n)
            return self.expand(self.defn[r]) if r in self.defn else r
        parts = [self.expand(p) for p in n.parts]
        if isinstance(n, Cat):
            flat = [q for p in parts for q in (p.parts if isinstance(p, Cat) else (p,)) if self.nsize(q) > 0]
            return flat[0] if len(flat) == 1 else Cat(tuple(flat))
        flat = [q for p in parts for q in (p.parts if isinstance(p, Prod) else (p,))]
        big = [q for q in flat if self.nsize(q) != 1] or flat[:1]
        if len(big) == 1:
            return big[0]
        if isinstance(big[0], Cat):  # outermost concat distributes: (A | B) x C = (A x C) | (B x C)
            return self.expand(Cat(tuple(Prod((c, *big[1:])) for c in big[0].parts)))
        return Prod(tuple(big))

    def leaves(self, n: Node) -> list[int]:
        """Leaf atoms of ``n`` in order of appearance (with repeats)."""
        n = self.expand(n)
        if isinstance(n, int):
            return [n]
        return [a for p in n.parts for a in self.leaves(p)]

    # ---- flags ------------------------------------------------------------------------------
    def fix(self, n: Node, why: str) -> None:
        """Mark every leaf of ``n`` as not prunable, keeping the first reason."""
        for a in self.leaves(n):
            self.fixed.setdefault(a, why)

    def mark_inexact(self, n: Node, why: str) -> None:
        """Mark every leaf of ``n`` as mixed by a statistic (removing zero units changes outputs)."""
        for a in self.leaves(n):
            self.inexact.setdefault(a, why)

    # ---- unification ------------------------------------------------------------------------
    def unify(self, x: Node, y: Node, where: str = "") -> None:
        """Make layouts ``x`` and ``y`` the same space (refining atoms as needed); on conflict fix both."""
        x, y = self.expand(x), self.expand(y)
        if x == y:
            return
        if self.nsize(x) != self.nsize(y):
            self._conflict(x, y, where, "sizes differ")
            return
        if isinstance(x, int) and isinstance(y, int):
            self._union(x, y)
        elif isinstance(x, int):
            self._define(x, y, where)
        elif isinstance(y, int):
            self._define(y, x, where)
        elif isinstance(x, Prod) and isinstance(y, Prod):
            self._align(list(x.parts), list(y.parts), Prod, where)
        else:
            xs = list(x.parts) if isinstance(x, Cat) else [x]
            ys = list(y.parts) if isinstance(y, Cat) else [y]
            self._align(xs, ys, Cat, where)

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if b < a:
            a, b = b, a
        self.parent[b] = a
        for flags in (self.fixed, self.inexact):
            if b in flags:
                flags.setdefault(a, flags.pop(b))

    def _define(self, a: int, n, where: str) -> None:
        if a in self.leaves(n):
            self._conflict(a, n, where, "cyclic refinement")
            return
        self.defn[a] = n
        if a in self.fixed:
            self.fix(n, self.fixed.pop(a))
        if a in self.inexact:
            self.mark_inexact(n, self.inexact.pop(a))

    def _align(self, xs: list, ys: list, kind: type, where: str) -> None:
        """Walk two factor (Prod) or part (Cat) lists outer-first, splitting the larger one to match."""
        while xs and ys:
            a, b = self.expand(xs[0]), self.expand(ys[0])
            sa, sb = self.nsize(a), self.nsize(b)
            if sa == sb:
                self.unify(a, b, where)
                xs.pop(0)
                ys.pop(0)
                continue
            big, small, bl, sl = (xs, ys, a, sb) if sa > sb else (ys, xs, b, sa)
            pieces = self._split(bl, sl, kind)
            if pieces is None:
                self._conflict(Prod(tuple(xs)), Prod(tuple(ys)), where, "no common refinement")
                return
            big[0:1] = list(pieces)
        if xs or ys:
            self._conflict(Prod(tuple(xs)), Prod(tuple(ys)), where, "lengths differ")

    def _split(self, n, k: int, kind: type):
        """Refine ``n`` into ``(head, rest)`` with ``|head| = k``: a product factor or a concat prefix."""
        s = self.nsize(n)
        if kind is Prod:
            if not isinstance(n, int) or s % k:
                return None
            h, r = self.new(k), self.new(s // k)
            self._define(n, Prod((h, r)), "")
            return h, r
        if isinstance(n, int):
            h, r = self.new(k), self.new(s - k)
            self._define(n, Cat((h, r)), "")
            return h, r
        if isinstance(n, Prod):  # split the outer factor when k is a whole number of inner blocks
            inner = s // self.nsize(n.parts[0])
            if k % inner or not isinstance(n.parts[0], int):
                return None
            h, r = self._split(n.parts[0], k // inner, Cat)
            return self.expand(Prod((h, *n.parts[1:]))), self.expand(Prod((r, *n.parts[1:])))
        return None

    def _conflict(self, x, y, where: str, why: str) -> None:
        msg = f"{where or 'an op'}: layouts cannot be matched ({why}); their channels are left unpruned"
        self.conflicts.append(msg)
        self.fix(x, msg)
        self.fix(y, msg)

    # ---- index arithmetic ----------------------------------------------------------------------
    def kept_positions(self, n: Node, keep: dict[int, Tensor]) -> Tensor:
        """Positions of layout ``n`` that survive when leaf ``a`` keeps units ``keep[a]`` (sorted)."""
        n = self.expand(n)
        if isinstance(n, int):
            return keep[n] if n in keep else torch.arange(self.size[n])
        ks = [self.kept_positions(p, keep) for p in n.parts]
        if isinstance(n, Cat):
            offs, out = 0, []
            for p, k in zip(n.parts, ks):
                out.append(k + offs)
                offs += self.nsize(p)
            return torch.cat(out)
        idx = ks[0]
        for p, k in zip(n.parts[1:], ks[1:]):
            idx = (idx[:, None] * self.nsize(p) + k[None, :]).reshape(-1)
        return idx

    def coords(self, n: Node, leaf: int) -> Tensor:
        """For every position of ``n``, the coordinate of ``leaf`` there (-1 where ``leaf`` is absent)."""
        n = self.expand(n)
        if isinstance(n, int):
            return torch.arange(self.size[n]) if n == leaf else torch.full((self.size[n],), -1, dtype=torch.long)
        cs = [self.coords(p, leaf) for p in n.parts]
        if isinstance(n, Cat):
            return torch.cat(cs)
        out = cs[0]
        for c in cs[1:]:
            out = torch.maximum(out[:, None], c[None, :]).reshape(-1)
        return out

    def new_size(self, n: Node, counts: dict[int, int]) -> int:
        """Size of layout ``n`` once leaf ``a`` keeps ``counts[a]`` units."""
        return self.expanded_size(self.expand(n), counts)

    def expanded_size(self, n: Node, counts: dict[int, int]) -> int:
        """``new_size`` of a layout that is already expanded (no re-expansion: the graph's hot path)."""
        if isinstance(n, int):
            return counts.get(n, self.size[n])
        vals = [self.expanded_size(p, counts) for p in n.parts]
        if isinstance(n, Cat):
            return sum(vals)
        out = 1
        for v in vals:
            out *= v
        return out
