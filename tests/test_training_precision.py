"""One accelerator shared by runs that want different precisions (a study's bf16 scratch recipe and fp32 transfer)."""

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from tl_space.errors import UserError
from tl_space.training.precision import run_precision, shared_precision, use_run_precision


@pytest.fixture
def bf16_accelerator():
    # accelerate keeps one state per process; this test's bf16 must not outlive it.
    AcceleratorState._reset_state(True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(True)


def test_a_run_that_wants_fp32_computes_in_fp32_under_a_bf16_accelerator(bf16_accelerator):
    accelerator = bf16_accelerator
    layer = torch.nn.Linear(8, 4)
    inputs = torch.randn(2, 8)
    use_run_precision(accelerator, "no")
    assert run_precision(accelerator) == "no"
    with accelerator.autocast():
        assert layer(inputs).dtype == torch.float32
    fp32_model = accelerator.prepare(torch.nn.Linear(8, 4))  # accelerate wraps forward with the handler it finds
    assert fp32_model(inputs).dtype == torch.float32
    use_run_precision(accelerator, "bf16")  # the next run: the accelerator's own again
    assert run_precision(accelerator) == "bf16"
    with accelerator.autocast():
        assert layer(inputs).dtype == torch.bfloat16
    use_run_precision(accelerator, "auto")
    assert run_precision(accelerator) == "bf16"
    with pytest.raises(UserError, match="computes in bf16"):
        use_run_precision(accelerator, "fp16")


def test_the_shared_precision_is_the_reduced_one_any_run_asks_for():
    assert shared_precision(["no", "bf16", "auto"]) == "bf16"
    assert shared_precision(["no", "auto"]) == "auto"
    with pytest.raises(UserError, match="one reduced precision"):
        shared_precision(["fp16", "bf16"])
