"""Metrics from kept predictions."""

import torch

from tl_space.training.evaluation import classification_metrics, misclassified_records

NAMES = ["a", "b", "c"]


def test_metrics_are_consistent_with_the_confusion_matrix():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0, 2])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 4
    metrics = classification_metrics(logits, labels, NAMES)
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.sum() == 7 and matrix.diagonal().sum() / 7 == metrics["accuracy"]
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [2, 0, 1]]
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 1 / 3}
    assert metrics["most_confused"] == [{"true": "c", "predicted": "a", "count": 2},
                                        {"true": "a", "predicted": "b", "count": 1}]


def test_misclassified_come_most_confident_first_with_top5():
    labels = torch.tensor([0, 1, 2])
    logits = torch.tensor([[5.0, 0, 0], [3.0, 0, 0], [0, 9.0, 0]])
    records = misclassified_records(logits, labels, NAMES, limit=10)
    assert [r["index"] for r in records] == [2, 1]
    assert records[0]["true_label"] == "c" and records[0]["predicted_label"] == "b"
    assert [entry["label"] for entry in records[0]["top5"]][0] == "b"
    assert abs(sum(entry["probability"] for entry in records[0]["top5"]) - 1) < 1e-6
    assert len(misclassified_records(logits, labels, NAMES, limit=1)) == 1


def test_precision_recall_and_f1_per_class_from_the_confusion_matrix():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 0, 2])  # columns: a predicted 3 times (1 right), b 3 (2), c 1 (1)
    metrics = classification_metrics(torch.nn.functional.one_hot(predicted, 3).float(), labels, NAMES)
    assert metrics["per_class_recall"] == metrics["per_class_accuracy"]
    assert metrics["per_class_precision"] == {"a": 1 / 3, "b": 2 / 3, "c": 1.0}
    f1 = {"a": 2 * (1 / 3) * 0.5 / (1 / 3 + 0.5), "b": 2 * (2 / 3) / (2 / 3 + 1), "c": 2 * (1 / 3) / (1 + 1 / 3)}
    for name, value in f1.items():
        assert abs(metrics["per_class_f1"][name] - value) < 1e-9
    assert abs(metrics["macro_f1"] - sum(f1.values()) / 3) < 1e-9
    never_predicted = classification_metrics(torch.nn.functional.one_hot(torch.zeros(7, dtype=torch.long), 3).float(),
                                             labels, NAMES)
    assert never_predicted["per_class_precision"]["b"] == 0 and never_predicted["per_class_f1"]["b"] == 0
