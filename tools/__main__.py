"""`python -m ringfs.tools` is the `ringfs` command (used to start background processes)."""

from __future__ import annotations

import sys

from ringfs.tools._cli import main

sys.exit(main())
