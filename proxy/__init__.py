"""Floodgate: an OpenAI-compatible LLM gateway driven by pluggy hooks.

This module is the public API, the one the built-in plugins use and the only one
a third-party plugin needs.
"""

from . import hookspecs
from .admin import authenticate, require_admin
from .app import create_app
from .cli import add_config_option
from .clock import Clock, LoopClock, ManualClock
from .config import Config, DeploymentLimits, DeploymentSettings, Price, load_config, parse_config
from .deferred import Deferred
from .errors import ConfigError, ConfigErrors, Rejection, shorten
from .hooks import Hooks
from .hookspecs import hookimpl
from .keys import CONFIG, HOOKS, REGISTRY, STATE, UPSTREAMS
from .metrics import LabelCache
from .policy import UNRESTRICTED, Budget, KeyPolicy, RateLimits
from .settings import NonEmptyStr, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Settings
from .state import STATE_ERRORS, Coalescer, Pipe, SharedState
from .tally import CollectedGauge
from .text import content_text, conversation, last_user_text
from .tokens import estimate_prompt_tokens, estimate_text_tokens, output_limit, request_token_bounds
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
    "ANONYMOUS", "Attempt", "AttemptRecord", "Budget", "CONFIG", "Clock", "Coalescer", "CollectedGauge", "Config",
    "ConfigError", "ConfigErrors", "Deferred", "DeploymentLimits", "DeploymentSettings", "EndpointKind", "HOOKS",
    "Hooks", "KeyPolicy", "LabelCache", "LoopClock", "ManualClock", "NonEmptyStr", "NonNegativeFloat", "NonNegativeInt",
    "Pipe", "PositiveFloat", "PositiveInt", "Price", "Principal", "REGISTRY", "RateLimits", "Rejection", "Reply",
    "RequestContext", "Route", "STATE", "STATE_ERRORS", "STOP", "Settings", "SharedState", "Stop",
    "StreamChunk", "Target", "Timings", "UNRESTRICTED", "UPSTREAMS", "UpstreamResponse", "Usage",
    "add_config_option", "authenticate", "content_text", "conversation", "create_app", "estimate_prompt_tokens",
    "estimate_text_tokens", "hookimpl", "hookspecs", "last_user_text", "load_config", "output_limit",
    "parse_config",
    "request_token_bounds", "require_admin", "shorten",
]
