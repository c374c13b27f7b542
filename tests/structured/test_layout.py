"""The axis algebra: unification, refinement and index arithmetic, against hand-computed values."""

import torch

from prunekit.structured.layout import Atoms, Cat, Prod


def test_union_shares_flags_and_root():
    A = Atoms()
    a, b = A.new(4), A.new(4, fixed="input")
    A.unify(a, b)
    assert A.find(a) == A.find(b)
    assert A.find(a) in A.fixed


def test_flatten_refines_linear_input_into_channel_times_spatial():
    A = Atoms()
    c, h, w = A.new(3), A.new(2, "spatial"), A.new(2, "spatial")
    lin_in = A.new(12)
    A.unify(Prod((c, h, w)), lin_in)
    assert A.leaves(lin_in) == [c, h, w]
    # keep channels 0 and 2: columns 0..3 and 8..11 of the Linear
    pos = A.kept_positions(lin_in, {c: torch.tensor([0, 2])})
    assert pos.tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert A.new_size(lin_in, {c: 2}) == 8


def test_view_splits_heads_and_head_dim():
    A = Atoms()
    hd = A.new(8)  # q_proj output: 2 heads of 4
    h, d = A.new(2), A.new(4)
    A.unify(hd, Prod((h, d)))
    assert A.coords(hd, h).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert A.kept_positions(hd, {h: torch.tensor([1])}).tolist() == [4, 5, 6, 7]


def test_concat_and_split_align_boundaries():
    A = Atoms()
    x, y = A.new(3), A.new(5)
    out = A.new(8)
    A.unify(out, Cat((x, y)))
    a, b = A.new(4), A.new(4)  # a split of the concat at 4 cuts y
    A.unify(out, Cat((a, b)))
    assert A.nsize(a) == 4 and len(A.leaves(a)) == 2
    (y2,) = A.leaves(b)  # y was cut into y[:1] (the tail of a) and y[1:] (all of b)
    pos = A.kept_positions(out, {x: torch.tensor([0]), y2: torch.tensor([0])})
    assert pos.tolist() == [0, 3, 4]


def test_glu_halves_unify_into_one_space():
    A = Atoms()
    o = A.new(8)  # fc output chunked into gate and up
    g, u = A.new(4), A.new(4)
    A.unify(o, Cat((g, u)))
    A.unify(g, u)  # gate * up
    assert A.find(g) == A.find(u)
    assert A.kept_positions(o, {A.find(g): torch.tensor([1, 3])}).tolist() == [1, 3, 5, 7]


def test_grouped_channels_product_with_shared_group_atom():
    A = Atoms()
    cin = A.new(6)
    g, per = A.new(3), A.new(2)
    A.unify(cin, Prod((g, per)))
    assert A.kept_positions(cin, {g: torch.tensor([0, 2])}).tolist() == [0, 1, 4, 5]
    assert A.kept_positions(cin, {per: torch.tensor([1])}).tolist() == [1, 3, 5]


def test_conflict_fixes_both_sides():
    A = Atoms()
    a = A.new(6)
    p, q = A.new(4), A.new(2)
    A.unify(a, Cat((p, q)))
    r, s = A.new(2), A.new(4)
    A.unify(a, Cat((r, s)))
    A.unify(p, q)  # sizes differ: a conflict, not a crash
    assert A.conflicts and all(lf in A.fixed for lf in A.leaves(a))
