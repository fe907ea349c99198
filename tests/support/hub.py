"""A Hub that answers without a network, and model folders laid out as a Space finds them: in a Hub cache outside
the working and temp dirs."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path

from huggingface_hub import HfApi

from support.runs import ROOT

FAKE_TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"
REPO_ID = "someone/colours"  # the Hub id the tests serve a cached model folder as


class FakeHub:
    """Records what would go over HTTP; answers whoami like the Hub does."""

    def __init__(self, role: str = "write", fail_uploads: int = 0):
        self.role, self.fail_uploads = role, fail_uploads
        self.calls: list[tuple[str, dict]] = []

    def install(self, monkeypatch):
        fake = self

        def whoami(api, token=None, cache=False):
            fake.calls.append(("whoami", {}))
            return {"type": "user", "name": "me", "orgs": [{"name": "my-org"}],
                    "auth": {"accessToken": {"role": fake.role}}}

        def create_repo(api, repo_id, **kwargs):
            fake.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, **kwargs):
            fake.calls.append(("upload_folder", kwargs))
            if fake.fail_uploads:
                fake.fail_uploads -= 1
                raise ConnectionError("connection reset by peer")
            return f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"

        for name, method in (("whoami", whoami), ("create_repo", create_repo), ("upload_folder", upload_folder)):
            monkeypatch.setattr(HfApi, name, method)
        return self

    def named(self, name):
        return [kwargs for call, kwargs in self.calls if call == name]


def outside_work_and_temp() -> Path:
    """A fresh folder under the home directory's cache, as a Space's Hub cache is: neither under the working
    directory nor under the temp dir, so Gradio's own path checks do not cover it."""
    folder = Path.home() / ".cache" / f"tl-space-tests-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    for other in (Path(tempfile.gettempdir()), ROOT, Path.cwd()):
        assert not folder.resolve().is_relative_to(other.resolve()), other
    return folder


def hub_cache_copy(folder: Path, hub_cache: Path, repo_id: str) -> Path:
    """folder laid out as huggingface_hub caches a downloaded repo (blobs, refs/main, snapshots/<commit> with links
    into blobs); returns the snapshot folder. snapshot_download finds it offline."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * len(link.relative_to(repo).parts[1:])) / blob.relative_to(repo))
    return snapshot


def plain_hub_cache_copy(folder, cache, repo_id):
    """Lay a model folder out as huggingface_hub's cache does after a download."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo_cache / "snapshots" / revision)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(revision)
