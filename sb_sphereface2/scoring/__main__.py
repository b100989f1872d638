"""``python -m sb_sphereface2.scoring``: see :mod:`sb_sphereface2.scoring.cli`."""

import sys

from sb_sphereface2.scoring.cli import run

sys.exit(run())
