"""``python -m xlalign``: see xlalign.cli."""

import sys

from xlalign.cli import main

sys.exit(main())
