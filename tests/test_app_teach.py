"""The Teach tab through gradio_client: a visitor's own classes on the served backbone, their model folder, theirs alone."""

import zipfile
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
from gradio_client import Client, handle_file

from conftest import CLASS_NAMES, colour_images
from support.local_app import running_app
from tl_space.images import image_tensor
from tl_space.transforms import preprocessing_for, to_model_input


def _teach_files(folder, classes, per_class=10, seed=11):
    images, labels = colour_images(per_class, 16, seed=seed)
    paths = []
    for image, label in zip(images, labels):
        name = CLASS_NAMES[label]
        if name in classes:
            paths.append(folder / f"{name}_{len(paths):02d}.png")
            image.save(paths[-1])
    return paths


@pytest.mark.slow
def test_teaching_three_classes_gives_a_model_folder_that_timm_loads(app_url, tmp_path):  # noqa: F811
    files = _teach_files(tmp_path, ["red", "green", "blue"])
    (tmp_path / "red_broken.png").write_text("not an image")
    summary, archive, *_ = Client(app_url, verbose=False).predict(
        [handle_file(str(path)) for path in [*files, tmp_path / "red_broken.png"]], api_name="/teach")
    assert summary["classes"] == ["red", "green", "blue"] and summary["images_per_class"] == {"red": 10, "green": 10, "blue": 10}
    assert summary["cross_validated_accuracy"] > 0.6 > 1 / 3 and summary["chance"] == pytest.approx(1 / 3)
    assert 0 <= summary["class_mean_accuracy"] <= 1 and summary["seconds"] < 60
    assert [line.split(":")[0] for line in summary["skipped"]] == ["red_broken.png"]
    model = _unzipped_model(archive, tmp_path / "unzipped")
    folder = tmp_path / "unzipped" / "taught-model"
    assert model.pretrained_cfg["label_names"] == ["red", "green", "blue"]
    held_out, labels = colour_images(6, 16, seed=99)
    keep = [index for index, label in enumerate(labels) if CLASS_NAMES[label] in ("red", "green", "blue")]
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
    inputs = to_model_input(torch.cat([image_tensor(held_out[index], preprocessing.image_size) for index in keep]),
                            preprocessing)
    with torch.inference_mode():
        predicted = model(inputs).argmax(dim=1)
    expected = torch.tensor([["red", "green", "blue"].index(CLASS_NAMES[labels[index]]) for index in keep])
    assert (predicted == expected).double().mean() > 0.6
    for name in ("metrics.json", "README.md", "config.json", "model.safetensors", "confusion_matrix.png"):
        assert (folder / name).is_file()


def _unzipped_model(archive, folder):
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(folder)
    return timm.create_model(f"local-dir:{folder / 'taught-model'}", pretrained=True).eval()


@pytest.mark.slow
def test_teaching_cifar10_classes_on_the_bundled_model_learns_them(tmp_path):
    """The bundled model's backbone, taught cat, ship and frog from 10 CIFAR-10 test images each (the bundled
    sample), classifies the sample's 40 other images of each class."""
    import app

    sample = app.teach_sample_or_none(app.load_served_model(str(app.DEFAULT_MODEL)).label_names)
    classes = ["cat", "ship", "frog"]
    taught, held_out = [], []
    for name in classes:
        members = torch.nonzero(sample.labels == sample.class_names.index(name)).flatten().tolist()
        for number, index in enumerate(members[:10]):
            taught.append(tmp_path / f"{name}_{number:02d}.png")
            sample.image(index).save(taught[-1])
        held_out += [(index, classes.index(name)) for index in members[10:]]
    with running_app(str(app.DEFAULT_MODEL), tmp_path) as (url, _):
        summary, archive, *_ = Client(url, verbose=False).predict([handle_file(str(path)) for path in taught],
                                                                  api_name="/teach")
    assert summary["classes"] == classes and summary["images_per_class"] == {name: 10 for name in classes}
    assert summary["cross_validated_accuracy"] > 0.6 > 1 / 3
    model = _unzipped_model(archive, tmp_path / "unzipped")
    preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
    inputs = to_model_input(torch.cat([image_tensor(sample.image(index), preprocessing.image_size)
                                       for index, _ in held_out]), preprocessing)
    with torch.inference_mode():
        predicted = model(inputs).argmax(dim=1)
    assert (predicted == torch.tensor([label for _, label in held_out])).double().mean() > 0.6


