"""`python -m vilamp.cli` runs the `vilamp` command line."""

from .main import main

raise SystemExit(main())
