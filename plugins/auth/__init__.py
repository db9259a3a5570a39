"""API keys: a package, so that the plugin can be split by purpose (see :mod:`.plugin`)."""

from .plugin import AuthPlugin, AuthSettings

__all__ = ["AuthPlugin", "AuthSettings", "floodgate_plugin"]

# /-/plugins reports the module that defines the plugin class: name the package
# the loader registers (plugins.auth), as when the plugin was a single module.
AuthPlugin.__module__ = __name__
floodgate_plugin = AuthPlugin