@pytest.mark.slow
def test_a_class_with_no_usable_image_stops_the_teach_with_one_sentence(app_url, tmp_path):  # noqa: F811
    files = _teach_files(tmp_path, ["red", "green"], per_class=3)
    (tmp_path / "blue_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(Exception, match="Class 'blue' has no usable image"):
        Client(app_url, verbose=False).predict([handle_file(str(path)) for path in [*files, tmp_path / "blue_broken.png"]],
                                               api_name="/teach")
    more = _teach_files(tmp_path, ["blue"], per_class=3, seed=12)
    summary, *_ = Client(app_url, verbose=False).predict(
        [handle_file(str(path)) for path in [*files, *more, tmp_path / "blue_broken.png"]], api_name="/teach")
    assert summary["classes"] == ["red", "green", "blue"] and summary["skipped"][0].startswith("blue_broken.png: ")
    assert "/" not in summary["skipped"][0]  # no server path


@pytest.mark.slow
def test_two_visitors_teaching_at_once_each_get_their_own_classes(app_url, tmp_path):  # noqa: F811
    groups = {"first": ["red", "green", "blue"], "second": ["yellow", "cyan", "magenta"]}
    probe = _teach_files(tmp_path / "probe", ["red"], per_class=1, seed=5) if (tmp_path / "probe").mkdir() is None else []

    def visitor(key):
        folder = tmp_path / key
        folder.mkdir()
        client = Client(app_url, verbose=False)
        summary, *_ = client.predict([handle_file(str(path)) for path in _teach_files(folder, groups[key])],
                                     api_name="/teach")
        label, _ = client.predict(handle_file(str(probe[0])), api_name="/classify_taught")
        rows, _ = client.predict([handle_file(str(probe[0]))], api_name="/classify_many")
        return summary["classes"], {entry["label"] for entry in label["confidences"]}, rows

    with ThreadPoolExecutor(2) as pool:
        answers = dict(zip(groups, pool.map(visitor, groups)))
    for key, (classes, labels, rows) in answers.items():
        assert classes == groups[key] and labels == set(groups[key])
        assert rows["data"][0][1].split(" (")[0] in groups[key]
    assert answers["first"][1].isdisjoint(answers["second"][1])


def test_a_push_goes_to_the_visitors_own_account_never_with_the_servers_token(tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import HfApi

    from support.hub import FakeHub
    from tl_space.app.teach import push_taught
    from tl_space.errors import UserError

    folder = tmp_path / "taught-model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "metrics.json"):
        (folder / name).write_text("{}")
    archive = Path(shutil.make_archive(str(folder), "zip", tmp_path, folder.name))
    shutil.rmtree(folder)
    fake = FakeHub().install(monkeypatch)
    tokens, uploaded = [], []
    real_whoami = HfApi.whoami
    monkeypatch.setattr(HfApi, "whoami", lambda api, *args, **kwargs: tokens.append(api.token) or real_whoami(api))
    real_upload = HfApi.upload_folder
    monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kwargs: uploaded.append(
        sorted(path.name for path in Path(kwargs["folder_path"]).iterdir())) or real_upload(api, **kwargs))
    monkeypatch.setenv("HF_TOKEN", "hf_TheServersOwnToken")
    with pytest.raises(UserError, match="Sign in with Hugging Face"):  # anonymous, the operator not opted in
        push_taught(archive, "my-classes", None, operator_token_allowed=False)
    assert not tokens
    assert push_taught(archive, "my-classes", "hf_TheVisitorsToken", operator_token_allowed=False) == "me/my-classes"
    assert tokens == ["hf_TheVisitorsToken"] * len(tokens) and tokens
    assert fake.named("create_repo")[0]["repo_id"] == "me/my-classes"
    assert uploaded == [["config.json", "metrics.json", "model.safetensors"]]  # the zip's folder, unpacked
    tokens.clear()
    assert push_taught(archive, "local-run", None, operator_token_allowed=True) == "me/local-run"  # opted in
    assert tokens and tokens[0] in (None, "hf_TheServersOwnToken")
    with pytest.raises(UserError, match="Name the repo"):
        push_taught(archive, "../escape", "hf_TheVisitorsToken", operator_token_allowed=False)


def test_the_bundled_sample_offers_cifar10_test_images_only_to_a_cifar10_model():
    import app
    from tl_space.app.served import load_served_model as load

    sample = app.teach_sample_or_none(load(str(app.DEFAULT_MODEL)).label_names)
    assert sample is not None and len(sample.labels) == 500
    assert torch.bincount(sample.labels).tolist() == [50] * 10 and sample.images.shape[1:] == (3, 32, 32)
    assert app.teach_sample_or_none(CLASS_NAMES) is None


def test_teach_cross_validates_calibrates_and_writes_a_folder_timm_loads(quick_folder, tmp_path):
    """app/teach.py itself, without a server: the head, its cross-validated score, and the folder it writes."""
    from tl_space.app import teach as teaching
    from tl_space.app.served import load_served_model
    from tl_space.app.storage import Storage
    from tl_space.folder.metrics import read_metrics

    served = load_served_model(str(quick_folder))
    images, labels = colour_images(8, 16, seed=21)
    examples = {name: [image for image, label in zip(images, labels) if CLASS_NAMES[label] == name]
                for name in ("red", "green", "blue")}
    taught = teaching.teach(served, examples, ["x.png: not an image"], store=Storage(tmp_path / "store"))
    summary = taught.summary
    assert summary["folds"] == 8 and summary["cross_validated_accuracy"] is not None
    assert summary["skipped"] == ["x.png: not an image"]
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(taught.archive).extractall(unpacked)
    folder = unpacked / "taught-model"
    metrics = read_metrics(folder, "taught")
    assert metrics["settings"]["strategy"] == "linear-probe" and metrics["settings"]["probe_solver"] == "lbfgs"
    assert metrics["stopped_by"] == "no training" and metrics["test"]["num_images"] == 24
    assert "other folds" in metrics["calibration"]["fitted_on"]  # never scored on the logits it was fitted on
    model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    assert model.pretrained_cfg["label_names"] == ["red", "green", "blue"]
    probabilities = teaching.taught_probabilities(served, taught, examples["green"][0])
    assert max(probabilities, key=probabilities.get) == "green"
    assert served.label_names == CLASS_NAMES  # the served model kept its own head


def test_teach_files_are_grouped_by_the_class_their_names_start_with():
    from tl_space.app import teach as teaching
    from tl_space.errors import UserError

    grouped, skipped = teaching.files_by_class([("cat_01.png", "a"), ("cat_02.png", "b"), ("dog.png", "c"),
                                                ("_x.png", "d")])
    assert grouped == {"cat": ["a", "b"], "dog": ["c"]} and skipped[0].startswith("_x.png: ")
    assert teaching.class_name_of_row(0, "  big   cat ") == "big cat"
    with pytest.raises(UserError, match="Name class 2"):
        teaching.class_name_of_row(1, "   ")
