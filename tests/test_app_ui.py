"""The real app on localhost, serving a model folder made by train.py, driven with gradio_client."""

import os
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import CLASS_NAMES, colour_images
from support.runs import ROOT
from tl_space.app.served import load_served_model
from tl_space.images import open_image
from tl_space.markdown import text

pytestmark = pytest.mark.slow  # end to end: train.py's code, or the app on a port

def test_classify_returns_the_five_most_likely_labels_sorted(client, sample_images, model_folder):
    label, timing = client.predict(handle_file(str(sample_images[0])), api_name="/classify")
    confidences = label["confidences"]
    assert len(confidences) == 5 and len(CLASS_NAMES) > 5
    values = [entry["confidence"] for entry in confidences]
    assert values == sorted(values, reverse=True) and label["label"] == confidences[0]["label"]
    expected = load_served_model(str(model_folder)).class_probabilities(open_image(sample_images[0]))
    top5 = sorted(expected.items(), key=lambda item: -item[1])[:5]
    assert [entry["label"] for entry in confidences] == [name for name, _ in top5]
    assert values == pytest.approx([value for _, value in top5], abs=1e-5)
    # The model's own (calibrated) softmax over all classes: the top 5 of 6 leave the sixth's share out, never
    # renormalised over the five.
    sixth = min(expected.values())
    assert sum(expected.values()) == pytest.approx(1, abs=1e-5)
    assert sum(values) == pytest.approx(1 - sixth, abs=1e-6) and sum(values) <= 1 + 1e-6
    assert timing.startswith("Predicted in ") and "ms" in timing


def test_the_model_learned_the_tiny_classes(client, tmp_path):
    images, labels = colour_images(4, 16, seed=11)
    right = 0
    for index, (image, label) in enumerate(zip(images, labels)):
        image.save(tmp_path / f"{index}.png")
        right += client.predict(handle_file(str(tmp_path / f"{index}.png")), api_name="/classify")[0]["label"] == CLASS_NAMES[label]
    assert right / len(images) >= 0.6  # chance is 1/6: the served model is the trained one, not a constant


def test_small_and_large_photos_take_the_same_path(client, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(small)
    large = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((3000, 4000, 3), (220, 30, 30), np.uint8)).save(large, exif=exif, quality=85)
    small_label = client.predict(handle_file(str(small)), api_name="/classify")[0]
    large_label, timing = client.predict(handle_file(str(large)), api_name="/classify")
    assert large_label["label"] == small_label["label"]
    width, height = (int(side) for side in timing.split(" on ")[1].split(" px")[0].split("x"))
    assert height > width  # stored 4000 wide, shown upright (EXIF orientation 6): taller than wide


def test_bad_uploads_get_a_clear_message_and_the_app_keeps_serving(client, tmp_path, sample_images):
    cases = {"empty.png": (b"", "The file is empty"),
             "notes.png": (b"hello, not an image", "not an image that can be read")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(tmp_path / name)), api_name="/classify")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(AppError, match="only 1x1 pixels"):
        client.predict(handle_file(str(tmp_path / "dot.png")), api_name="/classify")
    assert client.predict(handle_file(str(sample_images[1])), api_name="/classify")[0]["label"] in CLASS_NAMES


def test_uploads_over_the_size_limit_are_refused(client, tmp_path, sample_images):
    huge = tmp_path / "huge.png"
    huge.write_bytes(os.urandom(21 * 1024 * 1024))  # over the app's 20 MB cap
    with pytest.raises(Exception, match="exceeds the maximum file size of 20971520 bytes"):
        client.predict(handle_file(str(huge)), api_name="/classify")
    assert client.predict(handle_file(str(sample_images[2])), api_name="/classify")[0]["label"] in CLASS_NAMES


def test_concurrent_visitors_are_queued_and_all_answered(app_url, sample_images):
    def visitor(index: int) -> list[str]:
        own_client = Client(app_url, verbose=False)
        return [own_client.predict(handle_file(str(sample_images[(index + k) % len(sample_images)])),
                                   api_name="/classify")[0]["label"] for k in range(3)]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(visitor, range(6)))
    assert len(answers) == 6 and all(len(labels) == 3 for labels in answers)
    assert all(label in CLASS_NAMES for labels in answers for label in labels)


def test_heatmaps_come_back_within_a_request_and_differ_between_classes(client, sample_images):
    red, blue = (Image.open(client.predict(handle_file(str(sample_images[0])), name, api_name="/explain"))
                 for name in ("red", "blue"))
    assert red.size == blue.size == (320, 320)
    assert np.abs(np.asarray(red, dtype=int) - np.asarray(blue, dtype=int)).mean() > 1
    with pytest.raises(AppError, match="Pick one of the model's classes"):
        client.predict(handle_file(str(sample_images[0])), "purple", api_name="/explain")


def test_feature_maps_show_this_model_beside_its_pretrained_backbone(client, sample_images, pretrained_file):
    figure, note = client.predict(handle_file(str(sample_images[2])), api_name="/feature_maps")
    with Image.open(figure) as grid:
        assert grid.width > 1000 and grid.height > 200
    assert "the pretrained backbone it started from" in note and pretrained_file.name in note


