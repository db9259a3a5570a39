"""Token-bucket rate limiting: a package, so that the plugin can be split by purpose (see :mod:`.plugin`)."""

import proxy

from .plugin import Limits, QueueSettings, RateLimitPlugin, RateLimitSettings, format_duration

__all__ = ["Limits", "QueueSettings", "RateLimitPlugin", "RateLimitSettings", "floodgate_plugin", "format_duration"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

# /-/plugins reports the module that defines the plugin class: name the package
# the loader registers (plugins.ratelimit), as when the plugin was a single module.
RateLimitPlugin.__module__ = __name__
floodgate_plugin = RateLimitPlugin
