"""The command line: one option per settings field, with its default."""

import os
import subprocess
import sys
from pathlib import Path

from tl_space.settings import TrainSettings, parse_settings

ROOT = Path(__file__).resolve().parent.parent


def test_help_lists_every_option_with_its_default():
    parser_help = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                                 check=True, env={**os.environ, "COLUMNS": "300"}).stdout
    for option in ("--dataset", "--model", "--pretrained-file", "--strategy", "--unfreeze-stages", "--epochs",
                   "--batch-size", "--lr", "--weight-decay", "--image-size", "--seed", "--train-fraction",
                   "--shots-per-class", "--val-size", "--max-train-samples", "--max-eval-samples", "--output-dir",
                   "--image-column", "--label-column", "--report-to", "--max-misclassified"):
        assert option in parser_help
    assert "(default: uoft-cs/cifar10)" in parser_help and "(default: finetune)" in parser_help
    assert parse_settings([]) == TrainSettings()
