"""Teach the served model new classes in seconds: its frozen backbone's features of a visitor's images, a head started
at the class means and refined by logistic regression, cross-validated, and given back as a complete model folder."""

from __future__ import annotations

import contextlib
import csv
import logging
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

from tl_space import hub
from tl_space import model as model_module
from tl_space.app import storage as storage_module
from tl_space.app.served import ServedModel
from tl_space.errors import UserError
from tl_space.folder import metrics as metrics_schema
from tl_space.folder.write import write_head_folder
from tl_space.images import image_tensor
from tl_space.settings import ProbeSolver
from tl_space.training.calibration import calibration_report, cross_fitted_report
from tl_space.training.evaluation import classification_metrics, misclassified_records

MIN_CLASSES, MAX_CLASSES = 2, 10
MAX_PER_CLASS = 50
MAX_NAME_LENGTH = 50
MAX_TEACH_IMAGES = 500
MAX_FOLDS = 10
L2 = 1e-3  # on the head's weights, against a mean cross-entropy: the features are few, the classes fewer
LBFGS_STEPS = 20
MAX_SHOWN_MISTAKES = 16  # of the taught folder's misclassified/
MAX_CLASSIFY_MANY = 200  # images of one /classify_many request
MANY_BATCH_SIZE = 8  # images decoded and classified together by /classify_many
MANY_HEADERS = ["file", "top 1", "top 2", "top 3", "top-1 probability"]
logger = logging.getLogger("tl_space.app")


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


def class_name_of_row(row: int, value: object) -> str:
    """A Teach row's class name, its spaces collapsed; a UserError when it is blank or too long."""
    name = " ".join(str(value or "").split())
    if not name:
        raise UserError(f"Name class {row + 1}.")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"Class {row + 1}'s name is longer than {MAX_NAME_LENGTH} characters.")
    return name


