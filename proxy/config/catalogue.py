""":class:`Config`: the validated configuration of one application, and the model catalogue.

Plugins read their own block with :meth:`Config.plugin_settings` (or any other
block with :meth:`Config.section`); both report errors located like the core's.
Targets and timeouts of catalogue models are resolved once, at start-up.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from ..errors import ConfigError, ConfigErrors, Rejection, shorten
from ..types import Target
from .schema import AttemptTimeouts, CoreSettings, Price, TimeoutOverrides
from .source import LocatedYaml, Path
from .validation import validate

T = TypeVar("T", bound=BaseModel)


class Config:
    """The validated configuration of one application."""

    def __init__(self, settings: CoreSettings, located: LocatedYaml) -> None:
        self.settings = settings
        self.server = settings.server
        self.upstreams = settings.upstreams
        self.models = settings.models
        self.aliases = settings.aliases
        self.source = located.source
        self._located = located
        self._plugin_blocks: dict[str, Any] = dict(settings.plugins.model_extra or {})
        self._sealed = False
        self._claimed: set[str] = set()
        self._targets = {name: self._build_target(name) for name in self.models}
        self._timeouts = {(m.upstream, name): self._build_timeouts(m.upstream, name)
                          for name, m in self.models.items() if m.upstream in self.upstreams}
        #: Route names plugins declared (``proxy_route_names``); filled in by ``create_app``.
        self.route_names: frozenset[str] = frozenset()

    # -- plugins ------------------------------------------------------------
    @property
    def plugin_modules(self) -> list[str]:
        return list(self.settings.plugins.modules)

    @property
    def disabled_plugins(self) -> list[str]:
        return list(self.settings.plugins.disabled)

    def plugin_settings(self, name: str, model: type[T]) -> T:
        """Validate the ``plugins.<name>`` block (absent = all defaults) with ``model``.

        Raises :class:`ConfigErrors` whose paths start with ``plugins.<name>``.
        """
        if self._sealed:
            raise RuntimeError("plugin settings are read once, at start-up (the config is sealed)")
        self._claimed.add(name)
        raw = self._plugin_blocks.get(name)
        return validate(model, {} if raw is None else raw, self._located, ("plugins", name))

    def seal(self) -> None:
        """Drop the raw blocks once every plugin has validated its own: client keys read
        from the file are then held only as the digests the auth plugin made of them."""
        self._plugin_blocks.clear()
        extra = self.settings.plugins.model_extra
        if extra:
            extra.clear()
        self._located.data = None
        self._sealed = True

    def unclaimed_plugin_blocks(self) -> list[str]:
        return [name for name in self._plugin_blocks if name not in self._claimed]

    def section(self, path: Path, model: type[T]) -> T:
        """Validate the block at ``path`` (absent = all defaults) with ``model``.

        For settings a plugin owns outside ``plugins.<name>`` (e.g. the options of a
        ``builtin:`` upstream). Raises :class:`ConfigErrors` located like every other.
        """
        raw: Any = self._located.data
        for part in path:
            raw = raw.get(part) if isinstance(raw, dict) else None
        return validate(model, {} if raw is None else raw, self._located, path)

    def line_of(self, path: Path) -> int | None:
        return self._located.line_of(path)

    def error(self, path: Path, message: str) -> ConfigError:
        """A :class:`ConfigError` for ``path`` (a tuple of keys) with its line."""
        return ConfigError(".".join(map(str, path)), message,
                           line=self._located.line_of(path), source=self.source)

    def locate(self, error: ConfigError) -> ConfigError:
        """Fill in the source and line of an error raised without them."""
        if error.line is None and error.path:
            path = tuple(int(p) if p.isdigit() else p for p in error.path.split("."))
            error.line = self._located.line_of(path)
        error.source = error.source or self.source
        return error

    # -- catalogue ----------------------------------------------------------
    def resolve(self, model: str) -> str | None:
        """The catalogue model a client-facing name means, or ``None``."""
        if model in self.models:
            return model
        alias = self.aliases.get(model)
        return alias if alias in self.models else None

    def _build_target(self, name: str) -> Target:
        entry = self.models[name]
        return Target(model=name, upstream=entry.upstream, upstream_model=entry.upstream_model or name)

    def target(self, model: str) -> Target:
        """The :class:`Target` of a catalogue model (built once at start-up)."""
        return self._targets[model]

    def targets_with_fallbacks(self, model: str) -> tuple[Target, ...]:
        names = [model, *(m for m in self.models[model].fallbacks if m != model)]
        return tuple(self._targets[n] for n in names)

    def _build_timeouts(self, upstream: str, model: str | None) -> AttemptTimeouts:
        base = self.upstreams[upstream].timeouts
        over = self.models[model].timeouts if model in self.models else TimeoutOverrides()
        return AttemptTimeouts(over.connect or base.connect, over.first_byte or base.first_byte,
                               over.stall or base.stall, over.total or base.total)

    def timeouts(self, target: Target, cap: float | None = None) -> AttemptTimeouts:
        """The upstream's timeouts with the model's overrides applied (resolved at
        start-up), none longer than ``cap`` seconds."""
        timeouts = self._timeouts.get((target.upstream, target.model))
        if timeouts is None:
            timeouts = self._build_timeouts(target.upstream, target.model)
        return timeouts if cap is None else timeouts.capped(cap)

    def price(self, model: str) -> Price | None:
        entry = self.models.get(model)
        return entry.price if entry else None

    def unknown_model(self, model: str | None) -> Rejection:
        if model is None:
            return Rejection(400, "you must provide a model parameter", param="model",
                             code="missing_required_parameter", should_retry=False)
        return Rejection(404, f"The model `{shorten(model)}` does not exist or you do not have access to it.",
                         param="model", code="model_not_found", should_retry=False)

    def check_aliases(self, route_names: set[str]) -> None:
        """Every alias must name a catalogue model or a route a plugin declared."""
        self.route_names = frozenset(route_names)
        errors = [
            self.error(("aliases", alias), f"{target!r} is neither a catalogue model nor a route "
                       f"(known routes: {', '.join(sorted(route_names)) or 'none'})")
            for alias, target in self.aliases.items()
            if target not in self.models and target not in route_names
        ]
        if errors:
            raise ConfigErrors(errors)