def test_example_images_classify(client):
    examples = sorted((ROOT / "examples").glob("*.png"))
    assert len(examples) == 10
    for path in examples:
        label, timing = client.predict(handle_file(str(path)), api_name="/classify")
        assert label["label"] in CLASS_NAMES and "32x32 px" in timing


def test_gallery_lists_the_folders_misclassified_images(client, model_folder):
    records = load_served_model(str(model_folder)).misclassified
    items, *_ = client.predict("all classes", "all classes", api_name="/filter_mistakes")
    assert len(items) == len(records) > 0
    for item, record in zip(items, records):  # served as copies of the folder's PNGs, pixel for pixel
        served = item["image"]["path"] if isinstance(item["image"], dict) else item["image"]
        with Image.open(served) as image, Image.open(model_folder / record["file"]) as original:
            assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(original.convert("RGB")))


def test_mistakes_filter_by_true_class(client, model_folder):
    records = load_served_model(str(model_folder)).misclassified
    assert records, "the tiny model should make some mistakes to show"
    true_label = records[0]["true_label"]
    items, *_ = client.predict(true_label, "all classes", api_name="/filter_mistakes")
    expected = [record for record in records if record["true_label"] == true_label]
    assert [item["caption"] for item in items] == [
        f"{r['true_label']} → {r['predicted_label']} ({r['confidence']:.0%})" for r in expected]
    none, *_ = client.predict(true_label, true_label, api_name="/filter_mistakes")
    assert none == []  # a mistake never has its true class as prediction


def test_only_served_files_are_reachable(app_url, model_folder):
    checkpoint_file = model_folder / "checkpoint" / "optimizer.bin"  # a resumable run's state beside the model
    checkpoint_file.parent.mkdir(exist_ok=True)
    checkpoint_file.write_bytes(b"optimizer state")
    targets = [model_folder / "model.safetensors", model_folder / "metrics.json", checkpoint_file, ROOT / "app.py",
               Path("/etc/passwd"), "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", Path("/proc/self/environ"),
               "/proc/self/cwd/app.log"]
    for target in targets:
        url = f"{app_url}gradio_api/file={target}"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code in (403, 404), (target, refused.value.code)


def test_unreachable_model_id_shows_a_message_instead_of_crashing(caplog, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import app
    demo = app.create_demo("nobody/no-such-model")
    page_text = " ".join(str(block.get("props", {}).get("value", "")) for block in demo.config["components"])
    page_text = page_text.replace("\\", "")  # as shown: Markdown escapes dropped
    assert "'nobody/no-such-model' is neither a local model folder nor a Hub repo" in page_text
    assert "Set `MODEL_ID`" in page_text
    assert "nobody/no-such-model" in caplog.text


def test_bundled_model_serves_by_default_and_knows_the_examples(monkeypatch):
    """A fresh clone, no MODEL_ID: the committed model/ folder (Lite2 trained on CIFAR-10) is what the page serves."""
    monkeypatch.delenv("MODEL_ID", raising=False)
    sys.path.insert(0, str(ROOT))
    import app
    demo = app.create_demo()
    page_text = " ".join(str(block.get("props", {}).get("value", "")) for block in demo.config["components"])
    assert "tells apart 10 classes" in page_text
    # The header names what is served: backbone, strategy, dataset and test accuracy, from metrics.json.
    assert ("Model `model`: `tf_efficientnet_lite2` trained by **finetune** from `timm/tf_efficientnet_lite2.in1k` "
            "on `uoft-cs/cifar10`: **92.76% test accuracy**") in page_text
    assert "Study" in [block.get("props", {}).get("label") for block in demo.config["components"]]  # bundled study/
    loaded = load_served_model(str(ROOT / "model"))
    examples = sorted((ROOT / "examples").glob("*.png"))
    assert sorted(path.stem for path in examples) == sorted(loaded.label_names)
    predictions = {path.stem: max(loaded.class_probabilities(open_image(path)).items(), key=lambda kv: kv[1])[0]
                   for path in examples}
    assert sum(true == predicted for true, predicted in predictions.items()) >= 8, predictions
    assert loaded.metrics["test"]["accuracy"] > 0.75 and len(loaded.misclassified) == 64
    assert loaded.temperature != 1.0 and loaded.metrics["calibration"]["test_ece_after"] < loaded.metrics[
        "calibration"]["test_ece_before"]


def test_the_header_links_a_hub_repo_only_when_its_id_is_plainly_owner_and_name(model_folder):
    import dataclasses

    from tl_space.app.tabs.report import page_header

    loaded = load_served_model(str(model_folder))
    local = page_header(loaded)
    strategy = loaded.metrics["settings"]["strategy"]
    assert f"trained by **{text(strategy)}**" in local and "test accuracy**" in local and "huggingface.co" not in local
    from_hub = page_header(dataclasses.replace(loaded, source="me/colours"))
    assert from_hub.endswith(" · [me/colours](https://huggingface.co/me/colours).")
    hostile = dataclasses.replace(loaded, metrics={**loaded.metrics, "settings": {
        **loaded.metrics["settings"], "hub_model_id": "me/x)](javascript:alert(1)"}})
    assert "javascript" not in page_header(hostile) and "huggingface.co" not in page_header(hostile)
