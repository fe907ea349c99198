"""Teaching and classifying many on this machine, through the app, against a plain loop over the same images.

    python bench/bench_teach.py [--model model] [--dataset ../shared/data/cifar10] [--classes 10] [--per-class 10]

Teach: --classes CIFAR-10 classes x --per-class test images sent to /teach as files named CLASS_NN.png, first upload
to summary; the baseline is a plain loop in this process that computes the same backbone's features one image at a
time and fits the same head (no cross-validation, no model folder). Classify many: 100 other test images sent to
/classify_many in one call, against a loop calling the served model's class_probabilities one image at a time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tl_space import data  # noqa: E402
from tl_space.app import teach  # noqa: E402
from tests.support.local_app import running_app  # noqa: E402
from tl_space.app.served import load_served_model  # noqa: E402
from tl_space.images import open_image  # noqa: E402


def write_images(folder: Path, dataset: str, classes: int, per_class: int, offset: int) -> list[Path]:
    dataset_dict, image_column, label_column, names = data.open_dataset(dataset)
    test = data.decode_images(dataset_dict["test"], image_column, label_column, size=32)
    paths = []
    for class_index in range(classes):
        members = torch.nonzero(test.labels == class_index).flatten()[offset:offset + per_class]
        for number, index in enumerate(members.tolist()):
            paths.append(folder / f"{names[class_index]}_{number:02d}.png")
            Image.fromarray(test.images[index].permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model"))
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-teach-"))
    (workdir / "teach").mkdir()
    (workdir / "many").mkdir()
    teach_files = write_images(workdir / "teach", args.dataset, args.classes, args.per_class, offset=0)
    many_files = write_images(workdir / "many", args.dataset, 10, 10, offset=args.per_class)

    loaded = load_served_model(args.model)
    started = time.perf_counter()  # baseline: a plain loop, one image at a time, no cross-validation
    features = torch.cat([loaded.features([open_image(path)]) for path in teach_files]).clone()
    labels = torch.tensor([index for index in range(args.classes) for _ in range(args.per_class)])
    teach.fit_head(features, labels, args.classes)
    loop_teach = time.perf_counter() - started
    started = time.perf_counter()
    for path in many_files:
        loaded.class_probabilities(open_image(path))
    loop_many = time.perf_counter() - started

    from gradio_client import Client, handle_file

    with running_app(args.model, workdir) as (url, _):
        client = Client(url, verbose=False)
        client.predict([handle_file(str(many_files[0]))], api_name="/classify_many")  # warm-up
        started = time.perf_counter()
        summary, _ = client.predict([handle_file(str(path)) for path in teach_files], api_name="/teach")
        app_teach = time.perf_counter() - started
        started = time.perf_counter()
        rows, _ = client.predict([handle_file(str(path)) for path in many_files], api_name="/classify_many")
        app_many = time.perf_counter() - started
    print(f"model: {args.model}; teach: {args.classes} classes x {args.per_class} CIFAR-10 test images\n")
    print("| job | images | plain loop s | app, first upload to answer s | app / loop |")
    print("|---|---|---|---|---|")
    print(f"| teach (app: with {summary['folds']}-fold cross-validation and the model folder) | {len(teach_files)} | "
          f"{loop_teach:.1f} | {app_teach:.1f} | {app_teach / loop_teach:.2f}x |")
    print(f"| classify many | {len(many_files)} | {loop_many:.1f} | {app_many:.1f} | {app_many / loop_many:.2f}x |")
    print(f"\ncross-validated accuracy {summary['cross_validated_accuracy']:.1%}, class means {summary['class_mean_accuracy']:.1%}, "
          f"chance {summary['chance']:.1%}; rows returned: {len(rows['data'])}")


if __name__ == "__main__":
    main()
