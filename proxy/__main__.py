"""``python -m proxy`` is the ``floodgate`` command."""

from .cli import main

raise SystemExit(main())
