"""`accelerate launch -m tl_space.study --help` (or `python -m tl_space.study`): run a study."""

import sys

from tl_space.study.run import main

sys.exit(main())
