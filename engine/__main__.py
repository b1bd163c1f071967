"""`python -m engine`: the engine's commands (the `avatarbench` console script adds `serve`, from app.py)."""

import sys

from engine.cli import main

sys.exit(main())
