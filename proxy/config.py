"""The configuration: strict schema, located errors, the model catalogue.

Every section is a pydantic model with ``extra="forbid"``: an unknown or
misspelled key is an error naming its path and line
(``config.yaml:14 upstreams.main.timeouts.total: must be greater than 0``),
never silently ignored. Plugins validate their own block under
``plugins.<name>`` with :meth:`Config.plugin_settings`, which reports errors the
same way.
"""

from __future__ import annotations

import difflib
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from .errors import ConfigError, ConfigErrors, Rejection
from .types import Target, Usage
from .yamlsource import LocatedYaml, Path, load_yaml

log = logging.getLogger("floodgate.config")

T = TypeVar("T", bound=BaseModel)

#: ``upstreams.<name>.base_url`` prefix of upstreams a plugin starts in-process
#: (``builtin:mock``: the mock upstream tool, through ``proxy_builtin_upstream``).
BUILTIN_SCHEME = "builtin:"
MOCK_BASE_URL = "builtin:mock"

# Setting types shared by the core and every plugin (exported by ``proxy``).
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


class Settings(BaseModel):
    """Base for every config section, core or plugin: strict, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Settings):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: PositiveInt = 4 * 1024 * 1024
    shutdown_timeout: PositiveFloat = 30.0
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Timeouts(Settings):
    """Seconds. ``first_byte`` bounds the wait for the response headers (and, for
    streams, the first event); ``total`` bounds one attempt from start to end."""

    connect: PositiveFloat = 10.0
    first_byte: PositiveFloat = 60.0
    total: PositiveFloat = 600.0


@dataclass(frozen=True, slots=True)
class AttemptTimeouts:
    """The resolved timeouts of one attempt, in seconds."""

    connect: float
    first_byte: float
    total: float

    def capped(self, cap: float) -> AttemptTimeouts:
        cap = max(cap, 0.001)
        if cap >= self.first_byte and cap >= self.total:
            return self
        return AttemptTimeouts(self.connect, min(self.first_byte, cap), min(self.total, cap))


class TimeoutOverrides(Settings):
    connect: PositiveFloat | None = None
    first_byte: PositiveFloat | None = None
    total: PositiveFloat | None = None


class UpstreamSettings(Settings):
    base_url: str
    api_key: SecretStr | None = None
    timeouts: Timeouts = Timeouts()
    pool_size: PositiveInt = 100
    stream_options: bool = Field(True, description="whether it accepts stream_options.include_usage")
    headers: dict[str, str] = {}
    # Options of a ``builtin:`` upstream, validated by the plugin that serves it.
    mock: dict[str, Any] | None = None

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key(cls, value: Any) -> Any:
        return None if value == "" else value  # "${KEY:-}" with KEY unset: no key

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://", BUILTIN_SCHEME)):
            raise ValueError(f"must be an http(s):// URL or {MOCK_BASE_URL!r}")
        return value.rstrip("/")

    @property
    def is_builtin(self) -> bool:
        """Served by a plugin in-process (``builtin:<kind>``), not at a URL."""
        return self.base_url.startswith(BUILTIN_SCHEME)


class Price(Settings):
    """US dollars per million tokens."""

    input: NonNegativeFloat = 0.0
    output: NonNegativeFloat = 0.0
    cached_input: NonNegativeFloat | None = None

    def cost(self, usage: Usage) -> float:
        """US dollars for ``usage``: cached prompt tokens at ``cached_input`` when
        it is set (else at ``input``), the rest of the prompt at ``input``, the
        completion at ``output``."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        return ((usage.prompt_tokens - cached) * self.input + cached * cached_price
                + usage.completion_tokens * self.output) / 1_000_000


class ModelSettings(Settings):
    upstream: str
    upstream_model: str | None = None
    timeouts: TimeoutOverrides = TimeoutOverrides()
    price: Price = Price()
    fallbacks: list[str] = []
    kind: Literal["chat", "embedding", "completion"] = "chat"