def files_by_class(names_and_paths: list[tuple[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """/teach's files (file name, path) grouped by the class their names start with (cat_01.png: cat), at most
    MAX_PER_CLASS each; a line naming each file left out and why."""
    grouped: dict[str, list[str]] = {}
    skipped: list[str] = []
    for name, path in names_and_paths:
        try:
            members = grouped.setdefault(class_of(name), [])
        except ValueError as error:
            skipped.append(f"{name}: {error}")
            continue
        if len(members) >= MAX_PER_CLASS:
            skipped.append(f"{name}: its class already has {MAX_PER_CLASS} images, the most taught")
            continue
        members.append(path)
    return grouped, skipped


def sample_images(sample, class_name: str, wanted: object, room: int, taught_name: str
                  ) -> tuple[list[Image.Image], list[str]]:
    """Up to `wanted` test-sample images of class_name (a TestSample's), within the room left in a taught class; a
    line saying what did not fit."""
    if sample is None or class_name not in sample.class_names or not wanted:
        return [], []
    members = torch.nonzero(sample.labels == sample.class_names.index(class_name)).flatten()
    wanted = min(max(0, int(wanted)), len(members))
    skipped = []
    if wanted > room:
        skipped.append(f"{taught_name}: {wanted - room} of the {wanted} CIFAR-10 images asked for, past the "
                       f"{MAX_PER_CLASS} a class is taught")
    return [sample.image(index) for index in members[:max(0, min(wanted, room))].tolist()], skipped


def predictions_table(predictions: list, skipped: list[str]) -> tuple[list[list], Path]:
    """/classify_many's rows (the least sure first, then each file left out) and the same as a CSV in storage."""
    rows = [[prediction.name, *[f"{label} ({probability:.1%})" for label, probability in prediction.ranked],
             prediction.confidence] for prediction in sorted(predictions, key=lambda found: found.confidence)]
    rows += [[line, "", "", "", None] for line in skipped]
    store = storage_module.storage()
    entry = store.new_entry("table-")
    with open(entry / "predictions.csv", "w", newline="") as file:
        csv.writer(file).writerows([MANY_HEADERS, *rows])
    store.add(entry)
    return rows, entry / "predictions.csv"


def class_of(file_name: str) -> str:
    """The class a /teach file names: its name up to the first underscore (cat_01.png: cat)."""
    stem = Path(file_name).name.split("_", 1)[0].split(".", 1)[0].strip()
    if not stem or len(stem) > MAX_NAME_LENGTH:
        raise ValueError("its name does not start with a class name and an underscore, e.g. cat_01.png")
    return stem


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
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image's logits from a head fitted without it: up to MAX_FOLDS folds dealt round-robin within each class
    (every class needs 2 images, so that each fold leaves one of it to fit on). Returns the logistic-regression
    logits, the class-mean logits, and each image's fold."""
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
    return fitted, means, fold_of


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


def teach(served: ServedModel, examples: dict[str, list[Image.Image]], skipped: list[str],
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
    features = served.features(images, lambda fraction: progress(0.8 * fraction, "features")).clone()
    progress(0.8, "fitting the head")
    not_cross_validated = can_cross_validate(counts)
    with one_thread():
        weight, bias = fit_head(features, labels, len(names))
        own_logits = features @ weight.T + bias  # the final head on the images it was fitted on
        if not_cross_validated:
            fitted, means, folds = own_logits, None, 0
        else:
            fitted, means, fold_of = cross_validated_logits(features, labels, len(names))
            folds = len(fold_of.unique())
    if not_cross_validated:
        report = calibration_report(fitted[:0], labels[:0], fitted, labels)
        report["skipped"] = "not calibrated (temperature 1): no held-out predictions to fit a temperature on"
    else:
        report = cross_fitted_report(fitted, labels, fold_of)
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
        folder = _write_folder(served, names, weight, bias, fitted, labels, images, report, test, summary,
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


def _write_folder(served: ServedModel, names: list[str], weight: torch.Tensor, bias: torch.Tensor,
                  fitted: torch.Tensor, labels: torch.Tensor, images: list[Image.Image], report: dict, test: dict,
                  summary: dict, folder: Path) -> Path:
    """The taught model as a complete model folder at folder, its test section (test) from the cross-validated
    predictions (fitted), or from the head's own predictions on the taught images where they were too few."""
    mistakes = misclassified_records(fitted / report["temperature"], labels, names, MAX_SHOWN_MISTAKES)
    shown = torch.cat([image_tensor(image, 96) if min(image.size) >= 96 else
                       image_tensor(image.resize((96, 96)), 96) for image in images])
    return write_head_folder(
        folder, served.copy_with_head(weight, bias), names, served.preprocessing,
        base_model=metrics_schema.base_model(served.metrics), solver=ProbeSolver.LBFGS.value, l2=L2,
        evaluated_on="taught images" if summary["not_cross_validated"] else "cross-validation",
        test={**test, "best_epoch": 0}, calibration=report, images_per_class=summary["images_per_class"],
        seconds=summary["seconds"], mistakes=mistakes, shown_images=shown)


def taught_batch_probabilities(served: ServedModel, taught: TaughtModel, images: list[Image.Image]) -> torch.Tensor:
    """(N, taught classes) calibrated probabilities of a batch of images."""
    features = served.features(images)
    return ((features @ taught.weight.T + taught.bias) / taught.temperature).softmax(dim=1)


def taught_probabilities(served: ServedModel, taught: TaughtModel, image: Image.Image) -> dict[str, float]:
    """Calibrated probabilities of the taught classes for one image."""
    return dict(zip(taught.class_names, taught_batch_probabilities(served, taught, [image])[0].tolist()))


def taught_heatmaps(served: ServedModel, taught: TaughtModel, image: Image.Image, class_names: list[str]
                    ) -> list[Image.Image]:
    """Grad-CAM of taught classes: the served model wearing the taught head."""
    with served.with_head(taught.weight, taught.bias, taught.class_names) as view:
        return view.heatmaps(image, class_names)


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
    try:
        with tempfile.TemporaryDirectory(dir=archive.parent) as unpacked:
            shutil.unpack_archive(archive, unpacked, "zip")
            hub.push_model_folder(Path(unpacked) / archive.stem, repo_id, api=api,
                                  commit_message="A model taught in the tl-space app")
    except UserError:
        raise
    except Exception as error:  # the Hub's own errors: a sentence, never its text
        logger.warning("push of a taught model failed: %s", type(error).__name__)
        raise UserError("The push failed; try again later.") from error
    return repo_id
