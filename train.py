"""Fine-tune a timm model on an image dataset and write a model folder: `accelerate launch train.py --help`."""

import sys

from tl_space.errors import exit_code
from tl_space.settings import parse_settings
from tl_space.training.run import run

if __name__ == "__main__":
    sys.exit(exit_code(lambda: run(parse_settings())))
