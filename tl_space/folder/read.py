"""Reading a model folder: someone else's files, each checked before anything of it is served.

Weights only from safetensors, config.json built by timm, metrics.json checked against its schema, and only the
folder's own PNGs (mistakes, plots), decoded: the app never hands a path inside the folder to a visitor.
"""

from __future__ import annotations

import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import timm
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from tl_space import scratch_net, speedrun_net  # noqa: F401  (register tl_scratch_cnn, tl_speedrun_cnn in timm)
from tl_space.errors import UserError
from tl_space.folder.fields import check_served_fields
from tl_space.folder.files import (CONFIG_FILE, MISCLASSIFIED_DIR, MISCLASSIFIED_FILE, PICKLED_WEIGHTS, REPORT_PLOTS,
                                   STUDY_FILE, WEIGHTS_FILE, read_json)
from tl_space.folder.metrics import read_metrics
from tl_space.folder.study import served_run
from tl_space.images import open_image
from tl_space.transforms import Preprocessing, preprocessing_for


@dataclass
class ModelFolder:
    """What a model folder holds, checked: the model (eval, CPU), and what of the folder is public."""

    model: nn.Module
    label_names: list[str]
    preprocessing: Preprocessing
    metrics: dict  # read_metrics': upgraded and checked
    misclassified: list[dict]  # records that passed check_mistakes, each with its image in mistake_images
    folder: Path
    mistake_images: list[Image.Image] = field(default_factory=list)
    plots: dict[str, Image.Image] = field(default_factory=dict)  # file name -> decoded PNG


# The app shows a gallery, not a data set: records past this many are not read.
MAX_MISTAKES = 256
MAX_PUBLIC_IMAGE_BYTES = 8 * 1024 * 1024
logger = logging.getLogger("tl_space.folder")


def _reason(error: Exception, folder: Path, name: str) -> str:
    """An exception's first line, shortened, with the folder's server path replaced by its public name."""
    text = (str(error).splitlines() or [""])[0].replace(str(folder), name)
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def load_model(folder: Path, name: str) -> nn.Module:
    """The timm model of a folder: config.json built by timm, weights from model.safetensors only (never a pickle),
    every tensor of the right shape; a UserError naming what is wrong otherwise."""
    if not (folder / WEIGHTS_FILE).is_file():
        pickled = [file for file in PICKLED_WEIGHTS if (folder / file).is_file()]
        found = f" (only {pickled[0]}, a pickle, which this app never opens)" if pickled else ""
        raise UserError(f"model {name!r} has no {WEIGHTS_FILE}{found}; save the weights with safetensors")
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    except Exception as error:  # JSON errors, unknown architectures, bad arguments: timm raises them all
        raise UserError(f"the config.json of model {name!r} does not describe a timm model "
                        f"({_reason(error, folder, name)})") from error
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    except Exception as error:
        raise UserError(f"the weights of model {name!r} do not fit its config.json "
                        f"({_reason(error, folder, name)})") from error
    return model.eval()


def label_names_of(model: nn.Module, name: str) -> list[str]:
    names = model.pretrained_cfg.get("label_names") or [str(index) for index in range(model.num_classes)]
    if (not isinstance(names, list) or len(names) != model.num_classes or len(set(names)) != len(names)
            or not all(isinstance(label, str) and 0 < len(label) <= 100 for label in names)):
        raise UserError(f"the label_names of model {name!r} are not {model.num_classes} distinct names of at most "
                        "100 characters, one per output of the model")
    return names


def _inside(path: Path, folder: Path) -> bool:
    """Whether path, its links followed, lies in folder or, for a Hub cache snapshot, in the repo's blobs."""
    resolved, root = path.resolve(), folder.resolve()
    roots = [root]
    for parent in folder.parents:  # .../models--OWNER--NAME/snapshots/<revision>/...: files link to ../blobs
        if parent.name == "snapshots":
            roots.append((parent.parent / "blobs").resolve())
            break
    return any(resolved.is_relative_to(allowed) for allowed in roots)


