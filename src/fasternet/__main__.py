"""``python -m fasternet``: the same as the ``fasternet`` command (and what torchrun runs)."""

import sys

from fasternet.cli import main

sys.exit(main())
