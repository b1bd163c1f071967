"""`python -m engine` is the `avatarbench` command."""

import sys

from engine.cli import main

sys.exit(main())
