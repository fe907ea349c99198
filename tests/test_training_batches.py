"""Batches of in-memory splits."""

import torch

from tl_space.training import batches


def test_a_small_training_set_fills_an_epoch_with_reshuffled_passes():
    loader = batches.index_loader(10, batch_size=16, shuffle=True, seed=0, min_samples=48)
    indices = torch.cat(list(loader))
    assert len(indices) == 48 and len(loader) == 3
    assert sorted(indices[:40].tolist()) == sorted(list(range(10)) * 4)  # whole passes, each image once per pass
    assert len(torch.cat(list(batches.index_loader(100, 16, True, 0, min_samples=48)))) == 100  # larger: one pass
