"""tl_space.data on real `datasets` objects built by the tests."""

import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASS_NAMES, add_validation_split, colour_images, make_dataset_folder, make_image_folder

THREE_CLASSES = ["red", "green", "blue"]
from tl_space import data
from tl_space.errors import UserError


def test_open_dataset_finds_columns_and_class_names(tiny_dataset):
    dataset_dict, image_column, label_column, class_names = data.open_dataset(str(tiny_dataset))
    assert (image_column, label_column) == ("img", "label")
    assert class_names == CLASS_NAMES
    assert set(dataset_dict) == {"train", "test"}


def test_cifar100_style_columns_are_found(tmp_path):
    folder = make_dataset_folder(tmp_path / "c100", train_per_class=4, test_per_class=2,
                                 image_column="image", label_column="fine_label")
    _, image_column, label_column, class_names = data.open_dataset(str(folder))
    assert (image_column, label_column) == ("image", "fine_label")
    assert class_names == CLASS_NAMES


def test_missing_column_names_the_columns(tiny_dataset):
    with pytest.raises(UserError, match=r"--label-column: 'nope' is not one among the dataset's columns \['img', 'label'\]"):
        data.open_dataset(str(tiny_dataset), label_column="nope")


def test_missing_dataset_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="neither a local folder nor a Hub dataset"):
        data.open_dataset(str(tmp_path / "no-such-folder"))


def test_save_to_disk_folder_loads(tmp_path, tiny_dataset):
    dataset_dict = datasets.load_dataset(str(tiny_dataset))
    dataset_dict.save_to_disk(str(tmp_path / "saved"))
    assert data.open_dataset(str(tmp_path / "saved"))[3] == CLASS_NAMES


def test_decode_keeps_native_size_and_fits_mixed_sizes():
    images = [Image.new("RGB", (20, 10), (255, 0, 0)), Image.new("L", (8, 8), 128)]
    split = datasets.Dataset.from_dict({"img": images, "label": [0, 1]},
                                       features=datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}))
    decoded = data.decode_images(split, "img", "label", size=12)
    assert decoded.images.shape == (2, 3, 12, 12) and decoded.images.dtype == torch.uint8
    assert decoded.images[1].unique().tolist() == [128]  # grey converted to RGB
    same_size = data.decode_images(split.select([0]), "img", "label", size=12)
    assert same_size.images.shape == (1, 3, 10, 20)


def _colour_split(colours: list[tuple[int, int, int]], labels: list[int], size=(6, 6)) -> datasets.Dataset:
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=THREE_CLASSES)})
    return datasets.Dataset.from_dict({"img": [Image.new("RGB", size, colour) for colour in colours], "label": labels},
                                      features=features)


