"""The training loop's learning-rate schedule."""

import math

import pytest
import torch

from tl_space.training import loop


def test_the_schedule_follows_steps_or_time_whichever_is_further():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    clock = {"fraction": 0.0}
    scheduler = loop.cosine_with_warmup(optimizer, total_steps=1000, time_fraction=lambda: clock["fraction"])
    factor = scheduler.lr_lambdas[0]
    assert factor(0) == pytest.approx(1 / 50) and factor(50) == pytest.approx(1.0) and factor(1000) == 0
    clock["fraction"] = 0.5  # half the time spent after 10 steps: the time decides
    assert factor(10) == pytest.approx(0.5 * (1 + math.cos(math.pi * (0.5 - 0.05) / 0.95)))
    clock["fraction"] = 1.0
    assert factor(10) == pytest.approx(0.0)
