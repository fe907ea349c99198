"""The training loop's learning-rate schedule and its estimate of a stage's time."""

import math
import time
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn

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


class OneSlowStep(nn.Module):
    """A linear layer whose first timed training step stalls, as one step on a shared CPU can."""

    def __init__(self):
        super().__init__()
        self.linear, self.calls = nn.Linear(4, 3), 0

    def forward(self, inputs):
        self.calls += 1
        if self.calls == loop.ESTIMATE_WARMUP_STEPS + 1:
            time.sleep(0.5)
        return self.linear(inputs)


def test_one_stalled_step_does_not_set_the_estimate():
    inputs = lambda indices, augment: torch.ones(len(indices), 4)  # noqa: E731
    stage = loop.Stage(1, "finetune", OneSlowStep(), inputs, inputs, epochs=2, lr=1e-3, eval_batch_size=32)
    splits = SimpleNamespace(train=range(320), val=range(32))
    settings = loop.LoopSettings(batch_size=32, weight_decay=0.0, seed=0, min_epoch_images=0, max_train_minutes=None,
                                 patience=None, keep_batchnorm_statistics=False, published_settings={})
    seconds = loop.estimate_stage_seconds(Accelerator(cpu=True), stage, splits, settings)
    assert 0 < seconds < 0.5  # 2 epochs of 10 steps: a 0.5 s step would make it 10 s
    assert stage.module.calls == 0  # timed on a copy
