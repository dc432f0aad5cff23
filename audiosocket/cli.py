"""The old console-script target, kept so an install made before the composition root moved
to :mod:`audiosocket.root` still starts (its ``bin/audiosocket`` imports
``audiosocket.cli:main``). Re-running ``pip install -e .`` points the script at
``audiosocket.root.cli:main``; then this file can go. Nothing imports it."""

from __future__ import annotations

import sys

from audiosocket.root.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
