"""Configuration reloads: validate fully, then swap — or keep serving the old config.

A reload validates exactly what ``floodgate check`` validates (:func:`validate`:
the file, every section, every plugin's block). On any error the running
configuration keeps serving and every error is logged with its line. On success
the application's next generation is built and started beside the current one
and takes new requests at once (:meth:`proxy.generation.Generations.reload`).

Some settings belong to the process, not to a generation (the listening address,
the worker count, the shared-state connection, client timeouts): a reload that
changes them logs a warning per key and they take effect at the next restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Config, load_config, parse_config
from ..errors import ConfigError, ConfigErrors
from ..generation import describe
from ..keys import GENERATIONS
from ..state import SharedState
from .logs import configure_logging

log = logging.getLogger("floodgate.reload")

#: Settings read once when the process starts.
RESTART_ONLY: tuple[tuple[str, ...], ...] = (
    ("server", "host"), ("server", "port"), ("server", "workers"), ("server", "pid_file"), ("server", "event_loop"),
    ("server", "shutdown_timeout"), ("server", "timeouts"),
    ("state", "backend"), ("state", "url"), ("state", "key_prefix"), ("state", "hosts"), ("state", "pool_size"),
    ("state", "timeouts"), ("state", "check_interval"),
)


def validate(config: Config, workers: int) -> None:
    """Everything ``floodgate check`` checks (plugins included), for ``workers`` processes.

    Builds the application without starting it. Raises :class:`ConfigErrors`.
    """
    from ..app import create_app

    create_app(config, state=SharedState(config.settings.state, workers=workers))


def restart_only_changes(running: Config, new: Config) -> list[ConfigError]:
    """The settings ``new`` changes that a reload cannot apply, located in ``new``'s file."""
    changed = []
    for path in RESTART_ONLY:
        if _get(running.settings, path) != _get(new.settings, path):
            changed.append(new.error(path, "changed: takes effect when the gateway restarts "
                                           "(a reload keeps the running value)"))
    return changed


def _get(settings: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        settings = getattr(settings, part)
    return settings


def log_refused(errors: list[ConfigError], still: str) -> None:
    for error in errors:
        log.error(f"reload refused: {error}")  # formatted: the repeat filter must not hold any back
    count = len(errors)
    log.error("reload refused (%d error%s): still serving %s", count, "s" if count != 1 else "", still)


class Reloader:
    """Reloads the configuration of one running application.

    :param app: the application ``create_app`` returned.
    :param started: the configuration the process started with (what restart-only
        settings are compared with); ``None`` when a supervisor compared already.
    """

    def __init__(self, app: web.Application, started: Config | None) -> None:
        self.generations = app[GENERATIONS]
        self.started = started

    async def reload_file(self, path: str | Path) -> bool:
        """Read ``path`` again and switch to it; ``False`` (and logged errors) if it is not valid."""
        return await self._reload(lambda: load_config(path))

    async def reload_text(self, text: str, source: str) -> bool:
        """Switch to the config in ``text`` (already validated by the supervisor)."""
        return await self._reload(lambda: parse_config(text, source=source))

    async def _reload(self, load: Any) -> bool:
        current = self.generations.current
        try:
            config = load()
            generation = await self.generations.reload(config)
        except ConfigErrors as exc:
            log_refused(exc.errors, describe(current))
            return False
        except Exception:
            log.exception("reload failed while starting the new configuration; still serving %s",
                          describe(current))
            return False
        for change in restart_only_changes(self.started, config) if self.started is not None else ():
            log.warning(str(change))
        if config.server.log_level != current.config.server.log_level:
            configure_logging(config.server.log_level)
        log.info("configuration reloaded: now serving %s", describe(generation))
        return True


class Coalesced:
    """Runs ``action`` on each :meth:`trigger` — one at a time: triggers while it runs make it
    run once more afterwards (two quick SIGHUPs after two edits apply the last edit)."""

    def __init__(self, action: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._action = action
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def trigger(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            await self._action()
            if not self._again:
                return

    async def wait(self) -> None:
        """Until the running action (and any it owes) is done."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
