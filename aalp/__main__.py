"""``python -m aalp``: see :mod:`aalp.cli`."""

import sys

from .cli import main

sys.exit(main())
