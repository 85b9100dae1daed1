"""``python -m deepmetric.cli`` (and ``torchrun -m deepmetric.cli``) runs the command line."""

import sys

from deepmetric.cli import main

sys.exit(main())