def test_decoded_images_are_read_back_from_the_cache_without_decoding(tmp_path, monkeypatch):
    split = _colour_split([(255, 0, 0), (0, 255, 0), (0, 0, 255)], [0, 1, 2])
    cache = tmp_path / "images"
    first = data.decode_images(split, "img", "label", size=8, cache_dir=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    def no_decoding(record):
        raise AssertionError("decoded again: the cache missed")
    monkeypatch.setattr(data, "_decode_image", no_decoding)
    again = data.decode_images(split, "img", "label", size=8, cache_dir=cache)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.images[2, :, 0, 0].tolist() == [0, 0, 255]


def test_decoded_image_cache_misses_on_every_part_of_its_key(tmp_path):
    split = _colour_split([(255, 0, 0), (0, 255, 0), (0, 0, 255)], [0, 1, 2])
    base = data.stored_images_key(split, "img", "label")
    assert data.stored_images_key(split, "img", "label") == base
    keys = {
        data.stored_images_key(_colour_split([(255, 0, 0), (0, 255, 0), (0, 0, 254)], [0, 1, 2]), "img", "label"),
        data.stored_images_key(_colour_split([(255, 0, 0), (0, 255, 0), (0, 0, 255)], [0, 1, 1]), "img", "label"),
        data.stored_images_key(split.select([0, 1]), "img", "label"),
        data.stored_images_key(split.select([1, 0, 2]), "img", "label"),
    }
    assert base not in keys and len(keys) == 4

    # A changed image is decoded again: the cache never hands back the old pixels.
    cache = tmp_path / "images"
    data.decode_images(split, "img", "label", size=8, cache_dir=cache)
    changed = data.decode_images(_colour_split([(255, 0, 0), (0, 255, 0), (9, 9, 9)], [0, 1, 2]), "img", "label",
                                 size=8, cache_dir=cache)
    assert changed.images[2, :, 0, 0].tolist() == [9, 9, 9]
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_only_fitted_images_are_cached_per_size(tmp_path):
    cache = tmp_path / "images"
    same_size = _colour_split([(255, 0, 0), (0, 255, 0)], [0, 1])
    assert data.decode_images(same_size, "img", "label", 8, cache_dir=cache).images.shape == (2, 3, 6, 6)
    assert data.decode_images(same_size, "img", "label", 12, cache_dir=cache).images.shape == (2, 3, 6, 6)
    assert len(list(cache.glob("*.safetensors"))) == 1  # the size never mattered: one entry serves both
    mixed = datasets.concatenate_datasets([same_size, _colour_split([(0, 0, 255)], [2], size=(9, 5))])
    assert data.decode_images(mixed, "img", "label", 8, cache_dir=cache).images.shape == (3, 3, 8, 8)
    assert data.decode_images(mixed, "img", "label", 12, cache_dir=cache).images.shape == (3, 3, 12, 12)
    assert data.decode_images(mixed, "img", "label", 8, cache_dir=cache).images.shape == (3, 3, 8, 8)
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_images_kept_as_files_miss_the_cache_once_the_file_changes(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=THREE_CLASSES)})
    split = datasets.Dataset.from_dict({"img": [str(path)], "label": [0]}, features=features)
    cache = tmp_path / "images"
    assert data.decode_images(split, "img", "label", 8, cache_dir=cache).images[0, :, 0, 0].tolist() == [10, 20, 30]
    Image.new("RGB", (4, 4), (40, 50, 60)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))  # a coarse clock still moves on
    assert data.decode_images(split, "img", "label", 8, cache_dir=cache).images[0, :, 0, 0].tolist() == [40, 50, 60]


def _labels(per_class: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])


def _split(per_class: list[int]) -> data.LabelledImages:
    labels = _labels(per_class)
    # Each image carries its own index so overlaps between splits can be detected.
    images = torch.arange(len(labels)).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.int64)
    return data.LabelledImages(images, labels)


def test_validation_is_stratified_and_disjoint_from_train():
    train, val, test = data.split_data(_split([50, 30, 20]), _split([5, 5, 5]), THREE_CLASSES, val_size=10,
                                       shots_per_class=None, train_fraction=None, max_train_samples=None,
                                       max_eval_samples=None, seed=0)
    assert torch.bincount(val.labels).tolist() == [5, 3, 2]
    assert len(train) == 90 and len(test) == 15
    assert not set(train.images[:, 0, 0, 0].tolist()) & set(val.images[:, 0, 0, 0].tolist())


@pytest.mark.parametrize("shots, fraction, expected", [(7, None, [7, 7, 7]), (None, 0.1, [4, 4, 3])])
def test_few_shot_subsets_have_the_asked_counts_per_class(shots, fraction, expected):
    # After a stratified hold-out of 12 (5, 4, 3) the classes have 45, 36, 27: 10% rounds to 4, 4, 3.
    train, _, _ = data.split_data(_split([50, 40, 30]), _split([2, 2, 2]), THREE_CLASSES, val_size=12,
                                  shots_per_class=shots, train_fraction=fraction, max_train_samples=None,
                                  max_eval_samples=None, seed=3)
    assert torch.bincount(train.labels).tolist() == expected


def test_subsets_are_seeded():
    def pick(seed):
        return data.split_data(_split([30, 30, 30]), _split([2, 2, 2]), THREE_CLASSES, val_size=9, shots_per_class=5,
                               train_fraction=None, max_train_samples=None, max_eval_samples=None, seed=seed)[0]
    assert torch.equal(pick(1).images, pick(1).images)
    assert not torch.equal(pick(1).images, pick(2).images)


