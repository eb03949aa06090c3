"""`python -m vilamp_cli` runs the `vilamp` command line."""

from .main import main

raise SystemExit(main())