def public_png(folder: Path, relative: object, subfolder: str = "") -> Image.Image:
    """The image at folder/relative, if it is a PNG that the folder holds (in subfolder) and is meant to be shown;
    raises ValueError saying why not. Returned decoded: the app serves copies, never the folder's files."""
    if not isinstance(relative, str) or "\\" in relative or "\0" in relative:
        raise ValueError("its file is not a relative path")
    parts = PurePosixPath(relative).parts
    if (PurePosixPath(relative).is_absolute() or ".." in parts or not parts or not relative.endswith(".png")
            or (subfolder and (len(parts) != 2 or parts[0] != subfolder)) or (not subfolder and len(parts) != 1)):
        raise ValueError(f"its file is not a .png inside {subfolder or 'the folder'}/")
    path = folder.joinpath(*parts)
    if not path.is_file() or not _inside(path, folder):
        raise ValueError("its file is missing or lies outside the folder")
    if path.stat().st_size > MAX_PUBLIC_IMAGE_BYTES:
        raise ValueError("its file is too large")
    with Image.open(path) as image:
        if image.format != "PNG":
            raise ValueError("its file is not a PNG")
    return open_image(path)


def check_mistakes(folder: Path, records: list, label_names: list[str],
                   name: str) -> tuple[list[dict], list[Image.Image]]:
    """The misclassified records that are well-formed and point at one of the folder's own PNGs, with those images;
    every other record is skipped with a log line."""
    kept, images = [], []
    known = set(label_names)
    for index, record in enumerate(records[:MAX_MISTAKES]):
        try:
            if not isinstance(record, dict):
                raise ValueError("it is not an object")
            if record.get("true_label") not in known or record.get("predicted_label") not in known:
                raise ValueError("its labels are not the model's classes")
            confidence = record.get("confidence")
            if not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
                raise ValueError("its confidence is not a probability")
            top5 = record.get("top5")
            if not isinstance(top5, list) or not all(
                    isinstance(entry, dict) and entry.get("label") in known
                    and isinstance(entry.get("probability"), (int, float)) for entry in top5[:5]):
                raise ValueError("its top5 is not a list of the model's classes with probabilities")
            image = public_png(folder, record.get("file"), MISCLASSIFIED_DIR)
        except (ValueError, OSError, UserError) as error:
            logger.warning("%s: skipped misclassified.json record %d: %s", name, index, error)
            continue
        kept.append({**record, "top5": record["top5"][:5]})
        images.append(image)
    if len(records) > MAX_MISTAKES:
        logger.warning("%s: read the first %d of %d misclassified.json records", name, MAX_MISTAKES, len(records))
    return kept, images


def public_plots(folder: Path, files: typing.Iterable[str], name: str) -> dict[str, Image.Image]:
    """The plots among files that the folder holds as real PNGs, decoded; the others are left out with a log line."""
    plots = {}
    for file in files:
        if not (folder / file).exists():
            continue
        try:
            plots[file] = public_png(folder, file)
        except (ValueError, OSError, UserError) as error:
            logger.warning("%s: not showing %s: %s", name, file, error)
    return plots


def study_best_run(folder: Path, name: str) -> Path:
    """The run folder a study folder serves (its best_run), checked to be one of its own folders."""
    best_run = served_run(folder)
    if best_run is None:
        raise UserError(f"the study {name!r} has no finished run to serve yet")
    if not (folder / best_run).is_dir() or not _inside(folder / best_run, folder):
        raise UserError(f"the study {name!r} names a best_run that is not one of its run folders")
    return folder / best_run


def is_study_folder(folder: Path) -> bool:
    return not (folder / CONFIG_FILE).is_file() and (folder / STUDY_FILE).is_file()


def read_model_folder(folder: Path, name: str) -> ModelFolder:
    """The trained classifier of a local folder and its checked metrics, mistakes and plots; anything that cannot
    be served raises a UserError that names no server path (the folder by name only)."""
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"model {name!r} has no config.json: not a timm model folder written by train.py")
    model = load_model(folder, name)
    label_names = label_names_of(model, name)
    metrics = read_metrics(folder, name)
    check_served_fields(model.pretrained_cfg, metrics, name)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
    misclassified, mistake_images = check_mistakes(folder, read_json(folder / MISCLASSIFIED_FILE, [], name),
                                                   label_names, name)
    return ModelFolder(model, label_names, preprocessing, metrics, misclassified, folder, mistake_images,
                       public_plots(folder, REPORT_PLOTS, name))
