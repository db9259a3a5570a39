"""Reading a config: file or text → YAML with lines → validated :class:`Config`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

from ..errors import ConfigError, ConfigErrors
from .catalogue import Config
from .patterns import Pattern, is_pattern, ordered, shadowing, syntax_error, template_error
from .schema import MOCK_BASE_URL, CoreSettings, ModelSettings
from .source import LocatedYaml, load_yaml
from .validation import validate

log = logging.getLogger("floodgate.config")


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
    settings = validate(CoreSettings, located.data, located, ())
    syntax = [ConfigError(f"models.{name}", problem, line=located.line_of(("models", name)), source=located.source)
              for name in settings.models if is_pattern(name) and (problem := syntax_error(name))]
    if syntax:
        raise ConfigErrors(syntax)
    config = Config(settings, located)
    errors = _catalogue_errors(config)
    for name, upstream in settings.upstreams.items():
        if upstream.mock is not None and upstream.base_url != MOCK_BASE_URL:
            # The shipped config keeps its mock block when FLOODGATE_UPSTREAM_URL points at a
            # real provider: say it is unused rather than refuse to start (shown by check and serve).
            config.warnings.append(config.error(("upstreams", name, "mock"),
                                                f"not used (base_url is not {MOCK_BASE_URL})"))
    if errors:
        raise ConfigErrors(errors)
    config.warnings.extend(_pattern_warnings(config))
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def _catalogue_errors(config: Config) -> list[ConfigError]:
    errors: list[ConfigError] = []
    upstreams = config.upstreams
    for name, model in config.models.items():
        path = ("models", name)
        if model.upstream not in upstreams:
            errors.append(config.error((*path, "upstream"), f"unknown upstream {model.upstream!r}"
                                       f" (known: {', '.join(upstreams)})"))
        pattern = is_pattern(name)
        if pattern and "price" not in model.model_fields_set:
            errors.append(config.error(path, "a pattern needs a price: dollars per million tokens for every "
                                       "model it matches, or `price: null` (unpriced: usage recorded, cost unknown)"))
        if model.upstream_model is not None:
            stars = Pattern.compile(name, 0).stars if pattern else None
            problem = template_error(model.upstream_model, stars)
            if problem:
                errors.append(config.error((*path, "upstream_model"), problem))
        errors += _deployment_errors(config, name, model, pattern)
        for i, fallback in enumerate(model.fallbacks):
            if is_pattern(fallback):
                errors.append(config.error((*path, "fallbacks", i), f"{fallback!r} is a pattern; a fallback "
                                           "names one model"))
            elif config.catalogue_name(fallback) is None:
                errors.append(config.error((*path, "fallbacks", i), f"unknown model {fallback!r}"))
    return errors


def _deployment_errors(config: Config, name: str, model: ModelSettings, pattern: bool) -> list[ConfigError]:
    """Each deployment on a known upstream, under a name of its own within the entry."""
    errors: list[ConfigError] = []
    seen: dict[str, int] = {}
    stars = Pattern.compile(name, 0).stars if pattern else None
    for i, deployment in enumerate(model.deployments):
        path = ("models", name, "deployments", i)
        if deployment.upstream not in config.upstreams:
            errors.append(config.error((*path, "upstream"), f"unknown upstream {deployment.upstream!r}"
                                       f" (known: {', '.join(config.upstreams)})"))
        if deployment.key in seen:
            errors.append(config.error((*path, "name" if deployment.name else "upstream"),
                                       f"deployments.{seen[deployment.key]} is already called {deployment.key!r}; "
                                       "give each deployment a name of its own"))
        seen.setdefault(deployment.key, i)
        if deployment.upstream_model is not None and (problem := template_error(deployment.upstream_model, stars)):
            errors.append(config.error((*path, "upstream_model"), problem))
    return errors


def _pattern_warnings(config: Config) -> list[ConfigError]:
    """Patterns that catch every name, and patterns that can never win."""
    warnings = []
    shadowed = shadowing(ordered([Pattern.compile(name, i) for i, name in enumerate(config.models)
                                  if is_pattern(name)]))
    for name in config.patterns:
        if set(name) == {"*"}:
            warnings.append(config.error(("models", name), "matches every model name: names no other entry "
                                         "serves, typos included, go to upstream "
                                         f"{config.models[name].upstream!r} instead of a 404 model_not_found"))
        elif name in shadowed:
            warnings.append(config.error(("models", name), f"shadows nothing: every name it matches is taken by "
                                         f"{shadowed[name]!r} (longer, or listed before it), so it never applies"))
    return warnings
