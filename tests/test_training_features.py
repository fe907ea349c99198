"""The feature cache: hits when nothing changed, misses when any part of the key did, never a stale file."""

import json

import pytest
import timm
import torch

from conftest import make_dataset_folder
from support.runs import tiny_settings
from tl_space import caches
from tl_space.settings import COMPILE_MIN_IMAGES
from tl_space.training.run import run
from tl_space.training.features import FixedBatch, feature_extractor
from tl_space.training.run import resolve
from tl_space.transforms import Preprocessing

PREPROCESSING = Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")


def _key(model, preprocessing=PREPROCESSING, precision="no", images=None):
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8) if images is None else images
    return caches.features_key(caches.backbone_fingerprint(model), type(model).__name__, preprocessing, precision,
                                caches.images_fingerprint(images))


def test_every_part_of_the_key_matters_but_the_head_does_not():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    base = _key(model)
    assert _key(model) == base
    with torch.no_grad():
        model.fc.weight.add_(1)  # a new head: same features
    assert _key(model) == base
    other_weights = timm.create_model("test_resnet", num_classes=3)
    other_architecture = timm.create_model("test_efficientnet", num_classes=3)
    changed_images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    changed_images[3, 2, 7, 7] = 1
    keys = {
        _key(other_weights),
        _key(other_architecture),
        _key(model, preprocessing=Preprocessing(48, PREPROCESSING.mean, PREPROCESSING.std, "bilinear")),
        _key(model, preprocessing=Preprocessing(32, (0.4, 0.5, 0.5), PREPROCESSING.std, "bilinear")),
        _key(model, preprocessing=Preprocessing(32, PREPROCESSING.mean, PREPROCESSING.std, "bicubic")),
        _key(model, precision="bf16"),
        _key(model, images=changed_images),
        _key(model, images=torch.zeros(5, 3, 8, 8, dtype=torch.uint8)),
    }
    assert base not in keys and len(keys) == 8
    with torch.no_grad():
        model.layer1[0].bn1.running_mean.add_(0.1)  # buffers are part of the backbone too
    assert _key(model) != base


@pytest.mark.slow
def test_cached_features_are_reused_for_reruns_and_few_shot_subsets(tiny_dataset, pretrained_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = tiny_settings(tiny_dataset, tmp_path / "first", pretrained_file, strategy="linear-probe",
                          cache_dir=str(cache))
    run(first)
    stored = sorted((cache / "features").glob("*.safetensors"))
    assert len(stored) == 3  # the whole train split, the whole test split, and its mirror images (flip TTA)
    assert "from the cache" not in capsys.readouterr().out

    run(tiny_settings(tiny_dataset, tmp_path / "again", pretrained_file, strategy="linear-probe",
                      cache_dir=str(cache)))
    assert capsys.readouterr().out.count("from the cache") == 3
    one = json.loads((tmp_path / "first" / "metrics.json").read_text())["test"]
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())["test"]
    assert again["confusion_matrix"] == one["confusion_matrix"]
    assert again["loss"] == pytest.approx(one["loss"], rel=1e-5)

    run(tiny_settings(tiny_dataset, tmp_path / "few", pretrained_file, strategy="linear-probe", shots_per_class=5,
                      epochs=4, lr=0.01, cache_dir=str(cache)))
    assert capsys.readouterr().out.count("from the cache") == 3
    assert sorted((cache / "features").glob("*.safetensors")) == stored


@pytest.mark.slow
def test_changed_images_never_reuse_a_stale_cache(tiny_dataset, pretrained_file, tmp_path, capsys):
    cache = tmp_path / "cache"
    run(tiny_settings(tiny_dataset, tmp_path / "a", pretrained_file, strategy="linear-probe",
                      cache_dir=str(cache)))
    capsys.readouterr()
    # Same train images (same generator seed and count), other test images.
    other = make_dataset_folder(tmp_path / "other-data", train_per_class=40, test_per_class=13, size=16)
    run(tiny_settings(other, tmp_path / "b", pretrained_file, strategy="linear-probe", cache_dir=str(cache)))
    out = capsys.readouterr().out
    assert out.count("from the cache") == 1  # the train split is the same images; the test split is not
    assert len(list((cache / "features").glob("*.safetensors"))) == 5  # 3, then the new test split and its mirror images


@pytest.mark.slow
def test_cached_features_match_a_fresh_pass(tiny_dataset, pretrained_file, tmp_path):
    cache = tmp_path / "cache"
    run(tiny_settings(tiny_dataset, tmp_path / "cached", pretrained_file, strategy="linear-probe",
                      cache_dir=str(cache)))
    run(tiny_settings(tiny_dataset, tmp_path / "cached-again", pretrained_file, strategy="linear-probe",
                      cache_dir=str(cache)))
    run(tiny_settings(tiny_dataset, tmp_path / "fresh", pretrained_file, strategy="linear-probe"))
    cached = json.loads((tmp_path / "cached-again" / "metrics.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "metrics.json").read_text())
    assert cached["test"]["confusion_matrix"] == fresh["test"]["confusion_matrix"]
    for entry_cached, entry_fresh in zip(cached["history"], fresh["history"]):
        assert entry_cached["val_loss"] == pytest.approx(entry_fresh["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_compiled_extractor_gives_the_eager_features_for_every_batch_size():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval().to(memory_format=torch.channels_last)
    inputs = torch.randn(11, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    eager = feature_extractor(model, batch_size=4, compile_it=False)
    compiled = feature_extractor(model, batch_size=4, compile_it=True)
    assert isinstance(compiled, FixedBatch)
    with torch.inference_mode():
        expected = eager(inputs)
        # 4, 4 and a short last batch of 3, which FixedBatch pads so the compiled graph keeps one shape.
        batches = [compiled(inputs[start:start + 4]) for start in range(0, 11, 4)]
    assert [len(batch) for batch in batches] == [4, 4, 3]
    torch.testing.assert_close(torch.cat(batches), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compile_auto_only_where_it_repays_its_start_up(tiny_dataset, pretrained_file, tmp_path):
    settings = tiny_settings(tiny_dataset, tmp_path, pretrained_file)

    def compiles(images: int, device: str = "cpu") -> bool:
        threshold = resolve(settings, torch.device(device)).compile_min_images
        return threshold is not None and images >= threshold
    assert not compiles(1_000)
    assert compiles(50_000)
    assert 1_000 < COMPILE_MIN_IMAGES <= 50_000
    assert not compiles(50_000, "cuda")  # auto: a GPU extracts features fast enough eagerly
    settings.compile = "no"
    assert not compiles(50_000)
    settings.compile = "yes"
    assert compiles(10)
