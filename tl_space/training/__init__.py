"""Training: the run, the loop, batches, frozen features, checkpoints and the final evaluation (the run:
`tl_space.training.run.run`)."""
