import pytest

from prunekit.schedules import CosineDecay, Cubic, Iterative, OneShot


def test_cubic_hand_values():
    s = Cubic(final_sparsity=0.8, begin_step=100, end_step=200, frequency=25)
    assert s.sparsity_at(50) == 0.0
    assert s.sparsity_at(100) == pytest.approx(0.0)
    assert s.sparsity_at(150) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert s.sparsity_at(200) == pytest.approx(0.8) and s.sparsity_at(999) == pytest.approx(0.8)
    assert [t for t in range(0, 300) if s.is_update_step(t)] == [100, 125, 150, 175, 200]


def test_oneshot_and_iterative():
    assert OneShot(0.5, step=3).sparsity_at(2) == 0.0 and OneShot(0.5, step=3).is_update_step(3)
    it = Iterative(0.2, rounds=3)
    assert it.sparsity_at(2) == pytest.approx(1 - 0.8**2)
    assert Iterative.rounds_for(0.9, 0.2) == 11  # 0.8^10 = 0.107, 0.8^11 = 0.086


def test_cosine_decay():
    c = CosineDecay(alpha=0.3, delta=10, end_step=100)
    assert c.fraction_at(0) == pytest.approx(0.3) and c.fraction_at(50) == pytest.approx(0.15)
    assert c.is_update_step(10) and not c.is_update_step(15) and not c.is_update_step(100)


@pytest.mark.parametrize("kwargs", [dict(alpha=0.0), dict(alpha=1.0), dict(alpha=1.5)])
def test_bad_update_fraction(kwargs):
    with pytest.raises(ValueError, match="alpha"):
        CosineDecay(**kwargs)


def test_bad_cubic():
    with pytest.raises(ValueError, match="end_step"):
        Cubic(0.5, begin_step=10, end_step=10)
    with pytest.raises(ValueError, match="final_sparsity"):
        Cubic(1.0, 0, 10)
