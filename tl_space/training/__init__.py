"""Training: the run, the loop, batches, frozen features, checkpoints and the final evaluation."""

from tl_space.training.run import run

__all__ = ["run"]
