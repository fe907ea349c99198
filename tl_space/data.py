"""Dataset -> uint8 image tensors: loading, column detection, stratified splits and few-shot subsets."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import PIL
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from tl_space import caches
from tl_space.errors import UserError

IMAGE_COLUMN_NAMES = ("img", "image", "images", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "coarse_label", "class")
# Parquet and Arrow decoding: rows handled per batch, to bound memory while decoding.
DECODE_BATCH_ROWS = 2048
# A dataset's own validation split, by the names the Hub's datasets give it, in this order.
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val")
DEFAULT_TEST_SPLIT = "test"
# The share of train carved out as the test split of a dataset that has none (AutoTrain's and the HF examples' 20%).
CARVED_TEST_FRACTION = 0.2


@dataclass
class LabelledImages:
    """A split held in memory: images as one uint8 tensor (N, 3, H, W), labels as int64 (N,), maybe features."""

    images: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor | None = None  # a frozen backbone's pooled features, row i for image i

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> "LabelledImages":
        features = None if self.features is None else self.features[indices.to(self.features.device)]
        return LabelledImages(self.images[indices], self.labels[indices], features)


@dataclass(frozen=True)
class SplitSources:
    """Where a run's validation and test images come from: the dataset's own splits, or carved out of train."""

    train: str
    validation: str | None  # the dataset's validation split; None: --val-size images held out of train
    test: str | None  # the dataset's test split; None: CARVED_TEST_FRACTION of train, stratified
    carve_seed: int  # the seed of what is carved out of train (the test share and the validation hold-out)

    def describe(self, val_images: int, test_images: int) -> dict[str, str]:
        """A sentence for each of validation and test, for the log, metrics.json and the card."""
        validation = (f"the dataset's {self.validation!r} split ({val_images:,} images)" if self.validation else
                      f"{val_images:,} images held out of {self.train!r} (stratified, seed {self.carve_seed})")
        test = (f"the dataset's {self.test!r} split ({test_images:,} images)" if self.test else
                f"{test_images:,} images, {CARVED_TEST_FRACTION:.0%} of {self.train!r} carved out (stratified, seed "
                f"{self.carve_seed}): the dataset has no {DEFAULT_TEST_SPLIT!r} split")
        return {"validation": validation, "test": test}


@dataclass
class OpenedSplits:
    """A dataset opened (nothing decoded yet): its train, validation (if it has one) and test splits, columns, classes."""

    train: datasets.Dataset
    validation: datasets.Dataset | None
    test: datasets.Dataset
    image_column: str
    label_column: str
    class_names: list[str]
    sources: SplitSources


@dataclass
class DecodedData:
    """A dataset's splits decoded once, before any hold-out or subset is taken; val is None without its own split."""

    train: LabelledImages
    val: LabelledImages | None
    test: LabelledImages
    class_names: list[str]
    image_column: str
    label_column: str

    def without_features(self) -> "DecodedData":
        """The same images and labels, without features (those belong to one run's model)."""
        plain = [None if split is None else LabelledImages(split.images, split.labels)
                 for split in (self.train, self.val, self.test)]
        return DecodedData(*plain, self.class_names, self.image_column, self.label_column)


@dataclass(frozen=True)
class DecodedKey:
    """What decoded data depends on: where it came from, which splits and columns, and the size images were fitted to."""

    dataset: str
    sources: SplitSources
    image_column: str | None
    label_column: str | None
    image_size: int


@dataclass
class DecodedDataStore:
    """Decoded data kept in memory for later runs of the same process (the runs of a study)."""

    kept: dict[DecodedKey, DecodedData] = field(default_factory=dict)

    def get(self, key: DecodedKey) -> DecodedData | None:
        """A copy of what was kept, without features, or None."""
        found = self.kept.get(key)
        return None if found is None else found.without_features()

    def put(self, key: DecodedKey, decoded: DecodedData) -> None:
        self.kept[key] = decoded.without_features()


@dataclass
class DataSplits:
    train: LabelledImages
    val: LabelledImages
    test: LabelledImages
    class_names: list[str]
    image_column: str
    label_column: str