class PluginsSection(Settings):
    model_config = ConfigDict(extra="allow", frozen=True)
    modules: list[str] = []
    disabled: list[str] = []


class CoreSettings(Settings):
    server: ServerSettings = ServerSettings()
    upstreams: dict[str, UpstreamSettings] = Field(min_length=1)
    models: dict[str, ModelSettings] = {}
    aliases: dict[str, str] = {}
    plugins: PluginsSection = PluginsSection()


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
        self._claimed.add(name)
        raw = self._plugin_blocks.get(name)
        return _validate(model, {} if raw is None else raw, self._located, ("plugins", name))

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
        return _validate(model, {} if raw is None else raw, self._located, path)

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
                               over.total or base.total)

    def timeouts(self, target: Target, cap: float | None = None) -> AttemptTimeouts:
        """The upstream's timeouts with the model's overrides applied (resolved at
        start-up), first-byte and total capped at ``cap`` seconds."""
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
        return Rejection(404, f"The model `{model}` does not exist or you do not have access to it.",
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


# -- loading ---------------------------------------------------------------

def load_config(path: str | FsPath, *, env: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file. Raises :class:`ConfigErrors`."""
    path = FsPath(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError("", f"cannot read config: {exc.strerror}", source=str(path))]) from None
    return parse_config(text, source=path.name, env=env)


def parse_config(text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None) -> Config:
    located = load_yaml(text, source=source, env=env)
    return _build(located)


def config_from_dict(data: Mapping[str, Any], *, source: str = "<dict>") -> Config:
    """Build a config from an already-parsed mapping (tests, embedding)."""
    return _build(LocatedYaml(dict(data), {}, source))


def _build(located: LocatedYaml) -> Config:
    if not isinstance(located.data, dict):
        raise ConfigErrors([ConfigError("", "the config must be a mapping of sections",
                                        line=located.line_of(()), source=located.source)])
    settings = _validate(CoreSettings, located.data, located, ())
    config = Config(settings, located)
    errors: list[ConfigError] = []
    for name, model in settings.models.items():
        if model.upstream not in settings.upstreams:
            errors.append(config.error(("models", name, "upstream"), f"unknown upstream {model.upstream!r}"
                                       f" (known: {', '.join(settings.upstreams)})"))
        for i, fallback in enumerate(model.fallbacks):
            if fallback not in settings.models:
                errors.append(config.error(("models", name, "fallbacks", i),
                                           f"unknown model {fallback!r}"))
    for name, upstream in settings.upstreams.items():
        if upstream.mock is not None and upstream.base_url != MOCK_BASE_URL:
            # The shipped config keeps its mock block when FLOODGATE_UPSTREAM_URL points at a
            # real provider: say it is unused rather than refuse to start.
            log.info("%s:%s upstreams.%s.mock: not used (base_url is not %s)", config.source,
                     config.line_of(("upstreams", name, "mock")), name, MOCK_BASE_URL)
    if errors:
        raise ConfigErrors(errors)
    return config


def _validate(model: type[T], data: Any, located: LocatedYaml, prefix: Path) -> T:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors([_located_error(model, err, located, prefix) for err in exc.errors()]) from None


def _located_error(model: type[BaseModel], err: Any, located: LocatedYaml, prefix: Path) -> ConfigError:
    loc: Path = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    path = (*prefix, *loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif known:
            message += f" (expected one of: {', '.join(known)})"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = err["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        if kind in ("string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type",
                    "int_parsing", "float_parsing", "bool_parsing", "model_type"):
            message += f", got {err.get('input')!r}"[:80]
    return ConfigError(".".join(map(str, path)), message, line=located.line_of(path), source=located.source)


def _known_keys(model: type[BaseModel], loc: Path) -> list[str]:
    """The field names of the model found at ``loc`` inside ``model``."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (dict, Mapping):
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) is list:
            current = typing.get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` → ``X``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
