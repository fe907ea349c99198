"""The Hugging Face Hub: check write access before training, push a model folder, load one back.

Run as `python -m tl_space.hub push DIR --hub-model-id USER/REPO [--private]` to (re)upload a folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import timm
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import HfHubHTTPError
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from tl_space.errors import UserError
from tl_space.inference import open_image
from tl_space.transforms import Preprocessing, preprocessing_for

LOGIN_HINT = "run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN to a token with write access"


def _write_allowed(token_info: dict, namespace: str) -> bool:
    """Whether whoami's description of a token lets it write to repos of namespace."""
    access = token_info.get("auth", {}).get("accessToken", {})
    role = access.get("role")
    if role == "read":
        return False
    if role != "fineGrained":
        return True
    scopes = access.get("fineGrained", {})
    if "repo.write" in scopes.get("global", []):
        return True
    return any(scope.get("entity", {}).get("name") == namespace and "repo.write" in scope.get("permissions", [])
               for scope in scopes.get("scoped", []))


def check_push_access(repo_id: str | None, api: HfApi | None = None) -> str:
    """Fail before any training when a push could not succeed; returns the repo id to push to.

    Without repo_id the repo is USER/<name> under the token's user; the token is never printed.
    """
    api = api or HfApi()
    if api.token is None and not _has_saved_token():
        raise UserError(f"--push-to-hub needs a Hugging Face token: {LOGIN_HINT}")
    try:
        token_info = api.whoami()
    except (HfHubHTTPError, OSError) as error:
        if getattr(getattr(error, "response", None), "status_code", None) == 401:
            raise UserError(f"--push-to-hub: the Hugging Face token was refused (invalid or expired); {LOGIN_HINT}") from error
        raise UserError(f"--push-to-hub: could not reach the Hugging Face Hub to check the token ({type(error).__name__}); "
                        "check the network, or train without --push-to-hub and push the folder later") from error
    if repo_id is None:
        raise UserError("--push-to-hub needs --hub-model-id, e.g. "
                        f"--hub-model-id {token_info.get('name', 'USER')}/cifar10-resnet18")
    namespace = repo_id.split("/")[0]
    member_of = {token_info.get("name")} | {org.get("name") for org in token_info.get("orgs", [])}
    if "/" not in repo_id or namespace not in member_of:
        raise UserError(f"--hub-model-id {repo_id!r} must be OWNER/NAME with OWNER one of {sorted(filter(None, member_of))}")
    if not _write_allowed(token_info, namespace):
        raise UserError(f"--push-to-hub: the Hugging Face token cannot write to {namespace!r}; {LOGIN_HINT}")
    return repo_id


def _has_saved_token() -> bool:
    from huggingface_hub import get_token
    return get_token() is not None


def retry_command(folder: Path, repo_id: str, private: bool) -> str:
    return f"python -m tl_space.hub push {folder} --hub-model-id {repo_id}" + (" --private" if private else "")


# An unfinished (or killed, then finished elsewhere) run's resume state is not part of what is published.
NOT_PUSHED = ["checkpoint/*", "checkpoint.*/*", "*/checkpoint/*", "*/checkpoint.*/*"]
STUDY_FILE = "study.json"


def push_folder(folder: Path, repo_id: str, *, private: bool = False, commit_message: str | None = None,
                api: HfApi | None = None) -> str:
    """Create the model repo if needed and upload the folder, without resume checkpoints, in one commit."""
    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", ignore_patterns=NOT_PUSHED,
                               commit_message=commit_message or f"Upload {Path(folder).name} (tl-space)")
    return str(getattr(commit, "commit_url", commit))


