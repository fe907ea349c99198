"""Fixtures: a tiny real image dataset in the Hub's parquet layout, a tiny timm model's weights file, model folders
trained from them by train.py's code, and the real app serving one (tests/support holds the helpers)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may wait on the Hub's retries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from gradio_client import Client  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from support.hub import FAKE_TOKEN  # noqa: E402
from support.local_app import running_app  # noqa: E402
from support.runs import TINY_MODEL, tiny_settings  # noqa: E402

# Six classes, more than the app's top 5; each lights one or two colour channels.
CLASS_CHANNELS = {"red": (0,), "green": (1,), "blue": (2,), "yellow": (0, 1), "cyan": (1, 2), "magenta": (0, 2)}
CLASS_NAMES = list(CLASS_CHANNELS)


def colour_images(count_per_class: int, size: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    """Noisy images whose bright channels are their class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, channels in enumerate(CLASS_CHANNELS.values()):
        for _ in range(count_per_class):
            pixels = rng.integers(0, 110, size=(size, size, 3), dtype=np.uint8)
            for channel in channels:
                pixels[..., channel] += rng.integers(100, 145, dtype=np.uint8)
            images.append(Image.fromarray(pixels))
            labels.append(label)
    return images, labels


def one_image_per_class(folder: Path, seed: int) -> list[Path]:
    """One image of each class, saved as CLASS.png, at the tiny dataset's size."""
    images, labels = colour_images(1, 16, seed=seed)
    paths = [folder / f"{CLASS_NAMES[label]}.png" for label in labels]
    for image, path in zip(images, paths):
        image.save(path)
    return paths


def make_dataset_folder(folder: Path, train_per_class: int = 40, test_per_class: int = 12, size: int = 16,
                        image_column: str = "img", label_column: str = "label") -> Path:
    """A DatasetDict written as parquet in the Hub's layout (plain_text/<split>-00000-of-00001.parquet)."""
    features = datasets.Features({image_column: datasets.Image(), label_column: datasets.ClassLabel(names=CLASS_NAMES)})
    (folder / "plain_text").mkdir(parents=True)
    for split, per_class, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        images, labels = colour_images(per_class, size, seed)
        split_rows = datasets.Dataset.from_dict({image_column: images, label_column: labels}, features=features)
        split_rows.to_parquet(str(folder / "plain_text" / f"{split}-00000-of-00001.parquet"))
    return folder


def make_image_folder(folder: Path, per_class: int = 24, size: int = 20) -> Path:
    """AutoTrain's usual layout: one folder of PNGs per class, no split folders (so no test split)."""
    images, labels = colour_images(per_class, size, seed=2)
    for index, (image, label) in enumerate(zip(images, labels)):
        class_folder = folder / CLASS_NAMES[label]
        class_folder.mkdir(parents=True, exist_ok=True)
        image.save(class_folder / f"{index:04d}.png")
    return folder


def add_validation_split(folder: Path, per_class: int = 5, name: str = "validation", size: int = 16) -> Path:
    """A parquet folder from make_dataset_folder with a validation split of its own beside train and test."""
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    images, labels = colour_images(per_class, size, seed=3)
    datasets.Dataset.from_dict({"img": images, "label": labels}, features=features).to_parquet(
        str(folder / "plain_text" / f"{name}-00000-of-00001.parquet"))
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset_folder(tmp_path_factory.mktemp("tiny-cifar"))


@pytest.fixture(scope="session")
def pretrained_file(tmp_path_factory) -> Path:
    """test_resnet weights in timm's format, standing in for the ImageNet checkpoint the Hub would give."""
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    torch.manual_seed(0)  # the same stand-in weights whatever ran before
    model = timm.create_model(TINY_MODEL, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def study_arguments(dataset: Path, weights: Path, output_dir: Path, *extra: str) -> list[str]:
    """A small study: two strategies, a repeated few-shot size and all images, test_resnet at 32 px."""
    return ["--strategies", "linear-probe,finetune", "--shots-per-class", "2,all", "--seeds", "2", "--repeat-up-to", "2",
            "--dataset", str(dataset), "--model", TINY_MODEL, "--pretrained-file", str(weights), "--epochs", "2",
            "--image-size", "32", "--val-size", "30", "--batch-size", "32", "--cache-dir", "none",
            "--mixed-precision", "no", "--min-epoch-images", "48", "--output-dir", str(output_dir), *extra]


@pytest.fixture(scope="session")
def tiny_study(tiny_dataset, pretrained_file, tmp_path_factory) -> Path:
    from tl_space.study.run import main

    folder = tmp_path_factory.mktemp("study") / "colours"
    assert main(study_arguments(tiny_dataset, pretrained_file, folder)) == 0
    return folder


@pytest.fixture(scope="module")
def model_folder(tiny_dataset, pretrained_file, tmp_path_factory):
    """A linear probe trained by train.py's code (~76%: learned, with mistakes to show)."""
    from tl_space.training.run import run

    folder = tmp_path_factory.mktemp("app") / "model"
    run(tiny_settings(tiny_dataset, folder, pretrained_file, strategy="linear-probe", epochs=4, lr=0.03))
    return folder


@pytest.fixture(scope="module")
def trained_folder(model_folder) -> Path:
    """model_folder under the name of the tests that serve it as a Space would (each copies it first)."""
    return model_folder


@pytest.fixture(scope="module")
def app_url(model_folder, pretrained_file, tmp_path_factory):
    """`python app.py` with MODEL_ID set, as a user starts it (PRETRAINED_FILE: the backbone's weights, offline);
    stopped after the module's tests."""
    with running_app(str(model_folder), tmp_path_factory.mktemp("app-cwd"),
                     env={"PRETRAINED_FILE": str(pretrained_file)}) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory):
    return one_image_per_class(tmp_path_factory.mktemp("uploads"), seed=7)


@pytest.fixture(scope="module")
def compare_folder(tiny_dataset, pretrained_file, tmp_path_factory):
    """A good run and a weak one (a linear probe that hardly trained), bundled with 30 test images."""
    from tl_space.app.bundle import bundle
    from tl_space.training.run import run

    runs = tmp_path_factory.mktemp("runs")
    good = run(tiny_settings(tiny_dataset, runs / "good", pretrained_file, strategy="linear-probe", epochs=4, lr=0.03))
    weak = run(tiny_settings(tiny_dataset, runs / "weak", pretrained_file, strategy="linear-probe", epochs=1,
                             lr=1e-3))
    folder = tmp_path_factory.mktemp("bundle") / "compare"
    bundle([good, weak], str(tiny_dataset), folder, count=30)
    return folder


@pytest.fixture(scope="module")
def upload(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "red.png"
    colour_images(1, 16, seed=5)[0][0].save(path)
    return path


@pytest.fixture
def logged_in(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)


@pytest.fixture(scope="module")
def quick_folder(tmp_path_factory, pretrained_file) -> Path:
    """A model folder in seconds (support/folders.py): not trained, written as train.py writes one."""
    from support.folders import quick_model_folder

    images, labels = colour_images(4, 16, seed=11)
    return quick_model_folder(tmp_path_factory.mktemp("quick") / "quick", pretrained_file, CLASS_NAMES, images, labels)
