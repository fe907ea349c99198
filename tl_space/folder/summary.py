"""What a run's metrics.json says, in sentences: one text for the model card and the app's training report."""

from __future__ import annotations

import re
from typing import Callable

Quote = Callable[[object], str]  # renders a value read from the folder: the app escapes it, the card need not


def _code(value: object) -> str:
    return f"`{value}`"


HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def trained_how(metrics: dict, quote: Quote = _code, plain: Quote = str) -> str:
    """What the model is and how it learned: its backbone, the strategy, its starting weights and the dataset."""
    settings, model_record = metrics["settings"], metrics.get("model") or {}
    base = model_record.get("base_model") or "random initialisation"
    return (f"{quote(model_record.get('architecture', settings['model']))} trained by **{plain(settings['strategy'])}** "
            f"from {quote(base)} on {quote(settings['dataset'])}")


def headline(metrics: dict, hub_repo_id: str | None, quote: Quote = _code, plain: Quote = str) -> str:
    """One line for the top of a page: how the model learned, its test accuracy, and a link to its Hub repo (only an
    id that is plainly OWNER/NAME becomes a link)."""
    line = f"{trained_how(metrics, quote, plain)}: **{float(metrics['test']['accuracy']):.2%} test accuracy**"
    if hub_repo_id and HUB_REPO_ID.match(hub_repo_id):
        line += f" · [{hub_repo_id}](https://huggingface.co/{hub_repo_id})"
    return line


def run_summary(metrics: dict, quote: Quote = _code, plain: Quote = str) -> list[str]:
    """Markdown paragraphs: test accuracy, how the model trained, calibration, flip TTA, the most confused pairs."""
    test = metrics["test"]
    lines = [f"**Test accuracy {float(test['accuracy']):.2%}** on {int(test['num_images']):,} images: "
             f"{trained_how(metrics, quote, plain)} ({int(metrics['data']['train_images']):,} training "
             f"images), {len(metrics['history'])} epochs at {int(metrics['preprocessing']['image_size'])} px; best "
             f"epoch {int(test['best_epoch'])} by validation accuracy. Test loss {float(test['loss']):.3f}."]
    calibration = metrics.get("calibration")
    if calibration and calibration.get("skipped"):
        lines.append(f"**Calibration**: {plain(calibration['skipped'])}.")
    elif calibration:
        lines.append(f"**Calibration**: a temperature of {float(calibration['temperature']):.3f}, fitted on the validation "
                     "split, divides the logits before the softmax (the predicted classes do not change); expected "
                     f"calibration error on the test split {float(calibration['test_ece_before']):.2%} before, "
                     f"{float(calibration['test_ece_after']):.2%} after. The tl-space app shows calibrated probabilities.")
    flip_tta = metrics.get("flip_tta")
    if flip_tta:
        lines.append(f"**Flip test-time augmentation** (averaging the logits of each image and its mirror image): test "
                     f"accuracy {float(flip_tta['test_accuracy']):.2%}, {float(flip_tta['gain']) * 100:+.2f} points; "
                     + ("the app uses it." if flip_tta["enabled"] else "the app leaves it off (it doubles the work and "
                        f"gains less than {float(flip_tta['min_gain']) * 100:.1f} points)."))
    if test["most_confused"]:
        lines.append("**Most confused pairs** (true → predicted: test images): " + ", ".join(
            f"{plain(pair['true'])} → {plain(pair['predicted'])}: {int(pair['count'])}"
            for pair in test["most_confused"][:5]))
    return lines


PER_CLASS_HEADERS = ["class", "accuracy (recall) %", "precision %", "F1 %"]


def per_class_rows(test: dict) -> list[list]:
    """One row per class of metrics.json's test section: name, recall (the per-class accuracy), precision and F1 in
    percent; precision and F1 are None for folders written before they were recorded."""
    rows = []
    for name, accuracy in test["per_class_accuracy"].items():
        tables = [test.get(f"per_class_{kind}") for kind in ("precision", "f1")]
        extra = [table.get(name) if isinstance(table, dict) else None for table in tables]
        rows.append([name, round(float(accuracy) * 100, 2),
                     *[None if not isinstance(value, (int, float)) else round(float(value) * 100, 2) for value in extra]])
    return rows
