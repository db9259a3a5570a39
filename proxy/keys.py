"""The application's state, by :class:`aiohttp.web.AppKey` (no module-level state)."""

from __future__ import annotations

import weakref
from typing import Any

import pluggy
from aiohttp import web
from prometheus_client import CollectorRegistry

from .config import Config
from .hooks import Hooks
from .state import SharedState
from .upstream import Upstreams

CONFIG = web.AppKey("floodgate.config", Config)
PLUGIN_MANAGER = web.AppKey("floodgate.plugin_manager", pluggy.PluginManager)
PLUGINS = web.AppKey("floodgate.plugins", list)
HOOKS = web.AppKey("floodgate.hooks", Hooks)
UPSTREAMS = web.AppKey("floodgate.upstreams", Upstreams)
REGISTRY = web.AppKey("floodgate.registry", CollectorRegistry)
GATEWAY: web.AppKey[Any] = web.AppKey("floodgate.gateway")
READY = web.AppKey("floodgate.ready", dict)
#: The application's :class:`SharedState` (the same object in every generation; survives reloads).
STATE = web.AppKey("floodgate.state", SharedState)
#: The :class:`proxy.generation.Generations` of the application ``create_app`` returned.
GENERATIONS: web.AppKey[Any] = web.AppKey("floodgate.generations")
#: Transports that delivered a complete request (its headers) to the application
#: (set by the server: the headers deadline spares them).
SERVED: web.AppKey[weakref.WeakSet[Any]] = web.AppKey("floodgate.served_transports")