def load_dataset_dict(name: str) -> datasets.DatasetDict:
    """A DatasetDict from a local folder (parquet/arrow files or save_to_disk) or a Hub dataset id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(path))
        try:
            return datasets.load_dataset(str(path))
        except Exception as error:  # datasets raises many types for a folder it cannot read
            raise UserError(f"--dataset {name!r} is a folder but holds no dataset that `datasets` can read "
                            f"({type(error).__name__}: {error}); give a folder of parquet files with "
                            "train/test in their names, a save_to_disk folder, or a Hub id") from error
    if path.exists():
        raise UserError(f"--dataset {name!r} is a file; give a folder or a Hub dataset id such as uoft-cs/cifar10")
    try:
        loaded = datasets.load_dataset(name)
    except Exception as error:
        raise UserError(f"--dataset {name!r} is neither a local folder nor a Hub dataset that could be loaded "
                        f"({type(error).__name__}: {error}); check the id (e.g. uoft-cs/cifar10), your network "
                        "and HF_TOKEN, or give a local folder") from error
    if not isinstance(loaded, datasets.DatasetDict):
        raise UserError(f"--dataset {name!r} has no named splits; expected a DatasetDict with train and test")
    return loaded


def find_columns(features: datasets.Features, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The image and label column names: given ones checked, else found from the feature types."""
    names = list(features)
    if image_column is None:
        image_column = next((c for c in names if isinstance(features[c], datasets.Image)), None)
        image_column = image_column or next((c for c in IMAGE_COLUMN_NAMES if c in names), None)
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMN_NAMES if isinstance(features.get(c), datasets.ClassLabel)), None)
        label_column = label_column or next((c for c in names if isinstance(features[c], datasets.ClassLabel)), None)
        label_column = label_column or next((c for c in LABEL_COLUMN_NAMES if c in names), None)
    for option, column in (("--image-column", image_column), ("--label-column", label_column)):
        if column is None or column not in names:
            found = "none was found" if column is None else f"{column!r} is not one"
            raise UserError(f"{option}: {found} among the dataset's columns {names}; pass {option} with one of them")
    if not isinstance(features[image_column], datasets.Image):
        raise UserError(f"--image-column {image_column!r} holds {features[image_column]}, not images; "
                        f"pick one of {names}")
    return image_column, label_column


def class_names_of(split: datasets.Dataset, label_column: str) -> list[str]:
    """Class names from a ClassLabel feature, else the sorted distinct label values as strings."""
    feature = split.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted(set(split[label_column]))
    if values != list(range(len(values))):
        # Name the values that break 0..K-1 (K = the count of distinct values), not the first ten, which may all fit.
        unexpected = [value for value in values if not (isinstance(value, int) and 0 <= value < len(values))]
        raise UserError(f"--label-column {label_column!r} is not a ClassLabel and its values are not 0..K-1: "
                        f"{len(values)} distinct values, among them {unexpected[:10]}; cast it to a ClassLabel first")
    return [str(value) for value in values]


def _decode_image(record: dict) -> Image.Image:
    """One stored image (bytes or path) as an upright RGB PIL image."""
    source = io.BytesIO(record["bytes"]) if record.get("bytes") else record["path"]
    with Image.open(source) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _fit(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC))


