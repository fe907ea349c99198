"""The model card (README.md of a model folder): Hub metadata with model-index, and a body a person reads."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from tl_space.folder.files import CARD_FILE, REPORT_PLOTS
from tl_space.markdown import code, text
from tl_space.folder.summary import PER_CLASS_HEADERS, per_class_rows, run_summary
from tl_space.strategies import STRATEGIES, keeps_batchnorm_statistics

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

An image classifier for {{ num_classes }} classes ({{ class_list }}), trained with
tl-space by transfer learning: **{{ strategy }}** of the timm model
{{ architecture }}{% if base_model %}, starting from the ImageNet weights of {{ base_model }}{% else %}, from random initialisation{% endif %}.

## Results

{% for paragraph in summary %}{{ paragraph }}

{% endfor %}| {{ per_class_headers | join(" | ") }} |
|---|---|---|---|
{% for row in per_class %}| {{ row[0] }} |{% for value in row[1:] %} {{ "-" if value is none else "%.2f" | format(value) }} |{% endfor %}
{% endfor %}

{% for file, title in plots %}![{{ title }}]({{ file }})

{% endfor %}{% if misclassified_count %}The {{ misclassified_count }} most confident mistakes are in `misclassified/`, listed in `misclassified.json`.{% endif %}

## Training

| setting | value |
|---|---|
| strategy | {{ strategy }} |
| epochs | {{ epochs_run }} |
| test images | {{ test_source }} |
| image size | {{ image_size }} px ({{ interpolation }} resize, mean {{ mean }}, std {{ std }}) |
| training images | {{ train_images }} (validation: {{ val_images }}) |
| BatchNorm while training | {{ batchnorm }} |
| trainable parameters | {{ "{:,}".format(trainable_parameters) }} of {{ "{:,}".format(total_parameters) }} |
| batch size | {{ batch_size }} |
| learning rate | {{ lr }} |
| weight decay | {{ weight_decay }} |
| validation images | {{ validation_source }} |
| calibration | {{ calibration_note }} |
| hardware | {{ hardware }} |
| wall time | {{ "%.1f" | format(total_minutes) }} min ({{ "%.0f" | format(images_per_second) }} training images/s) |

Every setting of the run is in `metrics.json` under `settings`.

## How to use

```python
import timm, torch
from PIL import Image

model = timm.create_model("{{ model_reference }}", pretrained=True).eval()
config = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**config)
with torch.inference_mode():
    probabilities = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)
print(model.pretrained_cfg["label_names"][probabilities.argmax()])
```

To see it with a top-5 bar, example images, its mistakes and this report, serve it with tl-space's Gradio app:
`MODEL_ID={{ app_model_id }} python app.py`.
"""


BATCHNORM_WORDS = {True: "the backbone's pretrained statistics, kept fixed",
                   False: "batch statistics, running ones updated"}


