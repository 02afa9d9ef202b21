"""Allow ``python -m watchd``."""

from watchd.cli import main

raise SystemExit(main())