def stored_images_key(split: datasets.Dataset, image_column: str, label_column: str) -> str:
    """A hash of what a split stores: each image's encoded bytes (or, for an image kept as a file, its path, size and
    modification time), its labels, and the decoder's version."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps({"rows": len(split), "pillow": PIL.__version__, "version": 1}).encode())
    raw = split.cast_column(image_column, datasets.Image(decode=False)).with_format("arrow")
    for batch in raw.iter(batch_size=DECODE_BATCH_ROWS * 8):
        for record in batch.column(image_column).to_pylist():
            if record.get("bytes"):
                digest.update(len(record["bytes"]).to_bytes(8, "little"))
                digest.update(record["bytes"])
            else:
                stat = os.stat(record["path"])
                digest.update(json.dumps([record["path"], stat.st_size, stat.st_mtime_ns]).encode())
        digest.update(np.asarray(batch.column(label_column).to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())
    return digest.hexdigest()


def decode_images(split: datasets.Dataset, image_column: str, label_column: str, size: int,
                  progress: bool = False, cache_dir: Path | None = None, split_name: str = "train") -> LabelledImages:
    """Decode a split once into uint8 tensors; with cache_dir, read them from there when the same stored images were
    decoded before (and store them when not).

    Images that all share one size keep it (CIFAR stays 32x32 and is resized later, on the device,
    batch by batch); once a second size shows up, every image is fitted to size x size, since one
    tensor needs one shape. Only fitted images depend on size, so only their cache entry names it.
    """
    if cache_dir is None:
        return _decode_split(split, image_column, label_column, size, progress, split_name)[0]
    stored = stored_images_key(split, image_column, label_column)
    native_key, fitted_key = f"{stored}-native", f"{stored}-fitted-{size}"
    for key in (native_key, fitted_key):
        tensors = caches.load(cache_dir, key)
        if tensors is not None:
            if progress:
                tqdm.write(f"read {len(tensors['labels'])} decoded images from {cache_dir}")
            return LabelledImages(tensors["images"], tensors["labels"])
    decoded, fitted = _decode_split(split, image_column, label_column, size, progress, split_name)
    caches.store(cache_dir, fitted_key if fitted else native_key, {"images": decoded.images, "labels": decoded.labels})
    return decoded


def _decode_split(split: datasets.Dataset, image_column: str, label_column: str, size: int,
                  progress: bool, split_name: str) -> tuple[LabelledImages, bool]:
    """The decoded split, and whether its images had to be fitted to size x size; a UserError naming the split and
    row of an image that cannot be decoded."""
    raw = split.cast_column(image_column, datasets.Image(decode=False))
    arrays: list[np.ndarray] = []
    fitting = False
    for start in _progress(range(0, len(raw), DECODE_BATCH_ROWS), progress, "decode images"):
        for row, record in enumerate(raw[start:start + DECODE_BATCH_ROWS][image_column], start):
            try:
                image = _decode_image(record)
            except (OSError, SyntaxError, ValueError) as error:  # PIL's UnidentifiedImageError is an OSError
                raise UserError(f"split {split_name!r} row {row}: its {image_column!r} cannot be decoded as an image "
                                f"({type(error).__name__}); fix or drop that row") from error
            if fitting:
                arrays.append(_fit(image, size))
                continue
            array = np.asarray(image)
            if arrays and array.shape != arrays[0].shape:
                fitting = True
                arrays = [_fit(Image.fromarray(a), size) for a in arrays]
                array = _fit(image, size)
            arrays.append(array)
    if not arrays:
        raise UserError(f"a split of the dataset has no images in column {image_column!r}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(split[label_column], dtype=torch.int64)
    return LabelledImages(images, labels), fitting


def _progress(iterable, enabled: bool, description: str):
    if not enabled:
        return iterable
    return tqdm(iterable, desc=description)


def stratified_counts(labels: torch.Tensor, num_classes: int, total: int) -> torch.Tensor:
    """Per-class counts summing to total, proportional to each class's share (largest remainders)."""
    class_sizes = torch.bincount(labels, minlength=num_classes).double()
    exact = class_sizes * total / class_sizes.sum()
    counts = exact.floor().long()
    remainder_order = torch.argsort(exact - counts, descending=True, stable=True)
    counts[remainder_order[: total - int(counts.sum())]] += 1
    return torch.minimum(counts, class_sizes.long())