def is_hub_id(name: str) -> bool:
    """'owner/name' and nothing that looks like a local path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(name).exists()


def build_model_card(metrics: dict, misclassified: list[dict]) -> ModelCard:
    """A ModelCard whose metadata holds the test accuracy in model-index, so the Hub shows it."""
    settings, test = metrics["settings"], metrics["test"]
    dataset_id = settings["dataset"] if is_hub_id(settings["dataset"]) else None
    model_name = Path(settings["output_dir"]).name
    base_model = metrics["model"].get("base_model")
    card_data = ModelCardData(
        library_name="timm",
        license="apache-2.0",
        pipeline_tag="image-classification",
        tags=["image-classification", "transfer-learning", "timm", "tl-space"],
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        metrics=["accuracy"],
        model_name=model_name,
        eval_results=[EvalResult(task_type="image-classification", task_name="Image Classification",
                                 dataset_type=dataset_id or settings["dataset"],
                                 dataset_name=dataset_id or Path(settings["dataset"]).name,
                                 dataset_split=settings["train_split"] if metrics["data"].get("carved_test_fraction")
                                 else settings["test_split"], metric_type="accuracy", metric_name="Accuracy",
                                 metric_value=round(test["accuracy"], 4))],
    )
    preprocessing, hardware = metrics["preprocessing"], metrics["hardware"]
    device = hardware["gpu"] or hardware.get("cpu") or hardware["device"]  # runs before the cpu field: none
    return ModelCard.from_template(
        card_data, template_str=CARD_TEMPLATE,
        model_reference=f"hf-hub:{settings['hub_model_id']}" if settings.get("hub_model_id") else "local-dir:PATH_TO_THIS_FOLDER",
        app_model_id=settings.get("hub_model_id") or "PATH_TO_THIS_FOLDER",
        model_name=model_name, num_classes=len(metrics["data"]["class_names"]),
        # Class names and settings may be anyone's text (a taught model's classes are a visitor's): escaped, so the
        # Hub renders them as written, never as links, images or HTML.
        class_list=", ".join(text(name) for name in metrics["data"]["class_names"][:20])
        + ("…" if len(metrics["data"]["class_names"]) > 20 else ""),
        strategy=text(settings["strategy"]), architecture=code(metrics["model"]["architecture"]),
        base_model=code(base_model) if base_model else None,
        summary=run_summary(metrics, code, text),
        per_class=[[text(name), *values] for name, *values in per_class_rows(test)], per_class_headers=PER_CLASS_HEADERS,
        misclassified_count=len(misclassified), plots=list(REPORT_PLOTS.items()), epochs_run=len(metrics["history"]),
        image_size=preprocessing["image_size"], interpolation=preprocessing["interpolation"],
        mean=preprocessing["mean"], std=preprocessing["std"],
        train_images=metrics["data"]["train_images"], val_images=metrics["data"]["val_images"],
        # Folders written before --batchnorm existed trained in PyTorch's train mode.
        batchnorm=BATCHNORM_WORDS[keeps_batchnorm_statistics(STRATEGIES[settings["strategy"]],
                                                             settings.get("batchnorm", "batch"))],
        trainable_parameters=metrics["trainable_parameters"], total_parameters=metrics["total_parameters"],
        batch_size=settings["batch_size"], lr=stage_learning_rates(metrics["history"]),
        # Folders written before the dataset's own splits were used held validation out of train, tested on "test".
        test_source=text(metrics["data"].get("test_source", f"the dataset's {settings['test_split']!r} split")),
        validation_source=text(metrics["data"].get("validation_source", "held out of train")),
        calibration_note=text(calibration_note(metrics.get("calibration"))),
        weight_decay=settings["weight_decay"],
        hardware=f"{device} × {hardware['processes']} process(es), mixed precision {hardware['mixed_precision']}",
        total_minutes=metrics["timing"]["total_seconds"] / 60,
        images_per_second=metrics["timing"]["train_images_per_second"],
    )


def calibration_note(calibration: dict | None) -> str:
    """The card's calibration row: the temperature and what it was fitted on, or why there is none."""
    if not calibration:
        return "none"
    if calibration.get("skipped"):
        return calibration["skipped"]
    return f"temperature {float(calibration['temperature']):.3f}, fitted on the {calibration['fitted_on']}"


def stage_learning_rates(history: list[dict]) -> str:
    """Each stage's peak learning rate, in the order the stages ran ("linear-probe: L-BFGS, finetune: 0.0001")."""
    rates = {}
    for entry in history:
        rates.setdefault(entry["stage"], "L-BFGS" if entry.get("lr") is None else str(entry["lr"]))
    return ", ".join(f"{stage}: {rate}" for stage, rate in rates.items()) or "none (nothing trained)"


def write_model_card(folder: Path, metrics: dict, misclassified: list[dict]) -> Path:
    path = Path(folder) / CARD_FILE
    build_model_card(metrics, misclassified).save(path)
    return path