def test_a_split_seed_keeps_validation_and_test_while_the_seed_picks_the_subset():
    def pick(seed, split_seed):
        return data.split_data(_split([30, 30, 30]), _split([9, 9, 9]), THREE_CLASSES, val_size=9, shots_per_class=5,
                               train_fraction=None, max_train_samples=None, max_eval_samples=12, seed=seed,
                               split_seed=split_seed)
    (train_1, val_1, test_1), (train_2, val_2, test_2) = pick(1, 7), pick(2, 7)
    assert torch.equal(val_1.images, val_2.images) and torch.equal(test_1.images, test_2.images)
    assert not torch.equal(train_1.images, train_2.images)
    assert not set(train_2.images[:, 0, 0, 0].tolist()) & set(val_1.images[:, 0, 0, 0].tolist())
    # Without a split seed, --seed draws everything as it always did.
    assert all(torch.equal(a.images, b.images) for a, b in zip(pick(1, None), pick(1, None)))
    assert not torch.equal(pick(1, None)[1].images, pick(2, None)[1].images)


def test_too_many_shots_names_the_class_and_the_limit():
    with pytest.raises(UserError, match=r"--shots-per-class 30 is more than class 'blue' has for training \(18 images"):
        data.split_data(_split([40, 40, 20]), _split([2, 2, 2]), THREE_CLASSES, val_size=10, shots_per_class=30,
                        train_fraction=None, max_train_samples=None, max_eval_samples=None, seed=0)


def test_decoding_rejects_unlabelled_rows(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    pixels = [Image.fromarray(np.zeros((4, 4, 3), np.uint8))] * 4
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"img": pixels, "label": [0, 1, 0, 1]}, features=features),
        "test": datasets.Dataset.from_dict({"img": pixels, "label": [-1, -1, -1, -1]}, features=features),
    }).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(UserError, match=r"labels \[-1\] outside 0..1 \(rows \[0, 1, 2, 3\]"):
        data.decode_splits(data.open_splits(str(tmp_path / "unlabelled")), 4)


def test_a_datasets_own_validation_split_is_used_and_named(tmp_path):
    folder = add_validation_split(make_dataset_folder(tmp_path / "with-val", train_per_class=10, test_per_class=3))
    opened = data.open_splits(str(folder))
    assert opened.sources == data.SplitSources("train", "validation", "test", 42)
    assert (len(opened.train), len(opened.validation), len(opened.test)) == (60, 30, 18)
    decoded = data.decode_splits(opened, 16)
    train, val, _ = data.split_data(decoded.train, decoded.test, CLASS_NAMES, val_size=None, shots_per_class=None,
                                    train_fraction=None, max_train_samples=None, max_eval_samples=None, seed=0,
                                    val=decoded.val)
    assert len(train) == 60 and torch.equal(val.images, decoded.val.images)  # nothing taken out of train
    assert "the dataset's 'validation' split (30 images)" in opened.sources.describe(30, 18)["validation"]


def test_validation_split_names_a_split_and_a_wrong_name_lists_those_there(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    images, labels = colour_images(3, 8, seed=0)
    split = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    datasets.DatasetDict({"train": split, "holdout": split, "test": split}).save_to_disk(str(tmp_path / "saved"))
    assert data.open_splits(str(tmp_path / "saved")).validation is None  # a name only --validation-split picks
    assert len(data.open_splits(str(tmp_path / "saved"), validation_split="holdout").validation) == 18
    with pytest.raises(UserError, match=r"--validation-split 'valid' is not a split .*; it has \['train', 'holdout', 'test'\]"):
        data.open_splits(str(tmp_path / "saved"), validation_split="valid")


def test_a_folder_of_class_folders_gets_a_stratified_seeded_test_split_carved_by_datasets(tmp_path):
    folder = make_image_folder(tmp_path / "classes", per_class=20)
    opened = data.open_splits(str(folder), carve_seed=7)
    assert opened.sources.test is None and opened.validation is None
    test_labels = np.asarray(opened.test[opened.label_column])
    assert len(opened.test) == 24 and np.bincount(test_labels).tolist() == [4] * 6  # 20% of each class
    assert len(opened.train) == 96
    again = data.open_splits(str(folder), carve_seed=7)
    assert again.test["image"][0].tobytes() == opened.test["image"][0].tobytes()  # seeded
    assert "20% of 'train' carved out" in opened.sources.describe(10, 24)["test"]
    with pytest.raises(UserError, match=r"--test-split 'holdout' is not a split"):
        data.open_splits(str(folder), test_split="holdout")


def test_a_class_too_small_to_carve_a_test_split_from_is_named(tmp_path):
    folder = make_image_folder(tmp_path / "one-each", per_class=1)
    with pytest.raises(UserError, match=r"too small to carve a stratified 20% test split"):
        data.open_splits(str(folder))
