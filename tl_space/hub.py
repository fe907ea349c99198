"""The Hugging Face Hub: check write access before training, push a model folder, load one back.

Run as `python -m tl_space.hub push DIR --hub-model-id USER/REPO [--private]` to (re)upload a folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import timm
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import HfHubHTTPError
from torch import nn

from tl_space.errors import UserError
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
    """What the app needs from a model folder: the model (eval, CPU) and everything written beside it."""

    model: nn.Module
    label_names: list[str]
    preprocessing: Preprocessing
    metrics: dict
    misclassified: list[dict]
    folder: Path
    source: str
    study_folder: Path | None = None  # a study (study.json and its plots) to show beside the model

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
            best_run = json.loads((top / STUDY_FILE).read_text()).get("best_run")
            return _download(source, STUDY_FILES + ([f"{best_run}/*"] if best_run and what == "model" else []))
        return _download(source)
    except Exception as error:  # huggingface_hub raises many types: offline, not found, gated, bad id
        raise UserError(f"{what} {source!r} is neither a local {what} folder nor a Hub repo that could be fetched "
                        f"({type(error).__name__}); check the id and the network, log in for a private repo, "
                        f"or give the path of a train.py or study --output-dir") from error


def load_model_folder(source: str, study_source: str | None = None) -> LoadedModel:
    """The trained classifier and its folder's metrics and misclassified records, from a Hub id or a local folder.

    A study folder (or repo) serves its best run and shows the study; study_source adds a study to any model.
    """
    folder = resolve_folder(source)
    study_folder = resolve_folder(study_source, "study") if study_source else None
    if not (folder / "config.json").is_file() and (folder / STUDY_FILE).is_file():
        study_folder = study_folder or folder
        best_run = json.loads((folder / STUDY_FILE).read_text()).get("best_run")
        if not best_run:
            raise UserError(f"the study {source!r} has no finished run to serve yet")
        folder = folder / best_run
    if not (folder / "config.json").is_file():
        raise UserError(f"model {source!r} has no config.json: not a timm model folder written by train.py")
    if study_folder is not None and not (study_folder / STUDY_FILE).is_file():
        raise UserError(f"study {study_source!r} has no {STUDY_FILE}: not a folder written by tl_space.study")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    label_names = list(model.pretrained_cfg.get("label_names") or [str(i) for i in range(model.num_classes)])
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
    metrics = _read_json(folder / "metrics.json", {})
    misclassified = _read_json(folder / "misclassified.json", [])
    return LoadedModel(model, label_names, preprocessing, metrics, misclassified, folder, source, study_folder)


def _read_json(path: Path, default):
    return json.loads(path.read_text()) if path.is_file() else default


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
