"""The configuration: strict schema, located errors, the model catalogue.

- ``schema``: the core sections as pydantic models (and the setting types plugins share);
- ``source``: YAML with the line of every key, duplicate keys refused, ``${ENV}`` substitution;
- ``validation``: pydantic errors as ``config.yaml:LINE dotted.path: message``;
- ``catalogue``: :class:`Config`, the validated config of one application;
- ``patterns``, ``lookup``: catalogue globs (``gpt-*``) and which entry serves a model name;
- ``loading``: :func:`load_config`, :func:`parse_config`, :func:`config_from_dict`;
- ``reference``: the configuration reference (``docs/configuration.md``) rendered from the models.
"""

from ..settings import NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Settings
from .catalogue import Config
from .loading import config_from_dict, load_config, parse_config
from .patterns import is_pattern
from .schema import (
    BUILTIN_SCHEME,
    MOCK_BASE_URL,
    AttemptTimeouts,
    CoreSettings,
    DeploymentLimits,
    DeploymentSettings,
    ModelSettings,
    Price,
    ServerSettings,
    TimeoutOverrides,
    Timeouts,
    UpstreamSettings,
)

__all__ = [
    "BUILTIN_SCHEME", "MOCK_BASE_URL", "AttemptTimeouts", "Config", "CoreSettings", "DeploymentLimits",
    "DeploymentSettings", "ModelSettings",
    "NonEmptyStr", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "Price",
    "ServerSettings", "Settings", "TimeoutOverrides", "Timeouts", "UpstreamSettings", "config_from_dict",
    "is_pattern", "load_config", "parse_config",
]
