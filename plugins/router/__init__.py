"""The complexity router: a package, so that the plugin can be split by purpose (see :mod:`.plugin`)."""

from .plugin import Decision, RouterPlugin, RouterSettings

__all__ = ["Decision", "RouterPlugin", "RouterSettings", "floodgate_plugin"]

# /-/plugins reports the module that defines the plugin class: name the package
# the loader registers (plugins.router), as when the plugin was a single module.
RouterPlugin.__module__ = __name__
floodgate_plugin = RouterPlugin
