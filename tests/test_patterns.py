import pytest
import torch

from prunekit.patterns import NM, Block, Channel, Unstructured, mask_respects, parse_pattern, topk_mask


def test_unstructured_keeps_exact_count():
    scores = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    mask = topk_mask(scores, 0.9)
    assert mask.dtype == torch.bool and int(mask.sum()) == 100
    # the kept ones are the 100 largest
    assert scores[mask].min() >= scores[~mask].max()


def test_unstructured_hand_case_and_ties_go_to_lower_index():
    scores = torch.tensor([[3.0, 1.0, 2.0, 2.0]])
    assert topk_mask(scores, 0.5).tolist() == [[True, False, True, False]]


def test_nm_hand_case():
    scores = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.5, 0.1, 0.3, 0.2]])
    assert topk_mask(scores, None, NM(2, 4)).tolist() == [[False, True, True, False, True, False, True, False]]
    assert topk_mask(scores, 0.75, NM(1, 4)).sum() == 2


def test_nm_conv_groups_along_input_channels():
    scores = torch.rand(6, 8, 3, 3)
    mask = topk_mask(scores, 0.5, NM(2, 4))
    # every group of 4 input channels at each (out, kh, kw) keeps exactly 2
    groups = mask.movedim(1, -1).reshape(-1, 2, 4)
    assert (groups.sum(-1) == 2).all()


def test_block_and_channel():
    scores = torch.tensor([[9.0, 9.0, 0.0, 0.0], [9.0, 9.0, 0.0, 1.0]])
    assert topk_mask(scores, 0.5, Block(2, 2)).tolist() == [[True, True, False, False]] * 2
    ch = topk_mask(torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.0, 3.0]]), 1 / 3, Channel())
    assert ch.tolist() == [[False, False], [True, True], [True, True]]
    assert mask_respects(ch, Channel())


@pytest.mark.parametrize("bad", [-0.1, 1.0, "abc", float("nan"), None])
def test_bad_sparsity_is_named(bad):
    with pytest.raises(ValueError, match="sparsity"):
        topk_mask(torch.rand(8), bad)


def test_bad_nm():
    with pytest.raises(ValueError, match=r"0 < n < m"):
        NM(3, 2)
    with pytest.raises(ValueError, match="multiple of m=4.*6"):
        topk_mask(torch.rand(4, 6), None, NM(2, 4))
    with pytest.raises(ValueError, match="conflicts"):
        topk_mask(torch.rand(4, 8), 0.9, NM(2, 4))


def test_nan_scores_rejected():
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.tensor([1.0, float("nan")]), 0.5)


def test_parse_pattern():
    assert parse_pattern("2:4") == NM(2, 4)
    assert parse_pattern("block:4x2") == Block(4, 2)
    assert parse_pattern("unstructured") == Unstructured()
    assert parse_pattern("channel") == Channel()
    with pytest.raises(ValueError, match="pattern must be"):
        parse_pattern("diagonal")
