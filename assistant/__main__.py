"""`python -m assistant` runs the fashion-assistant command line."""

from assistant.cli import main

raise SystemExit(main())
