""":class:`Config`: the validated configuration of one application, and the model catalogue.

Plugins read their own block with :meth:`Config.plugin_settings` (or any other
block with :meth:`Config.section`); both report errors located like the core's.
Targets and timeouts of exact catalogue names are resolved once, at start-up; names
only a pattern matches get theirs on first use (:mod:`.lookup`, bounded).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

from ..errors import ConfigError, ConfigErrors, Rejection, shorten
from ..types import Target
from .lookup import ModelLookup
from .patterns import is_pattern
from .schema import AttemptTimeouts, CoreSettings, DeploymentSettings, ModelSettings, Price, TimeoutOverrides
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
        self._lookup = ModelLookup(self.models)
        self._exact = frozenset(name for name in self.models if not is_pattern(name))
        self._timeouts: dict[tuple[str, str | None], AttemptTimeouts] = {
            (upstream, name): self._build_timeouts(upstream, name)
            for name, m in self.models.items()
            for upstream in {m.upstream, *(d.upstream for d in m.deployments)} if upstream in self.upstreams}
        self._timeouts.update({(name, None): self._build_timeouts(name, None) for name in self.upstreams})
        #: Notices about the catalogue (``floodgate check`` prints them; the config is valid).
        self.warnings: list[ConfigError] = []
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
    # Every model name below is a name the catalogue serves: an exact entry, or a name one of
    # its patterns matches (its ``Target.model`` is that concrete name).
    def resolve(self, name: str) -> str | None:
        """The model a client-facing name means, or ``None``.

        Exact catalogue names first, then aliases (to a model; an alias to a route is
        ``None``), then patterns: a name a pattern matches means itself. Route names
        plugins declared are never models.
        """
        if name in self._exact:
            return name
        alias = self.aliases.get(name)
        if alias is not None:
            if alias in self.route_names:
                return None
            return alias if self._lookup.entry_name(alias) is not None else None
        if name in self.route_names:
            return None
        return name if self._lookup.entry_name(name) is not None else None

    def catalogue_name(self, model: str) -> str | None:
        """The catalogue entry serving ``model``: the name itself when exact, else the pattern that
        matches it (``"gpt-*"`` for ``"gpt-5"``). Key per-model settings and bounded state by this."""
        return self._lookup.entry_name(model)

    def entry(self, model: str) -> ModelSettings | None:
        """The catalogue entry (:class:`ModelSettings`) serving ``model``, or ``None``."""
        name = self._lookup.entry_name(model)
        return self.models[name] if name is not None else None

    @property
    def patterns(self) -> tuple[str, ...]:
        """The catalogue's patterns in the order they are tried."""
        return tuple(p.text for p in self._lookup.patterns)

    def listed_names(self, upstream: str, upstream_id: str) -> list[str]:
        """The client-facing names under which the catalogue's patterns serve a model ``upstream``
        lists as ``upstream_id`` (``openai/*`` with ``upstream_model: "{1}"`` serves ``gpt-5`` as
        ``openai/gpt-5``); names of exact entries and aliases are left out."""
        return [n for n in self._lookup.listed_names(upstream, upstream_id) if n not in self.aliases]

    def target(self, model: str) -> Target:
        """The :class:`Target` of a model the catalogue serves (``KeyError`` otherwise): built at
        start-up for exact names, on first use (cached, bounded) for names patterns match."""
        return self._lookup.target(model)

    def targets_with_fallbacks(self, model: str) -> tuple[Target, ...]:
        """``model``'s targets (one per deployment) followed by its entry's ``fallbacks``' targets."""
        return self._lookup.chain(model)

    def deployments(self, model: str) -> tuple[Target, ...]:
        """``model``'s targets, one per deployment in catalogue order (``KeyError`` if no entry serves
        it). A model served by one ``upstream`` has one, whose ``deployment`` is ``None``."""
        return self._lookup.deployments(model)

    def deployment(self, target: Target) -> DeploymentSettings | None:
        """The catalogue's settings of ``target``'s deployment (limits, weight, adaptive), or
        ``None`` for a model without deployments."""
        if target.deployment is None:
            return None
        entry = self.entry(target.model)
        return entry.deployment(target.deployment) if entry is not None else None

    def _build_timeouts(self, upstream: str, entry: str | None) -> AttemptTimeouts:
        base = self.upstreams[upstream].timeouts
        over = self.models[entry].timeouts if entry is not None else TimeoutOverrides()
        return AttemptTimeouts(over.connect or base.connect, over.first_byte or base.first_byte,
                               over.stall or base.stall, over.total or base.total)

    def timeouts(self, target: Target, cap: float | None = None) -> AttemptTimeouts:
        """The upstream's timeouts with the model's entry's overrides applied (resolved at
        start-up), none longer than ``cap`` seconds."""
        entry = self._lookup.entry_name(target.model)
        timeouts = self._timeouts.get((target.upstream, entry))
        if timeouts is None:
            timeouts = self._build_timeouts(target.upstream, entry)
        return timeouts if cap is None else timeouts.capped(cap)

    def upstream_timeouts(self, upstream: str) -> AttemptTimeouts:
        """The upstream's own timeouts (requests that name no model: passthrough)."""
        return self._timeouts[(upstream, None)]

    def price(self, model: str, deployment: str | None = None) -> Price | None:
        """The price of a model the catalogue serves (on ``deployment``, whose own price wins when it
        sets one); ``None`` when unpriced (``price: null``) or no entry serves it."""
        entry = self.entry(model)
        if entry is None:
            return None
        return entry.price if deployment is None else entry.price_of(deployment)

    def unknown_model(self, model: str | None) -> Rejection:
        if model is None:
            return Rejection(400, "you must provide a model parameter", param="model",
                             code="missing_required_parameter", should_retry=False)
        return Rejection(404, f"The model `{shorten(model)}` does not exist or you do not have access to it.",
                         param="model", code="model_not_found", should_retry=False)

    def check_aliases(self, route_names: set[str]) -> None:
        """Every alias must name a model the catalogue serves or a route a plugin declared."""
        self.route_names = frozenset(route_names)
        errors = [
            self.error(("aliases", alias), f"{target!r} is neither a catalogue model nor a route "
                       f"(known routes: {', '.join(sorted(route_names)) or 'none'})")
            for alias, target in self.aliases.items()
            if target not in route_names and (is_pattern(target) or self._lookup.entry_name(target) is None)
        ]
        if errors:
            raise ConfigErrors(errors)


