"""Run :func:`pixelmirror.testing.cli.main`: ``python -m pixelmirror.testing --help``."""

from __future__ import annotations

import sys

from pixelmirror.testing.cli import main

sys.exit(main())
