"""The final evaluation: the trained model's logits, metrics from one kept pass of them (accuracy, loss, per-class
accuracy, confusion, mistakes), and flip test-time augmentation."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn

from tl_space.training.batches import FEATURE_BATCH_SIZE, feature_inputs, image_inputs, predict
from tl_space.transforms import Preprocessing

if TYPE_CHECKING:  # the app uses this module's metrics without the dataset code
    from tl_space.data import LabelledImages

TOP_K = 5
# Flip test-time augmentation doubles the app's work per image: worth it from half a point of test accuracy.
TTA_MIN_GAIN = 0.005


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts with rows = true class, columns = predicted class."""
    return torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)


def most_confused(matrix: torch.Tensor, class_names: list[str], limit: int = 10) -> list[dict]:
    """Off-diagonal cells with the most images, largest first."""
    off_diagonal = matrix.clone()
    off_diagonal.fill_diagonal_(0)
    counts, flat_indices = off_diagonal.flatten().sort(descending=True, stable=True)
    num_classes = len(class_names)
    pairs = []
    for count, flat_index in zip(counts.tolist()[:limit], flat_indices.tolist()[:limit]):
        if count == 0:
            break
        pairs.append({"true": class_names[flat_index // num_classes],
                      "predicted": class_names[flat_index % num_classes], "count": count})
    return pairs


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """accuracy, loss, per-class accuracy (recall), precision and F1, macro F1, confusion matrix and most confused
    pairs, as plain JSON-ready values."""
    logits, labels = logits.float().cpu(), labels.cpu()
    predicted = logits.argmax(dim=1)
    matrix = confusion_matrix(predicted, labels, len(class_names))
    class_sizes, predicted_sizes = matrix.sum(dim=1), matrix.sum(dim=0)
    correct = matrix.diagonal().double()
    per_class = correct / class_sizes.clamp(min=1)  # recall
    precision = correct / predicted_sizes.clamp(min=1)
    f1 = 2 * precision * per_class / (precision + per_class).clamp(min=1e-12)
    present = [(index, name) for index, name in enumerate(class_names) if class_sizes[index] > 0]
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
        "num_images": int(len(labels)),
        "per_class_accuracy": {name: float(per_class[index]) for index, name in present},
        # Precision of a class never predicted is 0 (no image was put in it), as scikit-learn's zero_division=0.
        "per_class_precision": {name: float(precision[index]) for index, name in present},
        "per_class_recall": {name: float(per_class[index]) for index, name in present},
        "per_class_f1": {name: float(f1[index]) for index, name in present},
        "macro_f1": float(f1[[index for index, _ in present]].mean()) if present else 0.0,
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused(matrix, class_names),
    }


def misclassified_records(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], limit: int) -> list[dict]:
    """The most confident mistakes first: index into the split, true and predicted labels, confidence, top-5."""
    probabilities = logits.float().cpu().softmax(dim=1)
    labels = labels.cpu()
    confidence, predicted = probabilities.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True, stable=True)][:limit]
    top_probabilities, top_classes = probabilities.topk(min(TOP_K, len(class_names)), dim=1)
    return [{
        "index": index,
        "true_label": class_names[int(labels[index])],
        "predicted_label": class_names[int(predicted[index])],
        "confidence": float(confidence[index]),
        "top5": [{"label": class_names[c], "probability": float(p)}
                 for c, p in zip(top_classes[index].tolist(), top_probabilities[index].tolist())],
    } for index in order.tolist()]


def final_logits(accelerator: Accelerator, model: nn.Module, split: LabelledImages, preprocessing: Preprocessing,
                 frozen_backbone: bool, batch_size: int, description: str) -> torch.Tensor:
    """The trained model's logits for a split (unaugmented); with a frozen backbone, from the split's features through
    the head: the same numbers as the whole model in eval mode, without another backbone pass."""
    if frozen_backbone:
        return predict(accelerator, model.get_classifier(), feature_inputs(split.features), len(split), FEATURE_BATCH_SIZE)
    inputs = image_inputs(split.images.to(accelerator.device), preprocessing, generator=None)
    return predict(accelerator, model, inputs, len(split), batch_size, description=description)


def flip_tta_report(accelerator: Accelerator, model: nn.Module, test: LabelledImages, test_logits: torch.Tensor,
                    preprocessing: Preprocessing, batch_size: int,
                    frozen_features: Callable[[LabelledImages], torch.Tensor] | None) -> dict:
    """Test accuracy with flip test-time augmentation (the mean of the logits of each image and its mirror image),
    reported beside the plain one; `enabled` tells the app to use it: only when it gains at least TTA_MIN_GAIN.
    frozen_features: for a model whose backbone stayed frozen, gives the mirror images' features (cached too)."""
    started = time.perf_counter()
    mirrored = type(test)(test.images.flip(-1), test.labels)
    if frozen_features is not None:
        mirrored.features = frozen_features(mirrored)
    mirrored_logits = final_logits(accelerator, model, mirrored, preprocessing, frozen_features is not None,
                                   batch_size, "test, mirrored")
    averaged = (test_logits + mirrored_logits) / 2
    plain_accuracy = float((test_logits.argmax(dim=1) == test.labels).double().mean())
    accuracy = float((averaged.argmax(dim=1) == test.labels).double().mean())
    return {"test_accuracy": accuracy, "test_loss": float(F.cross_entropy(averaged, test.labels)),
            "gain": accuracy - plain_accuracy, "seconds": time.perf_counter() - started,
            "enabled": accuracy - plain_accuracy >= TTA_MIN_GAIN, "min_gain": TTA_MIN_GAIN}