def stratified_pick(labels: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded pick of counts[c] indices of each class c; returns (picked, rest), each sorted."""
    picked = []
    for class_index, count in enumerate(counts.tolist()):
        members = torch.nonzero(labels == class_index).flatten()
        order = torch.randperm(len(members), generator=generator)
        picked.append(members[order[:count]])
    picked_indices = torch.cat(picked).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[picked_indices] = False
    return picked_indices, torch.nonzero(keep).flatten()


def few_shot_counts(labels: torch.Tensor, class_names: list[str], shots_per_class: int | None,
                    train_fraction: float | None) -> torch.Tensor | None:
    """Per-class training counts for a few-shot subset, or None to keep every image."""
    class_sizes = torch.bincount(labels, minlength=len(class_names))
    if shots_per_class is not None:
        smallest = int(class_sizes.min())
        if shots_per_class > smallest:
            name = class_names[int(class_sizes.argmin())]
            raise UserError(f"--shots-per-class {shots_per_class} is more than class {name!r} has for training "
                            f"({smallest} images after the validation hold-out); use at most {smallest}")
        return torch.full_like(class_sizes, shots_per_class)
    if train_fraction is not None:
        return torch.clamp((class_sizes.double() * train_fraction).round().long(), min=1)
    return None


def default_val_size(train_size: int) -> int:
    """10% of train, at most 5000, and at least one image (a folder of a few dozen images still validates)."""
    return max(1, min(5000, train_size // 10))


def split_data(train: LabelledImages, test: LabelledImages, class_names: list[str], *, val_size: int | None,
               shots_per_class: int | None, train_fraction: float | None, max_train_samples: int | None,
               max_eval_samples: int | None, seed: int, split_seed: int | None = None,
               val: LabelledImages | None = None) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """Train/val/test: a stratified validation hold-out (unless the dataset's own val is given), then few-shot and
    size caps, all seeded.

    split_seed, when given, alone decides the validation and test images; seed then only picks the training subset.
    """
    generator = torch.Generator().manual_seed(seed if split_seed is None else split_seed)
    # Without split_seed one generator draws everything, in the order runs have always drawn it.
    subset_generator = generator if split_seed is None else torch.Generator().manual_seed(seed)
    num_classes = len(class_names)
    if val is None:
        val_size = default_val_size(len(train)) if val_size is None else val_size
        if not 0 < val_size < len(train):
            raise UserError(f"--val-size {val_size} must be between 1 and {len(train) - 1} "
                            f"(the train split has {len(train)} images)")
        val_indices, train_indices = stratified_pick(train.labels, stratified_counts(train.labels, num_classes, val_size),
                                                     generator)
        val, train = train.subset(val_indices), train.subset(train_indices)

    counts = few_shot_counts(train.labels, class_names, shots_per_class, train_fraction)
    if counts is not None:
        train = train.subset(stratified_pick(train.labels, counts, subset_generator)[0])
    if max_train_samples is not None and max_train_samples < len(train):
        counts = stratified_counts(train.labels, num_classes, max_train_samples)
        train = train.subset(stratified_pick(train.labels, counts, subset_generator)[0])
    if max_eval_samples is not None:
        val = _first(val, max_eval_samples, num_classes, generator)
        test = _first(test, max_eval_samples, num_classes, generator)
    return train, val, test


def _first(split: LabelledImages, limit: int, num_classes: int, generator: torch.Generator) -> LabelledImages:
    if limit >= len(split):
        return split
    return split.subset(stratified_pick(split.labels, stratified_counts(split.labels, num_classes, limit), generator)[0])


def open_dataset(dataset: str, image_column: str | None = None, label_column: str | None = None,
                 train_split: str = "train", test_split: str = DEFAULT_TEST_SPLIT
                 ) -> tuple[datasets.DatasetDict, str, str, list[str]]:
    """open_splits' train and test as a DatasetDict under those names, the image and label columns, the class names."""
    opened = open_splits(dataset, image_column, label_column, train_split, test_split=test_split)
    splits = datasets.DatasetDict({train_split: opened.train, test_split: opened.test})
    return splits, opened.image_column, opened.label_column, opened.class_names


def open_splits(dataset: str, image_column: str | None = None, label_column: str | None = None,
                train_split: str = "train", validation_split: str | None = None,
                test_split: str = DEFAULT_TEST_SPLIT, carve_seed: int = 42) -> OpenedSplits:
    """Open a dataset's train, validation and test splits: its own where it has them (validation by --validation-split
    or one of VALIDATION_SPLIT_NAMES); a dataset without a test split (an imagefolder of class folders) gets
    CARVED_TEST_FRACTION of train, stratified by label and seeded, carved out by `datasets` itself."""
    dataset_dict = load_dataset_dict(dataset)
    splits = list(dataset_dict)
    carve_test = test_split == DEFAULT_TEST_SPLIT and test_split not in dataset_dict
    named = [("--train-split", train_split)] + ([] if carve_test else [("--test-split", test_split)])
    if validation_split is not None:
        named.append(("--validation-split", validation_split))
    for option, split_name in named:
        if split_name not in dataset_dict:
            raise UserError(f"{option} {split_name!r} is not a split of --dataset {dataset!r}; it has {splits}")
    if validation_split is None:
        validation_split = next((name for name in VALIDATION_SPLIT_NAMES
                                 if name in dataset_dict and name not in (train_split, test_split)), None)
    used = [train_split] + ([] if validation_split is None else [validation_split]) + ([] if carve_test else [test_split])
    if len(set(used)) < len(used):
        raise UserError(f"the train, validation and test splits must differ; they are {used}")
    image_column, label_column = find_columns(dataset_dict[train_split].features, image_column, label_column)
    for split_name in used:
        missing = {image_column, label_column} - set(dataset_dict[split_name].column_names)
        if missing:
            raise UserError(f"split {split_name!r} of --dataset {dataset!r} lacks the column(s) {sorted(missing)}")
    train = dataset_dict[train_split]
    class_names = class_names_of(train, label_column)
    if carve_test:
        train, test = _carve(train, label_column, class_names, CARVED_TEST_FRACTION, carve_seed, train_split)
    else:
        test = dataset_dict[test_split]
    sources = SplitSources(train_split, validation_split, None if carve_test else test_split, carve_seed)
    return OpenedSplits(train, None if validation_split is None else dataset_dict[validation_split], test,
                        image_column, label_column, class_names, sources)


def _carve(split: datasets.Dataset, label_column: str, class_names: list[str], fraction: float, seed: int,
           split_name: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(the rest, the carved share) of a split, stratified by label: `datasets`' own train_test_split."""
    counts = np.bincount(np.asarray(split[label_column], dtype=np.int64), minlength=len(class_names))
    if len(split) * fraction < len(class_names) or counts.min() < 2:
        smallest = class_names[int(counts.argmin())]
        raise UserError(f"the dataset has no {DEFAULT_TEST_SPLIT!r} split, and {split_name!r} is too small to carve "
                        f"a stratified {fraction:.0%} test split out of it ({len(split)} images for {len(class_names)} "
                        f"classes; {smallest!r} has {int(counts.min())}); give each class at least "
                        f"{1 / fraction:.0f} images (a test folder beside train works too), or name one with --test-split")
    if not isinstance(split.features[label_column], datasets.ClassLabel):  # labels 0..K-1 (class_names_of checked)
        split = split.cast_column(label_column, datasets.ClassLabel(names=class_names))
    parts = split.train_test_split(test_size=fraction, stratify_by_column=label_column, seed=seed)
    return parts["train"], parts["test"]


def decode_splits(opened: OpenedSplits, image_size: int, cache_folder: Path | None = None,
                  progress: bool = False) -> DecodedData:
    """Decode the opened splits once (or read them from cache_folder), their labels checked."""
    named = [(opened.sources.train, opened.train), (opened.sources.validation, opened.validation),
             (opened.sources.test or f"{opened.sources.train} (carved test)", opened.test)]
    decoded = [None if split is None else decode_images(split, opened.image_column, opened.label_column, image_size,
                                                        progress, cache_folder, name) for name, split in named]
    for (split_name, _), split in zip(named, decoded):
        if split is not None:
            check_labels(split, split_name, opened.class_names)
    return DecodedData(*decoded, opened.class_names, opened.image_column, opened.label_column)


def check_labels(split: LabelledImages, split_name: str, class_names: list[str]) -> None:
    """A UserError naming the labels outside 0..K-1 and their rows."""
    outside = (split.labels < 0) | (split.labels >= len(class_names))
    if outside.any():
        values = sorted(set(split.labels[outside].tolist()))
        rows = torch.nonzero(outside).flatten()[:5].tolist()
        raise UserError(f"split {split_name!r} has labels {values[:10]} outside 0..{len(class_names) - 1} (rows "
                        f"{rows}{', ...' if int(outside.sum()) > 5 else ''}; unlabelled rows?); pick labelled "
                        "splits with --train-split / --validation-split / --test-split")
