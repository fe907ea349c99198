"""python -m tl_space.predict on a model folder and a taught model's unpacked zip: the CSV matches the app's path."""

import csv
import zipfile

import pytest
from PIL import Image

from conftest import CLASS_NAMES, colour_images
from tl_space import predict
from tl_space.app import teach as teaching
from tl_space.app.storage import Storage
from tl_space.app.served import load_served_model



def _image_tree(root, count=11):
    """Images in nested folders (odd sizes, a JPEG), a corrupt PNG and a text file that is not an image."""
    images, labels = colour_images(2, 24, seed=5)
    paths = []
    for index, (image, label) in enumerate(zip(images[:count], labels)):
        folder = root / ("nested/deeper" if index % 2 else "top")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{CLASS_NAMES[label]}_{index}.{'jpg' if index == 3 else 'png'}"
        (image.resize((24 + index, 30)) if index % 3 == 0 else image).save(path)
        paths.append(path)
    (root / "top" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "top" / "notes.txt").write_text("not an image")
    return sorted(paths + [root / "top" / "broken.png"])


def _rows(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow  # a trained model: an untrained one's near-uniform probabilities have no stable ranking
def test_predict_writes_top_k_per_image_in_batches_and_names_what_it_skips(model_folder, tmp_path, capsys):
    files = _image_tree(tmp_path / "images")
    output = tmp_path / "predictions.csv"
    assert predict.main([str(model_folder), str(tmp_path / "images"), "--output", str(output), "--top-k", "3",
                         "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {tmp_path / 'images' / 'top' / 'broken.png'}: " in captured.err
    assert "wrote 11 predictions" in captured.out and "skipped 1 unreadable file(s)" in captured.out
    rows = _rows(output)
    assert [row["file"] for row in rows] == [str(path) for path in files if path.name != "broken.png"]
    assert list(rows[0]) == ["file", "top1", "top1_probability", "top2", "top2_probability", "top3", "top3_probability"]
    loaded = load_served_model(str(model_folder))
    for row in rows:  # each the same as the app's Classify tab gives that image alone
        alone = loaded.class_probabilities(Image.open(row["file"]).convert("RGB"))
        ranked = sorted(alone, key=alone.get, reverse=True)[:3]
        assert [row[f"top{rank}"] for rank in (1, 2, 3)] == ranked
        assert float(row["top1_probability"]) == pytest.approx(alone[ranked[0]], abs=1e-5)


def test_predict_serves_a_taught_models_unpacked_zip(quick_folder, tmp_path, capsys):
    loaded = load_served_model(str(quick_folder))
    images, labels = colour_images(6, 16, seed=8)
    examples = {name: [image for image, label in zip(images, labels) if CLASS_NAMES[label] == name]
                for name in ("red", "green", "blue")}
    taught = teaching.teach(loaded, examples, [], store=Storage(tmp_path / "store"))
    with zipfile.ZipFile(taught.archive) as archive:
        archive.extractall(tmp_path / "unzipped")
    files = _image_tree(tmp_path / "images")
    output = tmp_path / "taught.csv"
    assert predict.main([str(tmp_path / "unzipped" / "taught-model"), *map(str, files[:4]), "--output",
                         str(output)]) == 0
    rows = _rows(output)
    assert len(rows) == 4 and list(rows[0])[-2:] == ["top3", "top3_probability"]  # top-k is at most the classes
    for row in rows:
        expected = teaching.taught_probabilities(loaded, taught, Image.open(row["file"]).convert("RGB"))
        assert row["top1"] == max(expected, key=expected.get)
        assert float(row["top1_probability"]) == pytest.approx(max(expected.values()), abs=1e-4)


def test_predict_refuses_a_path_that_is_not_there(quick_folder, tmp_path, capsys):
    assert predict.main([str(quick_folder), str(tmp_path / "nowhere.png")]) == 2
    assert "is neither an image file nor a folder" in capsys.readouterr().err
