"""Metrics from one kept pass of predictions: accuracy, loss, per-class accuracy, confusion, mistakes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

TOP_K = 5


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
    """accuracy, loss, per_class_accuracy, confusion_matrix and most_confused, as plain JSON-ready values."""
    logits, labels = logits.float().cpu(), labels.cpu()
    predicted = logits.argmax(dim=1)
    matrix = confusion_matrix(predicted, labels, len(class_names))
    class_sizes = matrix.sum(dim=1)
    per_class = matrix.diagonal().double() / class_sizes.clamp(min=1)
    return {
        "accuracy": float((predicted == labels).double().mean()),
        "loss": float(F.cross_entropy(logits, labels)),
        "num_images": int(len(labels)),
        "per_class_accuracy": {name: float(value) for name, value, size in zip(class_names, per_class, class_sizes) if size > 0},
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
