"""Fine-tune a timm model on an image dataset and write a model folder: `accelerate launch train.py --help`."""

import sys

from tl_space.errors import UserError
from tl_space.settings import parse_settings
from tl_space.training import run

if __name__ == "__main__":
    try:
        run(parse_settings())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
