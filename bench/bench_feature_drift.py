"""How far fine-tuning moved the pretrained features: per study run, the cosine similarity between its backbone's
pooled features and the pretrained backbone's, on the same test images, against the linear probe (similarity 1).

    python bench/bench_feature_drift.py [--study studies/cifar10-all] [--images 500]

Each cell is the mean over the run's seeds of the mean per-image cosine similarity (1: the features did not move),
with the test accuracy beside it. The images are the first --images of ../shared CIFAR-10's test split, at each
run's own input size; the pretrained backbone is ../shared's lite0 weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tl_space.data import decode_images, open_dataset  # noqa: E402
from tl_space.folder.read import load_model  # noqa: E402
from tl_space.model import create_model, pooled_features  # noqa: E402
from tl_space.transforms import preprocessing_for, to_model_input  # noqa: E402

SHARED = ROOT.parent / "shared"
STRATEGIES = ("linear-probe", "partial", "finetune", "lp-ft")


@torch.inference_mode()
def features(model: torch.nn.Module, images: torch.Tensor, preprocessing) -> torch.Tensor:
    return torch.cat([pooled_features(model, to_model_input(batch, preprocessing)) for batch in images.split(50)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "cifar10-all"))
    parser.add_argument("--dataset", default=str(SHARED / "data" / "cifar10"))
    parser.add_argument("--pretrained-file", default=str(SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"))
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(2)

    dataset_dict, image_column, label_column, _ = open_dataset(args.dataset)
    test = dataset_dict["test"].select(range(args.images))
    images = decode_images(test, image_column, label_column, 32).images
    rows = json.loads((Path(args.study) / "study.json").read_text())["rows"]
    pretrained = {}
    cells: dict[tuple[str, object], list[tuple[float, float]]] = {}
    for row in rows:
        if row["strategy"] not in STRATEGIES:
            continue
        model = load_model(Path(args.study) / row["run"], row["run"])
        preprocessing = preprocessing_for(timm.data.resolve_model_data_config(model))
        if preprocessing.image_size not in pretrained:
            backbone = create_model("tf_efficientnet_lite0", model.num_classes, pretrained=True,
                                    pretrained_file=args.pretrained_file).eval()
            pretrained[preprocessing.image_size] = features(backbone, images, preprocessing)
        similarity = torch.cosine_similarity(features(model.eval(), images, preprocessing),
                                             pretrained[preprocessing.image_size], dim=1).mean().item()
        cells.setdefault((row["strategy"], row["shots"]), []).append((similarity, row["test_accuracy"]))
        print(f"{row['run']}: {similarity:.3f}", file=sys.stderr)

    shots = list(dict.fromkeys(row["shots"] for row in rows))
    print(f"Feature similarity to the pretrained backbone (test accuracy), {args.images} test images\n")
    print("| strategy | " + " | ".join(f"{s} per class" for s in shots) + " |")
    print("|---|" + "---|" * len(shots))
    for strategy in STRATEGIES:
        line = []
        for shot in shots:
            found = cells.get((strategy, shot))
            line.append(f"{statistics.fmean(s for s, _ in found):.3f} ({statistics.fmean(a for _, a in found):.1%})"
                        if found else "–")
        print(f"| {strategy} | " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
