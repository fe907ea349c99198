"""The served model: one object owning the model, its lock and its preprocessing, through which every request runs it.

Requests run at once on the one shared model (Grad-CAM and feature maps hook it, Teach swaps its head), so every
forward pass here holds the lock, and no other module takes it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch import nn

from tl_space import hub
from tl_space.app import explain
from tl_space.errors import UserError
from tl_space.folder import metrics as metrics_schema
from tl_space.folder.files import STUDY_FILE, display_name
from tl_space.folder.read import ModelFolder, is_study_folder, read_model_folder, study_best_run
from tl_space.model import pooled_features
from tl_space.transforms import Preprocessing, images_to_model_input, to_model_input

FEATURE_BATCH = 32  # images per forward pass of Teach's features


@dataclass(eq=False)
class ServedModel:
    """A model folder as the app serves it: the model (eval, CPU) and what of the folder is checked and public."""

    model: nn.Module
    label_names: list[str]
    preprocessing: Preprocessing
    metrics: dict
    misclassified: list[dict]  # records that passed check_mistakes, each with its image in mistake_images
    folder: Path
    source: str
    study_folder: Path | None = None  # a study (study.json and its plots) to show beside the model
    mistake_images: list[Image.Image] = field(default_factory=list)
    plots: dict[str, Image.Image] = field(default_factory=dict)  # file name -> decoded PNG
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _backbones: dict = field(default_factory=dict, repr=False)  # pretrained_file -> (backbone or None, its note)

    @classmethod
    def of_folder(cls, contents: ModelFolder, source: str, study_folder: Path | None = None) -> ServedModel:
        return cls(contents.model, contents.label_names, contents.preprocessing, contents.metrics,
                   contents.misclassified, contents.folder, source, study_folder, contents.mistake_images,
                   contents.plots)

    @property
    def name(self) -> str:
        return display_name(self.source)

    @property
    def temperature(self) -> float:
        return metrics_schema.temperature(self.metrics)

    @property
    def flip_tta(self) -> bool:
        return metrics_schema.flip_tta_enabled(self.metrics)

    @property
    def upload_side(self) -> int:
        """How wide an upload's centre square is kept at least: what the model and the heatmaps' display need."""
        return max(explain.DISPLAY_SIZE, self.preprocessing.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, classes) calibrated probabilities of a batch of images, with the model's own resize, mean and std
        (averaged with each mirror image's logits when the folder enables flip test-time augmentation), on the CPU."""
        inputs = images_to_model_input(images, self.preprocessing).to(self.device)
        if self.flip_tta:  # the folder measured a gain from averaging with the mirror image
            inputs = torch.cat([inputs, inputs.flip(-1)])
        with self.lock:
            logits = self.model(inputs).float()
        if self.flip_tta:
            logits = (logits[:len(images)] + logits[len(images):]) / 2
        return (logits / self.temperature).softmax(dim=1).cpu()

    def class_probabilities(self, image: Image.Image) -> dict[str, float]:
        """Calibrated probability of every class for one image."""
        return {name: float(p) for name, p in zip(self.label_names, self.probabilities([image])[0])}

    @torch.inference_mode()
    def predicted_classes(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """The predicted class of each uint8 image (N, 3, H, W), batch by batch (no calibration, no flip)."""
        predicted = []
        for start in range(0, len(images), batch_size):
            inputs = to_model_input(images[start:start + batch_size], self.preprocessing)
            with self.lock:
                predicted.append(self.model(inputs).argmax(dim=1))
        return torch.cat(predicted)

    @torch.inference_mode()
    def features(self, images: list[Image.Image], progress: Callable[[float], None] = lambda fraction: None
                 ) -> torch.Tensor:
        """The backbone's pooled features of each image, with the model's own preprocessing, batch by batch."""
        features = []
        for start in range(0, len(images), FEATURE_BATCH):
            batch = images_to_model_input(images[start:start + FEATURE_BATCH], self.preprocessing)
            with self.lock:
                features.append(pooled_features(self.model, batch))
            progress(min(1.0, (start + FEATURE_BATCH) / len(images)))
        return torch.cat(features).float()

    def heatmaps(self, image: Image.Image, class_names: list[str]) -> list[Image.Image]:
        """The image as the model sees it, shown large, with each class's Grad-CAM heatmap over it."""
        unknown = [name for name in class_names if name not in self.label_names]
        if unknown:
            raise UserError(f"Pick one of the model's classes, not {str(unknown[0])[:100]!r}.")
        explain.check_feature_maps(self.model)
        inputs = images_to_model_input([image], self.preprocessing)
        with self.lock:
            maps = explain.class_activation_maps(self.model, inputs, [self.label_names.index(name)
                                                                      for name in class_names],
                                                 self.preprocessing.image_size)
        return explain.heatmap_overlays(image, maps)

    def feature_maps(self, image: Image.Image, pretrained_file: str | None = None) -> tuple[Image.Image, str]:
        """The strongest channels of an early, a middle and the last stage, beside those of the pretrained backbone
        the model started from (loaded on first use, then kept), and a sentence saying which."""
        explain.check_feature_maps(self.model)
        inputs = images_to_model_input([image], self.preprocessing)
        with self.lock:  # hooks on the shared model; two first uses load the backbone once
            if pretrained_file not in self._backbones:
                self._backbones[pretrained_file] = explain.pretrained_backbone(
                    self.metrics, self.model, len(self.label_names), pretrained_file)
            backbone, note = self._backbones[pretrained_file]
            models = {"this model": self.model} | ({"pretrained backbone": backbone} if backbone else {})
            by_model = {title: explain.strongest_feature_maps(model, inputs) for title, model in models.items()}
        return explain.feature_map_figure(by_model), note

    @contextlib.contextmanager
    def with_head(self, weight: torch.Tensor, bias: torch.Tensor, class_names: list[str]) -> Iterator[ServedModel]:
        """The served model wearing another linear head (a taught one) and its class names, for hooks such as
        Grad-CAM; under the lock, so no other request sees it, and its own head back afterwards."""
        head = nn.Linear(weight.shape[1], len(class_names))
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        with self.lock:  # the own head is looked up under the lock too: another request may be wearing its own
            classifier = self.model.get_classifier()
            parent_name, _, attribute = next(name for name, module in self.model.named_modules()
                                             if module is classifier).rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, attribute, head)
            try:
                yield dataclasses.replace(self, label_names=list(class_names))
            finally:
                setattr(parent, attribute, classifier)

    def copy_with_head(self, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
        """A copy of the model (eval) whose head is the given linear one."""
        with self.lock:
            network = copy.deepcopy(self.model)
        network.reset_classifier(len(bias))
        head = network.get_classifier()
        if not isinstance(head, nn.Linear):
            raise UserError("This model's head is not linear: it cannot be taught new classes here.")
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        return network.eval()


def top_classes(probabilities: dict[str, float], count: int = 5) -> list[str]:
    return sorted(probabilities, key=probabilities.get, reverse=True)[:count]


def load_served_model(source: str, study_source: str | None = None) -> ServedModel:
    """The trained classifier and its folder's checked metrics, mistakes and plots, from a Hub id or a local folder.

    A study folder (or repo) serves its best run and shows the study; study_source adds a study to any model.
    Anything in the folder that cannot be served raises a UserError that names no server path.
    """
    name = display_name(source)
    folder = hub.resolve_folder(source)
    study_folder = hub.resolve_folder(study_source, "study") if study_source else None
    if is_study_folder(folder):
        study_folder = study_folder or folder
        folder = study_best_run(folder, name)
    if study_folder is not None and not (study_folder / STUDY_FILE).is_file():
        raise UserError(f"study {display_name(study_source)!r} has no {STUDY_FILE}: not a folder written by "
                        "tl_space.study")
    return ServedModel.of_folder(read_model_folder(folder, name), source, study_folder)
