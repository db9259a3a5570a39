"""Reading a config: file or text → YAML with lines → validated :class:`Config`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import Any

from ..errors import ConfigError, ConfigErrors
from .catalogue import Config
from .schema import MOCK_BASE_URL, CoreSettings
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


