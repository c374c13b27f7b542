"""Distillation: the KD term by hand, mixing with the task loss, bad input."""

import math

import pytest
import torch
from torch import nn

from prunekit.training import Distillation, RigL, fit
from prunekit.training.distill import kd_loss
from prunekit.training.loop import Batch


def test_kd_loss_hand_case():
    s = torch.tensor([[0.0, math.log(3.0)]])  # softmax(s / 1) = (1/4, 3/4)
    t = torch.tensor([[0.0, 0.0]])  # (1/2, 1/2)
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(teacher || student)
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(expected)
    assert float(kd_loss(2 * s, 2 * t, 2.0)) == pytest.approx(4 * expected)  # T^2 KL at temperature T
    assert float(kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_loss_mixes_task_and_distillation():
    teacher = nn.Linear(2, 2)
    cb = Distillation(teacher, alpha=0.25, temperature=2.0)
    x = torch.randn(3, 2)
    out = torch.randn(3, 2)
    batch = Batch(x, torch.zeros(3, dtype=torch.long), torch.arange(3), outputs=out)
    task = torch.tensor(1.5)
    got = cb.loss(None, batch, task)
    with torch.no_grad():
        kd = kd_loss(out, teacher(x), 2.0)
    assert float(got) == pytest.approx(0.75 * 1.5 + 0.25 * float(kd), rel=1e-6)
    assert float(Distillation(teacher, alpha=0.0).loss(None, batch, task)) == pytest.approx(1.5)


def test_distillation_trains_a_sparse_student_towards_the_teacher(tiny_net, tiny_data):
    torch.manual_seed(1)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(32, 4))
    x, _ = tiny_data
    with torch.no_grad():
        y_teacher = teacher(x).argmax(1)
        before = float(kd_loss(tiny_net(x), teacher(x), 1.0))
    fit(tiny_net, (x, y_teacher), steps=40, batch_size=16, lr=0.05,
        callbacks=[RigL(0.5, update_every=10), Distillation(teacher, alpha=1.0, temperature=1.0)])
    with torch.no_grad():
        after = float(kd_loss(tiny_net(x), teacher(x), 1.0))
    assert after < before
    assert all(not p.requires_grad for p in teacher.parameters())


def test_distillation_bad_input():
    with pytest.raises(TypeError, match="teacher"):
        Distillation("resnet")
    with pytest.raises(ValueError, match="alpha"):
        Distillation(nn.Linear(2, 2), alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        Distillation(nn.Linear(2, 2), temperature=0)
