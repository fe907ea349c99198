"""Classify image files with a model folder or Hub id, batched, into a CSV: the app's Classify many, on the command line.

    python -m tl_space.predict MODEL_ID PATH [PATH ...] --output predictions.csv [--top-k 5] [--batch-size 32]

MODEL_ID is a Hub id, a model folder (train.py's --output-dir) or a taught model's unpacked zip; each PATH an image
or a folder searched recursively. Files that do not decode are named on stderr and skipped.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image
from tqdm.auto import tqdm

from tl_space.errors import UserError, exit_code
from tl_space.images import ImageError, open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BATCH_SIZE = 32

ProbabilitiesOf = Callable[[list[Image.Image]], torch.Tensor]  # decoded images -> (N, classes) probabilities


@dataclass(frozen=True)
class FilePrediction:
    """One file's most probable classes, most probable first, with their calibrated probabilities."""

    name: str
    ranked: list[tuple[str, float]]

    @property
    def confidence(self) -> float:
        return self.ranked[0][1]


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Each path that is a file, and the image files under each folder (recursively, sorted); a UserError for a
    path that does not exist."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(found for found in path.rglob("*")
                            if found.is_file() and found.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{str(path)!r} is neither an image file nor a folder")
    return files


def classify_files(named_files: Iterable[tuple[str, str | Path]], probabilities_of: ProbabilitiesOf,
                   class_names: list[str], side: int, top_k: int = 5, batch_size: int = BATCH_SIZE,
                   progress: bool = False, total: int | None = None) -> tuple[list[FilePrediction], list[str]]:
    """(predictions, a line naming each file that does not decode). Files are decoded one by one (each reduced to
    its centre square while decoding) and classified batch_size at a time, so at most one batch is held decoded."""
    predictions, skipped, batch = [], [], []

    def classify_batch() -> None:
        probabilities = probabilities_of([image for _, image in batch])
        top = probabilities.topk(min(top_k, len(class_names)), dim=1)
        for (name, _), values, indices in zip(batch, top.values.tolist(), top.indices.tolist()):
            predictions.append(FilePrediction(name, [(class_names[i], value) for i, value in zip(indices, values)]))
        batch.clear()

    for name, path in tqdm(named_files, desc="classify", unit="image", total=total, disable=not progress):
        try:
            batch.append((name, open_image(path, side=side)))
        except ImageError as error:
            skipped.append(f"{name}: {error}")
            continue
        if len(batch) == batch_size:
            classify_batch()
    if batch:
        classify_batch()
    return predictions, skipped


def write_csv(path: Path, predictions: list[FilePrediction], top_k: int) -> None:
    """file, then top1, top1_probability, ... topk, topk_probability: one row per file, in the order classified."""
    header = ["file"] + [column for rank in range(1, top_k + 1) for column in (f"top{rank}", f"top{rank}_probability")]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for prediction in predictions:
            writer.writerow([prediction.name] + [value for label, probability in prediction.ranked
                                                 for value in (label, f"{probability:.6f}")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tl_space.predict", description=__doc__.splitlines()[0])
    parser.add_argument("model_id", help="a Hub model id, a model folder, or a taught model's unpacked zip")
    parser.add_argument("paths", nargs="+", help="image files and folders (searched recursively)")
    parser.add_argument("--output", type=Path, default=Path("predictions.csv"), help="the CSV written")
    parser.add_argument("--top-k", type=int, default=5, help="classes per file, most probable first")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, mps, ...")
    args = parser.parse_args(argv)

    def predict_command() -> None:
        from tl_space.app.served import load_served_model  # the app's own path from images to probabilities

        if args.top_k < 1 or args.batch_size < 1:
            raise UserError("--top-k and --batch-size must be at least 1")
        files = image_files(args.paths)
        if not files:
            raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {args.paths}")
        loaded = load_served_model(args.model_id)
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
        loaded.model.to(device)
        top_k = min(args.top_k, len(loaded.label_names))
        predictions, skipped = classify_files(
            ((str(path), path) for path in files), loaded.probabilities,
            loaded.label_names, side=loaded.preprocessing.image_size, top_k=top_k, batch_size=args.batch_size,
            progress=True, total=len(files))
        for line in skipped:
            print(f"skipped {line}", file=sys.stderr)
        write_csv(args.output, predictions, top_k)
        print(f"wrote {len(predictions)} predictions of {loaded.name} to {args.output}"
              + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else ""))
    return exit_code(predict_command)


if __name__ == "__main__":
    sys.exit(main())
