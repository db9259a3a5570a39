"""Floodgate: an OpenAI-compatible LLM gateway driven by pluggy hooks.

This module is the public API, the one the built-in plugins use and the only one
a third-party plugin needs.
"""

from .admin import authenticate, require_admin
from .app import create_app
from .cli import add_config_option
from .config import (
    Config,
    NonEmptyStr,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Price,
    Settings,
    load_config,
    parse_config,
)
from .errors import ConfigError, ConfigErrors, Rejection
from .hookspecs import hookimpl
from .keys import CONFIG, HOOKS, REGISTRY, UPSTREAMS
from .metrics import LabelCache
from .tokens import estimate_prompt_tokens, estimate_text_tokens
from .types import (
    ANONYMOUS,
    STOP,
    Attempt,
    AttemptRecord,
    EndpointKind,
    Principal,
    Reply,
    RequestContext,
    Route,
    Stop,
    StreamChunk,
    Target,
    Timings,
    UpstreamResponse,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "ANONYMOUS", "STOP", "NonEmptyStr", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt",
    "add_config_option", "Attempt", "AttemptRecord", "CONFIG", "EndpointKind", "Config", "ConfigError", "ConfigErrors",
    "HOOKS", "LabelCache", "Price", "Principal", "REGISTRY", "Rejection", "Reply", "RequestContext", "Route",
    "Settings", "Stop", "StreamChunk", "Target", "Timings", "UPSTREAMS", "UpstreamResponse", "Usage",
    "authenticate", "create_app", "estimate_prompt_tokens", "estimate_text_tokens", "hookimpl", "load_config",
    "parse_config", "require_admin",
]
