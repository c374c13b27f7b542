import torch

from prunekit import scores


def test_magnitude_and_taylor_hand_cases():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    g = torch.tensor([[0.1, 0.1], [-4.0, 3.0]])
    assert torch.equal(scores.magnitude(w), w.abs())
    assert torch.allclose(scores.taylor(w, {"grad": g}), torch.tensor([[0.1, 0.2], [2.0, 0.0]]))


def test_random_is_seeded():
    w = torch.zeros(3, 4)
    a = scores.random(w, {"generator": torch.Generator().manual_seed(7)})
    b = scores.random(w, {"generator": torch.Generator().manual_seed(7)})
    c = scores.random(w, {"generator": torch.Generator().manual_seed(8)})
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_lamp_hand_case():
    # sorted squares 1, 4, 9: scores 1/14, 4/13, 9/9
    w = torch.tensor([3.0, -1.0, 2.0])
    assert torch.allclose(scores.lamp(w), torch.tensor([1.0, 1 / 14, 4 / 13]))


def test_missing_stats_is_clear():
    import pytest

    with pytest.raises(ValueError, match="grad"):
        scores.taylor(torch.ones(2))
