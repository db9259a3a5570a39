"""``floodgate status``: a running gateway's live status on one screen (a tool: the core never
imports it; registered through the ``floodgate`` entry-point group as ``status``).

* :mod:`.view` — one frame: the ``/-/status`` document as tables;
* :mod:`.cli` — the command: fetch, draw, refresh until Ctrl-C (``--once``, ``--json``).
"""

from .cli import StatusCommands, fetch, run
from .view import render

__all__ = ["StatusCommands", "fetch", "render", "run"]
