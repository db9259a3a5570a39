"""Retry, fallback and circuit breakers: a package, so that the plugin can be split by purpose (see :mod:`.plugin`)."""

import proxy

from .plugin import BreakerSettings, ModelOverrides, RetryPlugin, RetrySettings

__all__ = ["BreakerSettings", "ModelOverrides", "RetryPlugin", "RetrySettings", "floodgate_plugin"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

# /-/plugins reports the module that defines the plugin class: name the package
# the loader registers (plugins.retry), as when the plugin was a single module.
RetryPlugin.__module__ = __name__
floodgate_plugin = RetryPlugin
