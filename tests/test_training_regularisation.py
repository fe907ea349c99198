"""Regularisation of training on images by timm's parts: mixed batches and their targets, erased images, smoothed
losses and the weight average."""

import random

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from tl_space.training.regularisation import BatchRegulariser, Regularisation, weight_average


def _batch(count: int = 8, classes: int = 4):
    torch.manual_seed(0)
    return torch.randn(count, 3, 16, 16), torch.arange(count) % classes


def test_mixing_blends_each_image_with_the_reversed_batch_and_the_targets_alike():
    np.random.seed(0)
    inputs, labels = _batch()
    regulariser = BatchRegulariser(Regularisation(mixup_alpha=0.8), num_classes=4, device=torch.device("cpu"))
    mixed, targets = regulariser(inputs.clone(), labels)
    one_hot = F.one_hot(labels, 4).float()
    # Solve for the batch's mixing factor from the first pixel, then check every image and target follows it.
    factor = ((mixed[0] - inputs.flip(0)[0]) / (inputs[0] - inputs.flip(0)[0])).flatten()[0]
    assert 0 < factor < 1
    torch.testing.assert_close(mixed, factor * inputs + (1 - factor) * inputs.flip(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(targets, factor * one_hot + (1 - factor) * one_hot.flip(0), rtol=1e-4, atol=1e-4)
    assert regulariser.loss(torch.zeros(8, 4), targets).item() == pytest.approx(np.log(4))


def test_an_odd_batch_is_not_mixed_and_smoothing_still_applies():
    inputs, labels = _batch(count=7)
    regulariser = BatchRegulariser(Regularisation(label_smoothing=0.2, cutmix_alpha=1.0), 4, torch.device("cpu"))
    same, targets = regulariser(inputs, labels)
    assert same is inputs and targets is labels
    logits = torch.randn(7, 4)
    log_probabilities = logits.log_softmax(dim=1)
    expected = (0.8 * F.nll_loss(log_probabilities, labels) - 0.2 * log_probabilities.mean(dim=1).mean())
    assert regulariser.loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_random_erasing_replaces_one_rectangle_per_image_with_noise():
    random.seed(0)
    inputs, labels = _batch()
    erased, targets = BatchRegulariser(Regularisation(random_erasing=1.0), 4, torch.device("cpu"))(inputs.clone(),
                                                                                                   labels)
    assert targets is labels
    for before, after in zip(inputs, erased):
        changed = (before != after).any(dim=0)
        rows, columns = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        assert len(rows) and len(columns)
        # A rectangle: every pixel inside the changed rows and columns changed (noise equal to the pixel is rare).
        assert changed[rows.min():rows.max() + 1, columns.min():columns.max() + 1].float().mean() > 0.99


def test_off_by_default_and_the_weight_average_follows_the_weights():
    inputs, labels = _batch()
    regulariser = BatchRegulariser(Regularisation(), 4, torch.device("cpu"))
    assert regulariser(inputs, labels) == (inputs, labels)
    model = timm.create_model("test_resnet", num_classes=4)
    assert weight_average(model, 0.0) is None
    average = weight_average(model, 0.5)
    start = {name: value.clone() for name, value in average.module.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    for step in range(1, 200):
        average.update(model, step=step)
    for name, parameter in average.module.named_parameters():
        torch.testing.assert_close(parameter, start[name] + 1.0, rtol=1e-3, atol=1e-3)
