"""``python -m catvton``: see ``catvton.cli``."""

import sys

from catvton.cli import main

sys.exit(main())
