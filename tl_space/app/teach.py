"""Teach the served model new classes in seconds: its frozen backbone's features of a visitor's images, a head started
at the class means and refined by logistic regression, cross-validated, and given back as a complete model folder."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from huggingface_hub import HfApi
from PIL import Image
from torch import nn

from tl_space import hub
from tl_space.app import storage as storage_module
from tl_space import model as model_module
from tl_space.errors import UserError
from tl_space.folder import metrics as metrics_schema
from tl_space.folder.metrics import metrics_record
from tl_space.folder.read import LoadedModel
from tl_space.folder.write import write_model_folder
from tl_space.images import image_tensor
from tl_space.settings import TrainSettings
from tl_space.training.calibration import calibration_report
from tl_space.training.evaluation import classification_metrics, misclassified_records
from tl_space.transforms import images_to_model_input

MIN_CLASSES, MAX_CLASSES = 2, 10
MAX_PER_CLASS = 50
MAX_NAME_LENGTH = 50
MAX_TEACH_IMAGES = 500
MAX_FOLDS = 10
FEATURE_BATCH = 32
L2 = 1e-3  # on the head's weights, against a mean cross-entropy: the features are few, the classes fewer
LBFGS_STEPS = 20


@dataclass
class TaughtModel:
    """A visitor's classes and the head that tells them apart on the served model's backbone features."""

    class_names: list[str]
    weight: torch.Tensor  # (classes, features)
    bias: torch.Tensor
    temperature: float
    summary: dict
    archive: Path  # the complete model folder as a zip, the one copy kept (Gradio serves it from where it lies)

    @property
    def entry(self) -> Path:
        """The storage entry holding the zip: removed when the visitor re-teaches, leaves, or storage is full."""
        return self.archive.parent


def class_of(file_name: str) -> str:
    """The class a /teach file names: its name up to the first underscore (cat_01.png: cat)."""
    stem = Path(file_name).name.split("_", 1)[0].split(".", 1)[0].strip()
    if not stem or len(stem) > MAX_NAME_LENGTH:
        raise ValueError("its name does not start with a class name and an underscore, e.g. cat_01.png")
    return stem


@torch.inference_mode()
def backbone_features(loaded: LoadedModel, images: list[Image.Image], progress=lambda fraction: None) -> torch.Tensor:
    """The served model's pooled features of each image, with its own preprocessing, under its lock."""
    features = []
    for start in range(0, len(images), FEATURE_BATCH):
        batch = images_to_model_input(images[start:start + FEATURE_BATCH], loaded.preprocessing)
        with loaded.lock:
            features.append(model_module.pooled_features(loaded.model, batch))
        progress(min(1.0, (start + FEATURE_BATCH) / len(images)))
    return torch.cat(features).float()


