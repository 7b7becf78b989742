"""`python -m geossl` (and so `torchrun -m geossl train ...`)."""

import sys

from geossl.cli import main

sys.exit(main())
