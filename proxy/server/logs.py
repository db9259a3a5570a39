"""Logging for a server under attack or overload: repeated identical lines are bounded.

When the process runs out of file descriptors, asyncio logs one error per
refused ``accept()``; a flood of bad requests would do the same. A line that
repeats (same logger, level and message template) is let through once per
``interval`` seconds; the next one that passes says how many were held back.
Only warnings and errors are limited: the access log (info) is one line per
request by design, formatted and written off the event loop (:func:`access_log_off_loop`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterator
from logging.handlers import QueueHandler, QueueListener


class RepeatFilter(logging.Filter):
    """Lets each distinct warning/error through at most once per ``interval`` seconds."""

    def __init__(self, interval: float = 10.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1000) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.interval:
            suppressed = int(entry[1]) if entry is not None else 0
            if len(self._seen) >= self.max_keys:
                self._seen.clear()  # bounded memory whatever the attacker varies
            self._seen[key] = [now, 0]
            if suppressed:
                record.msg = f"{record.msg} ({suppressed} more like this in the last {self.interval:g}s)"
            return True
        entry[1] += 1
        return False


def configure_logging(level: str) -> None:
    """The process's log level, with :class:`RepeatFilter` on every root handler."""
    numeric = getattr(logging, level.upper())
    root = logging.getLogger()
    root.setLevel(numeric)
    logging.getLogger("floodgate").setLevel(numeric)
    if not root.handlers:
        logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter())


class _AsIs(QueueHandler):
    """Queues the record unformatted: the listener's thread formats and writes it (the access
    log's arguments are plain strings and numbers, safe to format later)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


@contextlib.contextmanager
def access_log_off_loop() -> Iterator[None]:
    """While serving, the access log's lines are formatted and written by a thread of their own
    (``QueueHandler`` → ``QueueListener`` with the root handlers), not by the event loop; on
    exit the lines still queued are written."""
    access = logging.getLogger("floodgate.access")
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = QueueListener(lines, *logging.getLogger().handlers, respect_handler_level=True)
    handler = _AsIs(lines)
    access.addHandler(handler)
    access.propagate = False
    listener.start()
    try:
        yield
    finally:
        access.removeHandler(handler)
        access.propagate = True
        listener.stop()
