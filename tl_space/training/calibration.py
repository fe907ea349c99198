"""Calibrated probabilities: temperature scaling fitted on validation logits, expected calibration error, reliability.

Temperature scaling (Guo et al., 2017) divides the logits by one number T > 0 chosen to minimise the validation
negative log-likelihood: the predicted class never changes, only how sure the model says it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CALIBRATION_BINS = 15
# Below this many images a fitted temperature follows a handful of logits (13 images gave T = 0.01-0.12, shown as
# near-certain probabilities): T stays 1 and the report says why. A fitted T is kept within TEMPERATURE_RANGE.
MIN_CALIBRATION_IMAGES = 30
TEMPERATURE_RANGE = (0.25, 10.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in TEMPERATURE_RANGE that minimises cross-entropy(logits / T, labels), by L-BFGS on log T."""
    # A copy made outside inference mode: predict()'s outputs cannot take part in autograd.
    logits, labels = logits.detach().float().cpu().clone(), labels.cpu().clone()
    log_temperature = torch.zeros((), requires_grad=True)
    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_temperature.clamp(low, high).exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    temperature = float(log_temperature.detach().clamp(low, high).exp())
    return temperature if math.isfinite(temperature) else 1.0


def reliability_bins(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width confidence bin: images, mean confidence and accuracy of the top class (empty bins left out)."""
    confidence, predicted = probabilities.float().cpu().max(dim=1)
    correct = (predicted == labels.cpu()).double()
    bin_of = torch.clamp((confidence * bins).long(), max=bins - 1)
    table = []
    for index in range(bins):
        members = bin_of == index
        count = int(members.sum())
        if count:
            table.append({"low": index / bins, "high": (index + 1) / bins, "count": count,
                          "confidence": float(confidence[members].double().mean()),
                          "accuracy": float(correct[members].mean())})
    return table


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Mean gap |accuracy - confidence| over confidence bins, weighted by the images in each."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(entry["count"] for entry in table)
    return sum(entry["count"] * abs(entry["accuracy"] - entry["confidence"]) for entry in table) / max(total, 1)


def calibration_report(val_logits: torch.Tensor, val_labels: torch.Tensor, test_logits: torch.Tensor,
                       test_labels: torch.Tensor) -> dict:
    """Fit T on validation (T = 1 with fewer than MIN_CALIBRATION_IMAGES, and "skipped" saying why); ECE and
    reliability bins on the test split before and after, as JSON-ready values."""
    report = {"bins": CALIBRATION_BINS, "fitted_on": "validation split"}
    if len(val_labels) >= MIN_CALIBRATION_IMAGES:
        temperature = fit_temperature(val_logits, val_labels)
    else:
        temperature = 1.0
        report["skipped"] = (f"not calibrated (temperature 1): {len(val_labels)} validation images, fewer than the "
                             f"{MIN_CALIBRATION_IMAGES} a temperature is fitted on")
    report["temperature"] = temperature
    for name, scale in (("before", 1.0), ("after", temperature)):
        probabilities = (test_logits.float() / scale).softmax(dim=1)
        report[f"test_ece_{name}"] = expected_calibration_error(probabilities, test_labels)
        report[f"test_nll_{name}"] = float(F.cross_entropy(test_logits.float() / scale, test_labels))
        report[f"reliability_{name}"] = reliability_bins(probabilities, test_labels)
    return report


def cross_fitted_report(logits: torch.Tensor, labels: torch.Tensor, fold_of: torch.Tensor) -> dict:
    """calibration_report's fields for predictions that are themselves cross-validated (each image's logits from a
    head fitted without it): the temperature is fitted on all of them, and its "after" figures score each fold with
    a temperature fitted without that fold, so no figure is measured on the logits it was fitted on."""
    report = {"bins": CALIBRATION_BINS, "fitted_on": "cross-validated predictions (scored fold by fold with "
                                                     "temperatures fitted on the other folds)"}
    if len(labels) < MIN_CALIBRATION_IMAGES:
        temperature, scaled = 1.0, logits.float()
        report["skipped"] = (f"not calibrated (temperature 1): {len(labels)} cross-validated predictions, fewer than "
                             f"the {MIN_CALIBRATION_IMAGES} a temperature is fitted on")
    else:
        temperature = fit_temperature(logits, labels)
        scaled = torch.empty_like(logits, dtype=torch.float32)
        for fold in fold_of.unique().tolist():
            held = fold_of == fold
            scaled[held] = logits[held].float() / fit_temperature(logits[~held], labels[~held])
    report["temperature"] = temperature
    for name, scored in (("before", logits.float()), ("after", scaled)):
        probabilities = scored.softmax(dim=1)
        report[f"test_ece_{name}"] = expected_calibration_error(probabilities, labels)
        report[f"test_nll_{name}"] = float(F.cross_entropy(scored, labels))
        report[f"reliability_{name}"] = reliability_bins(probabilities, labels)
    return report
