"""Packs what the GPU benchmarks need into one git-ignored folder that the `device` tool can carry.

    python bench/pack_for_device.py [--folder .device] [--limit-mib 64]

A device call carries the working tree and its carried folders, 64 MiB in all, and the GPU machine reaches no
network. This writes, under FOLDER (which git must ignore, as .gitignore does .device/):
- weights/: the lite0 ImageNet weights from ../shared;
- wheels/: Python 3.12 wheels of the packages train.py needs that the device image lacks (datasets, with its dill
  and multiprocess) or may hold in a version datasets or tl-space does not take (fsspec, timm), as installed here.
  The image's own huggingface_hub, pyarrow and the rest are used: a newer huggingface_hub needs packages it lacks;
- cifar10/plain_text/: all 10,000 test images and as many of the 50,000 training images as fit in what is left,
  in ../shared's parquet layout (its rows are shuffled, so the first N are a random sample).
Then it prints the device commands of bench 4 (README, "Results on this machine").
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import datasets

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
DEVICE_WHEELS = ("datasets", "dill", "multiprocess", "fsspec", "timm")
# The device machine's Python, and the manylinux tags pip must be told to match there.
DEVICE_PYTHON = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
MIB = 2 ** 20


def working_tree_bytes() -> int:
    """Bytes of what a device call sends besides carried folders: tracked files and untracked, unignored ones."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in listed if name and (ROOT / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def download_wheels(folder: Path) -> None:
    """Wheels of DEVICE_WHEELS at the versions installed here, for the device's Python, without dependencies."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in DEVICE_WHEELS]
    platforms = [argument for platform in PLATFORMS for argument in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(folder), *pins],
                   check=True)


def write_cifar10(folder: Path, budget: int) -> int:
    """All test images and the training images that fit in budget bytes; returns how many training images."""
    source = datasets.load_dataset(str(SHARED / "data" / "cifar10"))
    target = folder / "cifar10" / "plain_text"
    target.mkdir(parents=True, exist_ok=True)
    test_file = target / "test-00000-of-00001.parquet"
    source["test"].to_parquet(str(test_file))
    train_budget = budget - test_file.stat().st_size
    train_file = target / "train-00000-of-00001.parquet"
    bytes_per_image = (SHARED / "data" / "cifar10" / "plain_text" / train_file.name).stat().st_size / len(source["train"])
    count = min(len(source["train"]), int(train_budget / bytes_per_image))
    while count > 0:
        source["train"].select(range(count)).to_parquet(str(train_file))
        if train_file.stat().st_size <= train_budget:
            return count
        count = int(count * 0.97)  # parquet pages differ from the average row: shrink until it fits
    raise SystemExit(f"no room for training images: {budget / MIB:.1f} MiB left for data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=".device", help="folder inside the checkout, carried by the device tool")
    parser.add_argument("--limit-mib", type=float, default=64, help="what one device call may carry in all")
    args = parser.parse_args()
    folder = ROOT / args.folder
    # The device tool carries only ignored paths by name; anything else would travel twice, or be committed.
    if subprocess.run(["git", "check-ignore", "-q", f"{args.folder}/"], cwd=ROOT).returncode != 0:
        raise SystemExit(f"git does not ignore {args.folder}/: add it to .gitignore or .git/info/exclude first")
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "weights").mkdir(parents=True)
    shutil.copy2(WEIGHTS, folder / "weights" / WEIGHTS.name)
    download_wheels(folder / "wheels")
    # A little under the limit: the call also sends git's own metadata of the tree.
    budget = int(args.limit_mib * MIB * 0.97) - working_tree_bytes() - folder_bytes(folder)
    train_images = write_cifar10(folder, budget)
    total = working_tree_bytes() + folder_bytes(folder)
    print(f"{folder}: {folder_bytes(folder) / MIB:.1f} MiB ({train_images} training images, 10000 test images, "
          f"weights, {len(list((folder / 'wheels').glob('*.whl')))} wheels); with the working tree "
          f"{total / MIB:.1f} of {args.limit_mib:g} MiB")
    # The versions there come first in the output: datasets needs pyarrow >= 24, which the image may predate.
    setup = ("python3 -c 'import pyarrow, torch, accelerate, huggingface_hub as h; print(pyarrow.__version__, "
             "torch.__version__, accelerate.__version__, h.__version__)'; "
             f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
             f"{args.folder}/wheels/*.whl && export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 || exit; ")
    data = f"--dataset {args.folder}/cifar10 --pretrained-file {args.folder}/weights/{WEIGHTS.name}"
    print(f"\ndevice run, carry [\"{args.folder}\"]: the step bench (a few minutes)\n  {setup}python3 "
          f"bench/bench_finetune_step.py {data} --sizes 224 --batch-size 128 --images 8192 2>&1 | tee $OUT/step.txt")
    # One call may run 10 minutes and a machine goes back 30 s after a call, so the run fits in one call.
    print(f"\ndevice run, carry [\"{args.folder}\"]: lp-ft with 7 minutes of training (the whole command under the "
          f"10-minute target)\n  {setup}python3 bench/bench_lp_ft.py {data} --image-size 224 --batch-size 128 "
          "--epochs 30 --minutes 7 --target 0.965 --workdir /tmp/lp-ft 2>&1 | tee $OUT/lp-ft.txt; "
          "cp /tmp/lp-ft/lp-ft-224/metrics.json $OUT/")


if __name__ == "__main__":
    main()
