"""Publishing to and loading from the Hub, offline: HfApi's HTTP calls are the one thing stood in for."""

import json

import huggingface_hub
import pytest
import torch
from huggingface_hub import HfApi

from conftest import CLASS_NAMES
from support.hub import FAKE_TOKEN, FakeHub, plain_hub_cache_copy
from support.runs import tiny_settings
from tl_space import hub
from tl_space.app.served import load_served_model
from tl_space.errors import UserError
from tl_space.training.run import run
from tl_space.transforms import to_model_input

@pytest.fixture
def logged_out(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))


@pytest.mark.slow
def test_push_uploads_the_folder_with_the_users_repo_and_flags(tiny_dataset, pretrained_file, tmp_path, monkeypatch,
                                                               logged_in, capsys):
    fake = FakeHub().install(monkeypatch)
    folder = tmp_path / "pushed"
    run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="linear-probe", epochs=1, push_to_hub=True,
                      hub_model_id="my-org/tiny-colours", private=True))
    assert fake.named("create_repo") == [{"repo_id": "my-org/tiny-colours", "private": True, "exist_ok": True,
                                          "repo_type": "model"}]
    [upload] = fake.named("upload_folder")
    assert upload["folder_path"] == str(folder.resolve()) and upload["repo_id"] == "my-org/tiny-colours"
    assert "linear-probe test_resnet" in upload["commit_message"]
    card = (folder / "README.md").read_text()
    assert 'timm.create_model("hf-hub:my-org/tiny-colours"' in card
    # The token reaches no output, no file of the folder, no model card.
    captured = capsys.readouterr()
    assert FAKE_TOKEN not in captured.out + captured.err
    for path in folder.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_missing_token_fails_before_training(tiny_dataset, pretrained_file, tmp_path, monkeypatch, logged_out):
    fake = FakeHub().install(monkeypatch)
    settings = tiny_settings(tiny_dataset, tmp_path / "never", pretrained_file, push_to_hub=True, hub_model_id="me/x")
    with pytest.raises(UserError, match=r"needs a Hugging Face token: run `hf auth login`"):
        run(settings)
    assert not (tmp_path / "never").exists() and fake.calls == []


@pytest.mark.parametrize("role, repo_id, message", [
    ("read", "me/x", "cannot write to 'me'"),
    ("write", "someone-else/x", "must be OWNER/NAME with OWNER one of \\['me', 'my-org'\\]"),
])
@pytest.mark.slow
def test_token_that_cannot_write_there_fails_before_training(tiny_dataset, pretrained_file, tmp_path, monkeypatch,
                                                              logged_in, role, repo_id, message):
    FakeHub(role=role).install(monkeypatch)
    with pytest.raises(UserError, match=message):
        run(tiny_settings(tiny_dataset, tmp_path / "never", pretrained_file, push_to_hub=True, hub_model_id=repo_id))
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_failed_push_keeps_the_folder_and_the_retry_command_works(tiny_dataset, pretrained_file, tmp_path,
                                                                  monkeypatch, logged_in, capsys):
    fake = FakeHub(fail_uploads=1).install(monkeypatch)
    folder = tmp_path / "kept"
    with pytest.raises(UserError) as raised:
        run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="linear-probe", epochs=1, push_to_hub=True,
                          hub_model_id="me/kept"))
    message = str(raised.value)
    assert "is complete, but pushing it to me/kept failed (ConnectionError: connection reset by peer)" in message
    command = message.split("retry the upload alone with: ")[1]
    assert command == f"python -m tl_space.hub push {folder.resolve()} --hub-model-id me/kept"
    for name in ("model.safetensors", "config.json", "metrics.json", "README.md", "misclassified.json"):
        assert (folder / name).is_file()
    assert hub.main(command.split()[3:]) == 0
    assert fake.named("upload_folder")[-1]["folder_path"] == str(folder.resolve())
    assert "pushed" in capsys.readouterr().out


def test_push_command_refuses_a_folder_that_is_not_a_model(tmp_path, monkeypatch, logged_in, capsys):
    FakeHub().install(monkeypatch)
    assert hub.main(["push", str(tmp_path), "--hub-model-id", "me/x"]) == 2
    assert "is not a model folder" in capsys.readouterr().err


@pytest.mark.slow
def test_loading_from_a_folder_and_from_the_hub_cache_gives_identical_predictions(tiny_dataset, pretrained_file,
                                                                                   tmp_path, monkeypatch):
    folder = tmp_path / "model"
    run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="finetune", epochs=1))
    cache = tmp_path / "hub-cache"
    plain_hub_cache_copy(folder, cache, "me/tiny-colours")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    local = load_served_model(str(folder))
    cached = load_served_model("me/tiny-colours")
    assert cached.folder.is_relative_to(cache)
    assert local.label_names == cached.label_names == CLASS_NAMES
    assert local.preprocessing == cached.preprocessing and local.preprocessing.image_size == 32
    assert local.metrics == json.loads((folder / "metrics.json").read_text()) == cached.metrics
    assert local.misclassified == cached.misclassified
    assert not local.model.training and next(local.model.parameters()).device.type == "cpu"
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert torch.equal(local.model(to_model_input(images, local.preprocessing)),
                           cached.model(to_model_input(images, cached.preprocessing)))


def test_unreachable_model_id_names_the_id(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="model 'nobody/nothing' is neither a local model folder nor a Hub repo"):
        load_served_model("nobody/nothing")


@pytest.fixture
def no_network(monkeypatch):
    """A real HfApi whose Hub is a closed local port: its HTTP client raises its own ConnectError."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.slow
def test_no_network_before_training_is_one_sentence(tiny_dataset, pretrained_file, tmp_path, logged_in, no_network):
    with pytest.raises(UserError, match=r"^--push-to-hub: could not reach the Hugging Face Hub to check the token "
                                        r"\(ConnectError: .*\); check the network") as raised:
        run(tiny_settings(tiny_dataset, tmp_path / "never", pretrained_file, push_to_hub=True, hub_model_id="me/x"))
    assert "\n" not in str(raised.value) and FAKE_TOKEN not in str(raised.value)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_no_network_at_the_push_leaves_the_folder_whole_with_the_retry_in_one_sentence(
        tiny_dataset, pretrained_file, tmp_path, monkeypatch, logged_in, capsys):
    from huggingface_hub import constants

    FakeHub().install(monkeypatch)
    monkeypatch.undo()  # the token check passes with the fake; then the network goes
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(HfApi, "whoami", lambda api, token=None, cache=False: {
        "type": "user", "name": "me", "orgs": [], "auth": {"accessToken": {"role": "write"}}})
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    folder = tmp_path / "offline"
    with pytest.raises(UserError) as raised:
        run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="linear-probe", epochs=1, push_to_hub=True,
                          hub_model_id="me/offline"))
    message = str(raised.value)
    assert "\n" not in message and "(ConnectError: " in message, message
    assert message.endswith(f"retry the upload alone with: python -m tl_space.hub push {folder.resolve()} "
                            "--hub-model-id me/offline")
    assert (folder / "model.safetensors").is_file() and (folder / "metrics.json").is_file()
    capsys.readouterr()
    assert hub.main(["push", str(folder), "--hub-model-id", "me/offline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(ConnectError: " in err[0] and "Traceback" not in err[0]