def class_means_head(features: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias of a linear head at the normalised class means (the same rule as --head-init class-means)."""
    return model_module.class_mean_weights(features, labels, classes), torch.zeros(classes)


def fit_head(features: torch.Tensor, labels: torch.Tensor, classes: int,
             start: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression started at the class means (start, when already computed), refined by
    full-batch L-BFGS with an L2 penalty: training's solver for heads on cached features."""
    weight, bias = start if start else class_means_head(features, labels, classes)
    return model_module.fit_logistic_head(features, labels, weight, bias, L2, LBFGS_STEPS)


def cross_validated_logits(features: torch.Tensor, labels: torch.Tensor, classes: int
                           ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each image's logits from a head fitted without it: up to MAX_FOLDS folds dealt round-robin within each class
    (every class needs 2 images, so that each fold leaves one of it to fit on). Returns the logistic-regression
    logits, the class-mean logits, and the number of folds that held images out."""
    folds = min(MAX_FOLDS, int(torch.bincount(labels).max()))
    fold_of = torch.empty_like(labels)
    for class_index in range(classes):
        members = torch.nonzero(labels == class_index).flatten()
        fold_of[members] = torch.arange(len(members)) % folds
    fitted, means = torch.zeros(len(labels), classes), torch.zeros(len(labels), classes)
    for fold in range(folds):
        held, kept = fold_of == fold, fold_of != fold
        start = class_means_head(features[kept], labels[kept], classes)
        weight, bias = fit_head(features[kept], labels[kept], classes, start)
        fitted[held] = features[held] @ weight.T + bias
        means[held] = F.normalize(features[held], dim=1) @ F.normalize(start[0], dim=1).T
    return fitted, means, folds


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: a head on a few hundred feature rows is made of tiny operations, and a second thread
    only spins waiting for them (11 fits took 31 s on 2 threads beside another busy process, 0.3 s on one). Safe
    here: every event that runs torch work shares the app's one model queue."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def can_cross_validate(counts: list[int]) -> str | None:
    """None when every class has the 2 images cross-validation needs; else the sentence saying why it is skipped."""
    if min(counts) >= 2:
        return None
    return ("not cross-validated: a class with 1 image leaves none of it to fit on when it is held out, so the "
            "accuracy shown is on the taught images themselves")


def teach(loaded: LoadedModel, examples: dict[str, list[Image.Image]], skipped: list[str],
          progress=lambda fraction, text: None, store: storage_module.Storage | None = None) -> TaughtModel:
    """Fit a head for the visitor's classes on the served backbone; cross-validate and calibrate it where the images
    allow (the summary says why not otherwise); write its model folder as a zip into store (the app's storage)."""
    started = time.perf_counter()
    empty = [name for name, images in examples.items() if not images]
    if empty:
        raise UserError(f"Class {empty[0]!r} has no usable image; give it at least one.")
    crowded = [name for name, images in examples.items() if len(images) > MAX_PER_CLASS]
    if crowded:
        raise UserError(f"Class {crowded[0]!r} has {len(examples[crowded[0]])} images; give each class at most "
                        f"{MAX_PER_CLASS}.")
    if not MIN_CLASSES <= len(examples) <= MAX_CLASSES:
        raise UserError(f"Teach {MIN_CLASSES} to {MAX_CLASSES} classes; {len(examples)} were given.")
    names = list(examples)
    images = [image for name in names for image in examples[name]]
    if len(images) > MAX_TEACH_IMAGES:
        raise UserError(f"Teach at most {MAX_TEACH_IMAGES} images at once; {len(images)} were given.")
    labels = torch.tensor([index for index, name in enumerate(names) for _ in examples[name]])
    counts = torch.bincount(labels, minlength=len(names)).tolist()
    # A copy made outside inference mode: the head's fit needs autograd.
    features = backbone_features(loaded, images, lambda fraction: progress(0.8 * fraction, "features")).clone()
    progress(0.8, "fitting the head")
    not_cross_validated = can_cross_validate(counts)
    with one_thread():
        weight, bias = fit_head(features, labels, len(names))
        own_logits = features @ weight.T + bias  # the final head on the images it was fitted on
        if not_cross_validated:
            fitted, means, folds = own_logits, None, 0
        else:
            fitted, means, folds = cross_validated_logits(features, labels, len(names))
    if not_cross_validated:
        report = calibration_report(fitted[:0], labels[:0], fitted, labels)
        report["skipped"] = "not calibrated (temperature 1): no held-out predictions to fit a temperature on"
    else:
        report = calibration_report(fitted, labels, fitted, labels)
        report["fitted_on"] = "cross-validated predictions"
    test = classification_metrics(fitted, labels, names)
    summary = {"classes": names, "images_per_class": dict(zip(names, counts)),
               "cross_validated_accuracy": None if not_cross_validated else accuracy(fitted, labels),
               "class_mean_accuracy": None if means is None else accuracy(means, labels),
               "taught_images_accuracy": accuracy(own_logits, labels),
               "chance": max(counts) / len(labels), "folds": folds, "not_cross_validated": not_cross_validated,
               "temperature": report["temperature"], "not_calibrated": report.get("skipped"),
               "seconds": round(time.perf_counter() - started, 2), "skipped": skipped,
               "confusion_matrix": test["confusion_matrix"]}
    store = store or storage_module.storage()
    entry = store.new_entry("taught-")
    try:
        folder = _write_folder(loaded, names, weight, bias, fitted, labels, images, report, test, summary,
                               entry / "taught-model")
        archive = Path(shutil.make_archive(str(folder), "zip", folder.parent, folder.name))
        shutil.rmtree(folder)  # the zip is the one copy kept
    except BaseException:
        store.remove(entry)
        raise
    store.add(entry)
    progress(1.0, "done")
    return TaughtModel(names, weight, bias, report["temperature"], summary, archive)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def taught_network(loaded: LoadedModel, taught_weight: torch.Tensor, taught_bias: torch.Tensor) -> nn.Module:
    """A copy of the served model whose head is the taught one."""
    with loaded.lock:
        network = copy.deepcopy(loaded.model)
    network.reset_classifier(len(taught_bias))
    head = network.get_classifier()
    if not isinstance(head, nn.Linear):
        raise UserError("This model's head is not linear: it cannot be taught new classes here.")
    with torch.no_grad():
        head.weight.copy_(taught_weight)
        head.bias.copy_(taught_bias)
    return network.eval()


def _write_folder(loaded: LoadedModel, names: list[str], weight: torch.Tensor, bias: torch.Tensor,
                  fitted: torch.Tensor, labels: torch.Tensor, images: list[Image.Image], report: dict, test: dict,
                  summary: dict, folder: Path) -> Path:
    """The taught model as a complete model folder at folder, its test section (test) from the cross-validated
    predictions (fitted), or from the head's own predictions on the taught images where they were too few."""
    network = taught_network(loaded, weight, bias)
    architecture = network.pretrained_cfg.get("architecture", type(network).__name__)
    settings = TrainSettings(dataset="images taught in the tl-space app", model=architecture, strategy="linear-probe",
                             epochs=1, output_dir="taught",
                             test_split="taught images" if summary["not_cross_validated"] else "cross-validation",
                             max_misclassified=16,
                             cache_dir="none").published()
    test = {**test, "best_epoch": 0}
    count = len(labels)
    metrics = metrics_record(
        history=[], stopped_by="no training", test=test, settings=settings,
        model={"architecture": architecture, "base_model": metrics_schema.base_model(loaded.metrics),
               "pretrained_file": None},
        calibration=report, flip_tta=None, preprocessing=loaded.preprocessing.to_dict(),
        data={"train_images": count, "val_images": count, "test_images": count,
              "train_images_per_class": summary["images_per_class"], "class_names": names, "image_column": "image",
              "label_column": "label"},
        trainable_parameters=weight.numel() + bias.numel(),
        total_parameters=sum(parameter.numel() for parameter in network.parameters()),
        timing={"total_seconds": summary["seconds"], "data_seconds": summary["seconds"], "training_seconds": 0.0,
                "evaluation_seconds": 0.0, "train_images_per_second": 0.0},
        hardware={"device": "cpu", "processes": 1, "mixed_precision": "no", "gpu": None},
    )
    mistakes = misclassified_records(fitted / report["temperature"], labels, names, settings["max_misclassified"])
    shown = torch.cat([image_tensor(image, 96) if min(image.size) >= 96 else
                       image_tensor(image.resize((96, 96)), 96) for image in images])
    write_model_folder(folder, network, names, loaded.preprocessing, metrics, mistakes, shown)
    return folder


@torch.inference_mode()
def taught_batch_probabilities(loaded: LoadedModel, taught: TaughtModel, images: list[Image.Image]) -> torch.Tensor:
    """(N, taught classes) calibrated probabilities of a batch of images."""
    features = backbone_features(loaded, images)
    return ((features @ taught.weight.T + taught.bias) / taught.temperature).softmax(dim=1)


def taught_probabilities(loaded: LoadedModel, taught: TaughtModel, image: Image.Image) -> dict[str, float]:
    """Calibrated probabilities of the taught classes for one image."""
    return dict(zip(taught.class_names, taught_batch_probabilities(loaded, taught, [image])[0].tolist()))


@contextlib.contextmanager
def taught_head(loaded: LoadedModel, taught: TaughtModel) -> Iterator[LoadedModel]:
    """The served model wearing the taught head (and its class names), for hooks such as Grad-CAM; under the model's
    lock, so no other request sees it, and its own head back afterwards."""
    classifier = loaded.model.get_classifier()
    parent_name, _, attribute = next(name for name, module in loaded.model.named_modules()
                                     if module is classifier).rpartition(".")
    parent = loaded.model.get_submodule(parent_name) if parent_name else loaded.model
    head = nn.Linear(taught.weight.shape[1], len(taught.class_names))
    with torch.no_grad():
        head.weight.copy_(taught.weight)
        head.bias.copy_(taught.bias)
    with loaded.lock:
        setattr(parent, attribute, head)
        try:
            yield dataclasses.replace(loaded, label_names=taught.class_names)
        finally:
            setattr(parent, attribute, classifier)


REPO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def push_taught(archive: Path, repo_name: str, oauth_token: str | None, operator_token_allowed: bool) -> str:
    """Upload a taught model (its zip, unpacked for the upload) to the visitor's own account as USER/repo_name;
    returns the repo id.

    The visitor's sign-in token (OAuth) is the only one used, unless the operator allowed their own
    (operator_token_allowed: PUSH_WITH_SERVER_TOKEN=1 on a server only this machine reaches). The token is never
    shown or written anywhere."""
    repo_name = (repo_name or "").strip()
    if not REPO_NAME.match(repo_name):
        raise UserError("Name the repo with letters, digits, '-', '_' or '.', e.g. my-taught-classes.")
    if not oauth_token and not operator_token_allowed:
        raise UserError("Sign in with Hugging Face (the button above) to push to your own account; run locally, "
                        "start the app with PUSH_WITH_SERVER_TOKEN=1 to push with your own HF_TOKEN.")
    if not archive.is_file():
        raise UserError("This taught model's files were removed to make room for others; teach it again to push it.")
    # HfApi() reads the server's HF_TOKEN or saved login: only where the operator allowed it above.
    api = HfApi(token=oauth_token) if oauth_token else HfApi()
    try:
        user = api.whoami()["name"]
    except Exception as error:  # no token, a refused one, or no network: the same advice
        raise UserError("Pushing needs a Hugging Face token with write access: sign in, or run locally with "
                        "HF_TOKEN set.") from error
    repo_id = hub.check_push_access(f"{user}/{repo_name}", api)
    with tempfile.TemporaryDirectory(dir=archive.parent) as unpacked:
        shutil.unpack_archive(archive, unpacked, "zip")
        hub.push_model_folder(Path(unpacked) / archive.stem, repo_id, api=api,
                              commit_message="A model taught in the tl-space app")
    return repo_id
