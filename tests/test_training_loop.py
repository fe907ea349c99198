"""The training loop's pieces: the schedule, the time budget, the record of an epoch, patience, the NaN guard, the
estimate of a stage's time; each on real torch objects, with an injected clock where time matters."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from tl_space.errors import UserError
from tl_space.folder.metrics import EpochRecord
from tl_space.settings import Optimizer
from tl_space.training import checkpoint, loop
from tl_space.training.regularisation import Lookahead


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def __deepcopy__(self, memo):  # a copied model keeps ticking the same clock
        return self


def epoch_record(epoch: int, val_accuracy: float, seconds: float = 1.0) -> EpochRecord:
    return EpochRecord(epoch=epoch, stage="finetune", train_loss=1.0, train_accuracy=0.5, val_loss=1.0,
                       val_accuracy=val_accuracy, seconds=seconds, train_images_per_second=10.0, lr=1e-3)


def run_state(tmp_path: Path) -> loop.RunState:
    return loop.RunState(tmp_path / "checkpoint", torch.Generator(), {"strategy": "finetune"})


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


def test_the_triangle_schedule_rises_to_its_peak_then_falls_by_steps_or_time():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    clock = {"fraction": 0.0}
    factor = loop.triangle(optimizer, total_steps=1000, time_fraction=lambda: clock["fraction"]).lr_lambdas[0]
    assert factor(0) == pytest.approx(0.2) and factor(115) == pytest.approx(0.6)
    assert factor(230) == pytest.approx(1.0) and factor(1000) == pytest.approx(0.07)
    clock["fraction"] = 0.23 + 0.77 / 2  # half-way down by the clock after 10 steps: the time decides
    assert factor(10) == pytest.approx(1 - 0.93 / 2)
    clock["fraction"] = 2.0  # over time: it stays at its end
    assert factor(10) == pytest.approx(0.07)


def batchnorm_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    net[1].weight.requires_grad = False  # as airbench's: only the shift trains
    return net


def test_nesterov_gives_normalisation_layers_64x_the_lr_and_a_resumed_schedule_keeps_it(tmp_path):
    torch.manual_seed(0)
    net = batchnorm_net()
    optimizer = loop.make_optimizer(Optimizer.NESTEROV, net, lr=0.1, weight_decay=1e-3)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert optimizer.defaults["momentum"] == loop.NESTEROV_MOMENTUM
    others, norms = optimizer.param_groups
    assert [id(p) for p in norms["params"]] == [id(net[1].bias)]  # the frozen scale is in no group
    assert len(others["params"]) == 4
    assert (others["lr"], norms["lr"]) == (0.1, pytest.approx(6.4))
    assert norms["weight_decay"] * norms["lr"] == pytest.approx(others["weight_decay"] * others["lr"])

    accelerator = Accelerator(cpu=True)
    net, optimizer = accelerator.prepare(net, optimizer)
    scheduler = loop.triangle(optimizer, total_steps=10)
    for _ in range(3):
        net(torch.randn(4, 3, 6, 6)).sum().backward()
        optimizer.step()
        scheduler.step()
    checkpoint.save_checkpoint(accelerator, tmp_path / "checkpoint", {"history": []}, net.state_dict(), scheduler,
                               torch.Generator(), None)
    again = batchnorm_net()
    again_optimizer = loop.make_optimizer(Optimizer.NESTEROV, again, lr=0.1, weight_decay=1e-3)
    resumed = Accelerator(cpu=True)  # a new process's
    again, again_optimizer = resumed.prepare(again, again_optimizer)
    again_scheduler = loop.triangle(again_optimizer, total_steps=10)
    checkpoint.restore_checkpoint(resumed, tmp_path / "checkpoint", again_scheduler, torch.Generator(), 0.05)
    factor = again_scheduler.lr_lambdas[0](3)
    assert [group["lr"] for group in again_optimizer.param_groups] == pytest.approx([0.05 * factor, 3.2 * factor])
    assert torch.equal(again.state_dict()["1.bias"], net.state_dict()["1.bias"])


def test_adamw_takes_every_trainable_parameter_in_one_group():
    net = batchnorm_net()
    optimizer = loop.make_optimizer(Optimizer.ADAMW, net, lr=1e-3, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW) and len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == 5


def test_lookahead_follows_the_weights_early_and_averages_them_late():
    net = batchnorm_net()
    with torch.no_grad():
        net[3].weight.zero_()
    lookahead = Lookahead(net)
    with torch.no_grad():
        net[3].weight.fill_(1.0)
        net[1].running_mean.fill_(1.0)
    lookahead.step(net, progress=0.0)  # decay 0: the average becomes the weights
    assert torch.equal(net[3].weight, torch.ones_like(net[3].weight))
    with torch.no_grad():
        net[3].weight.fill_(2.0)
    lookahead.step(net, progress=1.0)  # decay 0.95^5: the weights move back to the average, most of the way
    decay = 0.95 ** 5
    expected = torch.full_like(net[3].weight, decay * 1.0 + (1 - decay) * 2.0)
    assert torch.allclose(net[3].weight, expected) and torch.allclose(lookahead.average["3.weight"], expected)
    assert torch.equal(net[1].running_mean, torch.ones(4))  # statistics are averaged as well
    assert Lookahead.decay(0.5) == pytest.approx(decay / 8)


def test_the_time_budget_counts_earlier_epochs_and_the_running_one():
    clock = FakeClock()
    budget = loop.TimeBudget(allowed_seconds=60.0, clock=clock, spent_before=30.0)
    budget.start_epoch()
    clock.now += 15
    budget.update(Accelerator(cpu=True))
    assert budget.fraction == pytest.approx(0.75) and not budget.exhausted
    clock.now += 15
    budget.update(Accelerator(cpu=True))
    assert budget.exhausted


def test_no_budget_is_never_exhausted():
    clock = FakeClock()
    budget = loop.TimeBudget(None, clock=clock)
    budget.start_epoch()
    clock.now += 1e6
    budget.update(Accelerator(cpu=True))
    assert budget.fraction == 0 and not budget.exhausted


def test_record_epoch_keeps_the_best_weights_and_only_the_best(tmp_path):
    state, model = run_state(tmp_path), nn.Linear(2, 2)
    accelerator = Accelerator(cpu=True)
    with torch.no_grad():
        model.weight.fill_(1.0)
    loop.record_epoch(accelerator, state, epoch_record(1, 0.6), model, "epoch 1")
    with torch.no_grad():
        model.weight.fill_(2.0)
    loop.record_epoch(accelerator, state, epoch_record(2, 0.5), model, "epoch 2")  # worse: not kept
    assert [entry.epoch for entry in state.history] == [1, 2]
    assert state.best.epoch == 1 and state.best.accuracy == 0.6
    assert torch.equal(state.best.state["weight"], torch.ones(2, 2))  # a copy, not the live weights
    loop.record_epoch(accelerator, state, epoch_record(3, 0.7), model, "epoch 3")
    assert state.best.epoch == 3 and torch.equal(state.best.state["weight"], torch.full((2, 2), 2.0))


def test_patience_counts_within_the_stage(tmp_path):
    state = run_state(tmp_path)
    state.best = loop.BestModel(0.9, 2, None)  # the probe stage's best, epoch 2
    # A fine-tuning stage starting at epoch 5 has its full patience from there, not from epoch 2.
    assert not loop.patience_ran_out(state, 2, epoch=5, first_epoch=5)
    assert loop.patience_ran_out(state, 2, epoch=6, first_epoch=5)
    assert not loop.patience_ran_out(state, None, epoch=60, first_epoch=5)


def test_a_loss_that_is_no_number_stops_before_the_step_and_says_what_is_kept(tmp_path):
    state = run_state(tmp_path)
    stage = SimpleNamespace(lr=1e-2)
    loop.check_finite(torch.tensor(1.0), stage, 1, 1, 10, state)  # a number passes
    with pytest.raises(UserError, match="no epoch finished.*lower --lr \\(now 0.01\\)"):
        loop.check_finite(torch.tensor(float("nan")), stage, 1, 3, 10, state)
    state.history.append(epoch_record(1, 0.5))
    with pytest.raises(UserError, match="checkpoint \\(epoch 1\\) is kept.*--resume"):
        loop.check_finite(torch.tensor(float("inf")), stage, 2, 3, 10, state)


def test_an_epoch_record_round_trips_through_json():
    lbfgs = EpochRecord(epoch=1, stage="linear-probe", train_loss=0.1, train_accuracy=0.9, val_loss=0.2,
                        val_accuracy=0.8, seconds=2.0, train_images_per_second=100.0, lr=None, l2=1e-3)
    assert EpochRecord.from_json(lbfgs.to_json()) == lbfgs
    assert "l2" not in epoch_record(1, 0.5).to_json()  # an AdamW epoch has no L2 strength
    assert "stage" not in lbfgs.logged() and lbfgs.logged()["l2"] == 1e-3


class OneSlowStep(nn.Module):
    """A linear layer whose first timed training step stalls (the injected clock jumps), as one step on a shared
    CPU can; every other call takes 10 ms of the clock."""

    def __init__(self, clock: FakeClock):
        super().__init__()
        self.linear, self.calls, self.clock = nn.Linear(4, 3), 0, clock

    def forward(self, inputs):
        self.calls += 1
        self.clock.now += 50.0 if self.calls == loop.ESTIMATE_WARMUP_STEPS + 1 else 0.01
        return self.linear(inputs)


def test_one_stalled_step_does_not_set_the_estimate():
    clock = FakeClock()
    inputs = lambda indices, augment: torch.ones(len(indices), 4)  # noqa: E731
    module = OneSlowStep(clock)
    stage = loop.Stage(1, "finetune", module, inputs, inputs, epochs=2, lr=1e-3, eval_batch_size=32)
    splits = SimpleNamespace(train=range(320), val=range(32))
    settings = loop.LoopSettings(batch_size=32, weight_decay=0.0, seed=0, min_epoch_images=0, max_train_minutes=None,
                                 patience=None, keep_batchnorm_statistics=False)
    seconds = loop.estimate_stage_seconds(Accelerator(cpu=True), stage, splits, settings, clock=clock)
    # 2 epochs of 10 steps at the median step (10 ms), plus one validation batch per epoch (10 ms): a 50 s step
    # would have made it 1000 s.
    assert seconds == pytest.approx(2 * (10 * 0.01 + 0.01))
    assert module.calls == 0  # timed on a copy


def feature_splits(seed: int = 0):
    """Separable 8-dimensional features of 3 classes, as a probe stage trains on them (no images needed)."""
    from tl_space.data import DataSplits, LabelledImages

    generator = torch.Generator().manual_seed(seed)

    def split(count):
        labels = torch.arange(3).repeat(count)
        features = torch.randn(len(labels), 8, generator=generator) + torch.eye(3, 8)[labels] * 4
        return LabelledImages(torch.empty(len(labels), 0, dtype=torch.uint8), labels, features)
    return DataSplits(split(20), split(5), split(5), ["a", "b", "c"], "img", "label")


def feature_stage(splits, head, epochs, lr=0.05):
    from tl_space.training.batches import feature_inputs

    return loop.Stage(0, "linear-probe", head, feature_inputs(splits.train.features),
                      feature_inputs(splits.val.features), epochs, lr, eval_batch_size=16)


def test_a_stage_records_every_epoch_checkpoints_it_and_resumes_where_it_stopped(tmp_path):
    from tl_space.training import checkpoint

    splits = feature_splits()
    settings = loop.LoopSettings(batch_size=16, weight_decay=0.0, seed=0, min_epoch_images=0, max_train_minutes=None,
                                 patience=None, keep_batchnorm_statistics=True)
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    state = run_state(tmp_path)
    loop.train_stage(Accelerator(cpu=True), feature_stage(splits, head, epochs=3), head, splits, settings, state)
    assert [entry.epoch for entry in state.history] == [1, 2, 3] and state.stopped_by == "epochs"
    assert state.best.accuracy == max(entry.val_accuracy for entry in state.history) > 0.9
    progress = checkpoint.read_progress(state.checkpoint_dir)
    assert progress["stage_epochs_done"] == 3 and progress["settings"] == {"strategy": "finetune"}
    assert [entry["epoch"] for entry in progress["history"]] == [1, 2, 3]
    resumed = loop.RunState(state.checkpoint_dir, torch.Generator(), state.published_settings,
                            history=[EpochRecord.from_json(entry) for entry in progress["history"][:2]],
                            best=state.best, resume_stage=0, resume_epochs_done=2)
    again = nn.Linear(8, 3)
    loop.train_stage(Accelerator(cpu=True), feature_stage(splits, again, epochs=3), again, splits, settings, resumed)
    assert [entry.epoch for entry in resumed.history] == [1, 2, 3]  # only the third epoch ran again


def test_a_spent_budget_skips_a_later_stage_and_patience_ends_one(tmp_path):
    splits = feature_splits()
    budget = loop.LoopSettings(batch_size=16, weight_decay=0.0, seed=0, min_epoch_images=0, max_train_minutes=0.01,
                               patience=None, keep_batchnorm_statistics=True)
    state = run_state(tmp_path)
    state.history.append(epoch_record(1, 0.5, seconds=60.0))  # an earlier stage used the whole minute
    head = nn.Linear(8, 3)
    loop.train_stage(Accelerator(cpu=True), feature_stage(splits, head, epochs=2), head, splits, budget, state)
    assert state.stopped_by == "time budget" and len(state.history) == 1
    patient = loop.LoopSettings(batch_size=16, weight_decay=0.0, seed=0, min_epoch_images=0, max_train_minutes=None,
                                patience=1, keep_batchnorm_statistics=True)
    state = run_state(tmp_path / "patience")
    state.best = loop.BestModel(1.0, 0, {name: value.clone() for name, value in head.state_dict().items()})  # unbeatable
    loop.train_stage(Accelerator(cpu=True), feature_stage(splits, head, epochs=5, lr=1e-6), head, splits, patient,
                     state)
    assert state.stopped_by == "patience" and len(state.history) == 1


def test_the_lbfgs_probe_records_one_entry_per_l2_strength_and_keeps_the_best(tmp_path):
    splits = feature_splits()
    head = nn.Linear(8, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    state = run_state(tmp_path)
    loop.fit_head_stage(Accelerator(cpu=True), feature_stage(splits, head, epochs=len(loop.L2_GRID)), head, splits,
                        state)
    assert [entry.l2 for entry in state.history] == list(loop.L2_GRID) and all(e.lr is None for e in state.history)
    best = max(state.history, key=lambda entry: entry.val_accuracy)
    assert state.best.epoch == best.epoch and state.best.accuracy > 0.9
