"""The Hugging Face Hub: check write access before training, push a model or study folder, fetch one.

Run as `python -m tl_space.hub push DIR --hub-model-id USER/REPO [--private]` to (re)upload a folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from huggingface_hub import HfApi, snapshot_download

from tl_space.errors import UserError, exit_code, failure
from tl_space.folder.files import NOT_PUSHED, CONFIG_FILE, STUDY_FILE, STUDY_FILES, display_name, is_model_folder
from tl_space.folder.study import served_run

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

    repo_id has no default: without it the error suggests one under the token's user. The token is never printed.
    """
    api = api or HfApi()
    if api.token is None and not _has_saved_token():
        raise UserError(f"--push-to-hub needs a Hugging Face token: {LOGIN_HINT}")
    try:
        token_info = api.whoami()
    except Exception as error:  # huggingface_hub's HTTP errors, and its HTTP client's own (ConnectError, timeouts)
        if getattr(getattr(error, "response", None), "status_code", None) == 401:
            raise UserError(f"--push-to-hub: the Hugging Face token was refused (invalid or expired); {LOGIN_HINT}") from error
        raise UserError(f"--push-to-hub: could not reach the Hugging Face Hub to check the token ({failure(error)}); "
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


def publish(folder: Path, repo_id: str, *, private: bool = False, commit_message: str | None = None) -> str:
    """push_model_folder for a finished run or study: any failure (no network, a refused upload) is one UserError
    that says the folder is whole and how to retry the upload alone."""
    try:
        return push_model_folder(folder, repo_id, private=private, commit_message=commit_message)
    except UserError:
        raise
    except Exception as error:  # huggingface_hub's errors and its HTTP client's: none may become a traceback
        raise UserError(f"the folder {folder} is complete, but pushing it to {repo_id} failed ({failure(error)}); "
                        f"retry the upload alone with: {retry_command(folder, repo_id, private)}") from error


def retry_command(folder: Path, repo_id: str, private: bool) -> str:
    return f"python -m tl_space.hub push {folder} --hub-model-id {repo_id}" + (" --private" if private else "")


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
    names = {path.name for path in folder.iterdir()} if folder.is_dir() else set()
    if not is_model_folder(names) and STUDY_FILE not in names:
        raise UserError(f"{str(folder)!r} is not a model folder (no model.safetensors and config.json) nor a study "
                        "folder (no study.json); give the --output-dir of a finished train.py or study run")
    return push_folder(folder, repo_id, private=private, commit_message=commit_message, api=api)


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
        top = _download(source, [STUDY_FILE, CONFIG_FILE])
        if (top / STUDY_FILE).is_file() and not (top / CONFIG_FILE).is_file():
            best_run = served_run(top)
            return _download(source, STUDY_FILES + ([f"{best_run}/*"] if best_run and what == "model" else []))
        return _download(source)
    except Exception as error:  # huggingface_hub raises many types: offline, not found, gated, bad id
        raise UserError(f"{what} {display_name(source)!r} is neither a local {what} folder nor a Hub repo that could "
                        f"be fetched ({type(error).__name__}); check the id and the network, log in for a private "
                        f"repo, or give the path of a train.py or study --output-dir") from error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_space.hub", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="upload a model folder to the Hub in one commit")
    push.add_argument("folder", type=Path, help="a train.py --output-dir")
    push.add_argument("--hub-model-id", required=True, help="OWNER/NAME of the model repo")
    push.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args(argv)

    def push_folder_command() -> None:
        repo_id = check_push_access(args.hub_model_id)
        url = publish(args.folder, repo_id, private=args.private)
        print(f"pushed {args.folder} to https://huggingface.co/{repo_id} ({url})")
    return exit_code(push_folder_command)


if __name__ == "__main__":
    sys.exit(main())