def push_model_folder(folder: Path, repo_id: str, *, private: bool = False, commit_message: str | None = None,
                      api: HfApi | None = None) -> str:
    """Upload a model folder (or a study folder) in one commit; returns the commit URL."""
    folder = Path(folder)
    is_model = (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    if not is_model and not (folder / STUDY_FILE).is_file():
        raise UserError(f"{str(folder)!r} is not a model folder (no model.safetensors and config.json) nor a study "
                        "folder (no study.json); give the --output-dir of a finished train.py or study run")
    return push_folder(folder, repo_id, private=private, commit_message=commit_message, api=api)


@dataclass
class LoadedModel:
    """What the app needs from a model folder: the model (eval, CPU), and what of the folder is checked and public.

    Every request that runs the model holds `lock`: Grad-CAM and feature maps hook the one shared model.
    """

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

    @property
    def name(self) -> str:
        return display_name(self.source)

    @property
    def temperature(self) -> float:
        """Divides the logits for calibrated probabilities; 1 for folders written before calibration existed."""
        return float(self.metrics.get("calibration", {}).get("temperature", 1.0))

    @property
    def flip_tta(self) -> bool:
        """Whether predictions average the image and its mirror image: only where training measured a gain."""
        return bool((self.metrics.get("flip_tta") or {}).get("enabled", False))


# What the app needs of a study repo: not the weights of every run, only the served one's.
STUDY_FILES = [STUDY_FILE, "README.md", "accuracy_vs_*.png"]
WEIGHTS_FILE = "model.safetensors"
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.pth", "model.pth", "model.bin")
MISCLASSIFIED_DIR = "misclassified"
REPORT_PLOTS = ("curves.png", "confusion_matrix.png", "reliability.png")
# The app shows a gallery, not a data set: records past this many are not read.
MAX_MISTAKES = 256
MAX_PUBLIC_IMAGE_BYTES = 8 * 1024 * 1024
logger = logging.getLogger("tl_space.hub")


def display_name(source: str) -> str:
    """How a model or study is named to visitors: a Hub id as given, a local folder by its name only."""
    path = Path(source).expanduser()
    return path.name if path.is_dir() else source


def _reason(error: Exception, folder: Path, name: str) -> str:
    """An exception's first line, shortened, with the folder's server path replaced by its public name."""
    text = (str(error).splitlines() or [""])[0].replace(str(folder), name)
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def _download(repo_id: str, allow_patterns: list[str] | None = None) -> Path:
    return Path(snapshot_download(repo_id=repo_id.removeprefix("hf-hub:"), repo_type="model",
                                  allow_patterns=allow_patterns))


def resolve_folder(source: str, what: str = "model") -> Path:
    """A local folder as is; a Hub repo through the local Hub cache (works with HF_HUB_OFFLINE=1 once cached).

    Of a study repo only the study files and the run it serves are fetched, not every run's weights.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        top = _download(source, [STUDY_FILE, "config.json"])
        if (top / STUDY_FILE).is_file() and not (top / "config.json").is_file():
            best_run = read_json(top / STUDY_FILE, {}, source).get("best_run")
            return _download(source, STUDY_FILES + ([f"{best_run}/*"] if best_run and what == "model" else []))
        return _download(source)
    except Exception as error:  # huggingface_hub raises many types: offline, not found, gated, bad id
        raise UserError(f"{what} {display_name(source)!r} is neither a local {what} folder nor a Hub repo that could "
                        f"be fetched ({type(error).__name__}); check the id and the network, log in for a private "
                        f"repo, or give the path of a train.py or study --output-dir") from error


def read_json(path: Path, default, name: str):
    """A JSON file of a folder, default when it is missing; a UserError naming the file when it is unreadable."""
    if not path.is_file():
        return default
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path.name} of {name!r} is not readable JSON ({type(error).__name__})") from error
    if not isinstance(value, type(default)):
        raise UserError(f"{path.name} of {name!r} holds a {type(value).__name__}, not a {type(default).__name__}")
    return value


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


# Fields of metrics.json the app reads, with their types.
METRICS_FIELDS = {"test.accuracy": (int, float), "test.loss": (int, float), "test.num_images": int,
                  "test.best_epoch": int, "test.most_confused": list, "test.per_class_accuracy": dict,
                  "settings.strategy": str, "settings.dataset": str, "settings.model": str, "data.train_images": int,
                  "history": list, "preprocessing.image_size": int}


def check_metrics(metrics: dict, name: str) -> dict:
    """metrics.json as read, once it has every field the app shows, of the right type; else a UserError."""
    if not metrics:
        return metrics
    for dotted, kinds in METRICS_FIELDS.items():
        value = metrics
        for key in dotted.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise UserError(f"the metrics.json of model {name!r} lacks {dotted} or holds the wrong type there")
    for key in ("calibration", "flip_tta", "model", "timing"):
        if metrics.get(key) is not None and not isinstance(metrics[key], dict):
            raise UserError(f"the metrics.json of model {name!r} holds the wrong type at {key}")
    return metrics


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


def load_model_folder(source: str, study_source: str | None = None) -> LoadedModel:
    """The trained classifier and its folder's checked metrics, mistakes and plots, from a Hub id or a local folder.

    A study folder (or repo) serves its best run and shows the study; study_source adds a study to any model.
    Anything in the folder that cannot be served raises a UserError that names no server path.
    """
    name = display_name(source)
    folder = resolve_folder(source)
    study_folder = resolve_folder(study_source, "study") if study_source else None
    if not (folder / "config.json").is_file() and (folder / STUDY_FILE).is_file():
        study_folder = study_folder or folder
        best_run = read_json(folder / STUDY_FILE, {}, name).get("best_run")
        if not best_run:
            raise UserError(f"the study {name!r} has no finished run to serve yet")
        if not isinstance(best_run, str) or not (folder / best_run).is_dir() or not _inside(folder / best_run, folder):
            raise UserError(f"the study {name!r} names a best_run that is not one of its run folders")
        folder = folder / best_run
    if not (folder / "config.json").is_file():
        raise UserError(f"model {name!r} has no config.json: not a timm model folder written by train.py")
    if study_folder is not None and not (study_folder / STUDY_FILE).is_file():
        raise UserError(f"study {display_name(study_source)!r} has no {STUDY_FILE}: not a folder written by "
                        "tl_space.study")
    model = load_model(folder, name)
    label_names = label_names_of(model, name)
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
    metrics = check_metrics(read_json(folder / "metrics.json", {}, name), name)
    misclassified, mistake_images = check_mistakes(folder, read_json(folder / "misclassified.json", [], name),
                                                   label_names, name)
    return LoadedModel(model, label_names, preprocessing, metrics, misclassified, folder, source, study_folder,
                       mistake_images, public_plots(folder, REPORT_PLOTS, name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_space.hub", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="upload a model folder to the Hub in one commit")
    push.add_argument("folder", type=Path, help="a train.py --output-dir")
    push.add_argument("--hub-model-id", required=True, help="OWNER/NAME of the model repo")
    push.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args(argv)
    try:
        repo_id = check_push_access(args.hub_model_id)
        url = push_model_folder(args.folder, repo_id, private=args.private)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {args.folder} to https://huggingface.co/{repo_id} ({url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
