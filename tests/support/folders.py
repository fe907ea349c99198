"""A model folder in seconds: test_resnet with the stand-in pretrained weights, evaluated (not trained) on colour
images, written by the folder package as train.py writes one. For the fast tests of what reads and serves folders."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from tl_space.folder.metrics import MetricsRecord, StoppedBy
from tl_space.folder.write import write_model_folder
from tl_space.images import image_tensor
from tl_space.model import create_model
from tl_space.training.calibration import calibration_report
from tl_space.training.evaluation import classification_metrics, misclassified_records
from tl_space.transforms import preprocessing_for, to_model_input


def quick_model_folder(folder: Path, pretrained_file: Path, class_names: list[str], images, labels: list[int],
                       image_size: int = 32) -> Path:
    torch.manual_seed(0)
    model = create_model("test_resnet", len(class_names), pretrained=True, pretrained_file=str(pretrained_file),
                         image_size=image_size).eval()
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model), image_size)
    stored = torch.cat([image_tensor(image, image_size) for image in images])
    labels = torch.tensor(labels)
    with torch.inference_mode():
        logits = model(to_model_input(stored, preprocessing))
    test = {**classification_metrics(logits, labels, class_names), "best_epoch": 0}
    calibration = calibration_report(logits, labels, logits, labels)
    metrics = MetricsRecord(
        history=[], stopped_by=StoppedBy.NO_TRAINING, test=test,
        settings={"strategy": "linear-probe", "dataset": "colours", "model": "test_resnet", "output_dir": folder.name,
                  "train_split": "train", "test_split": "test", "batch_size": 32, "weight_decay": 0.0},
        model={"architecture": "test_resnet", "base_model": None, "pretrained_file": Path(pretrained_file).name},
        calibration=calibration, flip_tta=None, preprocessing=preprocessing.to_dict(),
        data={"train_images": len(labels), "val_images": len(labels), "test_images": len(labels),
              "class_names": class_names},
        trainable_parameters=0, total_parameters=sum(p.numel() for p in model.parameters()),
        timing={"total_seconds": 1.0, "data_seconds": 1.0, "training_seconds": 0.0, "evaluation_seconds": 0.0,
                "train_images_per_second": 0.0},
        hardware={"device": "cpu", "processes": 1, "mixed_precision": "no", "gpu": None})
    mistakes = misclassified_records(logits, labels, class_names, 16)
    return write_model_folder(folder, model, class_names, preprocessing, metrics, mistakes, stored)
