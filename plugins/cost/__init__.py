"""Cost accounting: a package, so that the plugin can be split by purpose (see :mod:`.plugin`)."""

import proxy

from .plugin import CostPlugin, CostSettings

__all__ = ["CostPlugin", "CostSettings", "floodgate_plugin"]
__version__ = proxy.__version__  # a built-in: versioned with Floodgate

# /-/plugins reports the module that defines the plugin class: name the package
# the loader registers (plugins.cost), as when the plugin was a single module.
CostPlugin.__module__ = __name__
floodgate_plugin = CostPlugin
