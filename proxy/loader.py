"""Building the plugin manager: discovery, blocking, validation.

Plugins are registered in a fixed order — the core's defaults, the built-ins,
the ``floodgate`` entry-point group, then the dotted paths listed under
``plugins.modules`` — all through the same :func:`load_object` call, so a
built-in plugin is registered exactly like a third-party one.

A reference is ``"package.module"`` or ``"package.module:attribute"``. A module
that defines ``floodgate_plugin`` (a class) is registered as an instance of it;
a referenced class is instantiated with no arguments; anything else (a module,
an instance) is registered as it is. Plugin objects are created per application,
so their state is never shared between apps. A plugin's ``settings_model``
attribute, if any, must be a pydantic model: the class that validates its
``plugins.<name>`` block, which ``floodgate config reference`` documents.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import pathlib
import site
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy
from pydantic import BaseModel

from . import hookspecs
from .errors import ConfigError
from .hooks import sync_only_violations

#: The built-in plugins, in registration order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.auth",
    "plugins.faq",
    "plugins.router",
    "plugins.ratelimit",
    "plugins.retry",
    "plugins.cost",
    "plugins.degrade",
    "plugins.traffic",
)
ENTRY_POINT_GROUP = "floodgate"
#: Plugins that cannot be disabled: without them the core has no defaults.
REQUIRED = frozenset({"core"})
#: Core plugins that may be disabled (also when ``server.access_log: false`` left one out).
OPTIONAL_CORE = frozenset({"metrics", "accesslog"})


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str  # "core", "builtin", "entrypoint" or "config"
    module: str
    version: str | None
    hooks: tuple[str, ...]


def load_object(ref: str) -> Any:
    """Import ``"pkg.mod"`` or ``"pkg.mod:attr"`` and return the plugin object."""
    module_name, _, attr = ref.partition(":")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr) if attr else getattr(module, "floodgate_plugin", module)
    return obj() if inspect.isclass(obj) else obj


def plugin_name(obj: Any, ref: str) -> str:
    name = getattr(obj, "name", None)
    if isinstance(name, str) and name:
        return name
    module_name = ref.partition(":")[0]
    return module_name.rsplit(".", 1)[-1]


class _Distributions:
    """Top-level package → distribution names, scanned at most once per load (the scan is slow)."""

    def __init__(self) -> None:
        self._map: Mapping[str, list[str]] | None = None

    def __call__(self, top: str) -> list[str]:
        if self._map is None:
            self._map = importlib.metadata.packages_distributions()
        return self._map.get(top, [])


def _version(obj: Any, distributions: _Distributions) -> str | None:
    version = getattr(obj, "__version__", None) or getattr(inspect.getmodule(obj), "__version__", None)
    if version:
        return str(version)
    module = inspect.getmodule(obj) or obj
    top = getattr(module, "__name__", "").split(".")[0]
    if top in ("proxy", "plugins"):
        from . import __version__
        return __version__
    if not _installed(module):
        return None  # a module of no distribution (a test's, a script's): the scan would find nothing
    for dist in distributions(top):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _installed(module: Any) -> bool:
    """Whether ``module`` was imported from an installation directory (site-packages and the like)."""
    path = getattr(module, "__file__", None)
    if not path:
        return False
    roots = {sysconfig.get_paths()[kind] for kind in ("purelib", "platlib")} | set(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    resolved = str(pathlib.Path(path).resolve())
    return any(resolved.startswith(str(pathlib.Path(root).resolve()) + "/") for root in roots if root)


def _entry_point_refs() -> list[tuple[str, str]]:
    return [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]


def build_plugin_manager(
    *,
    core: Sequence[Any],
    builtins: Iterable[str] = BUILTIN_PLUGINS,
    entry_points: bool = True,
    modules: Iterable[str] = (),
    extra: Sequence[Any] = (),
    disabled: Iterable[str] = (),
) -> tuple[pluggy.PluginManager, list[PluginInfo], list[ConfigError]]:
    """Register every plugin; return the manager, what was loaded, and the errors
    (bad references, unknown hooks, unknown names in ``disabled``).

    :param core: the core's own plugin objects (defaults, metrics, access log).
    :param extra: plugin objects passed in directly (tests, embedding).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = list(disabled)
    errors: list[ConfigError] = []
    for i, name in enumerate(disabled):
        if name in REQUIRED:
            errors.append(ConfigError(f"plugins.disabled.{i}", f"the {name!r} plugin cannot be disabled"))
        else:
            pm.set_blocked(name)
    infos: list[PluginInfo] = []
    distributions = _Distributions()

    blocked_seen: set[str] = set()

    def register(obj: Any, name: str, source: str, module: str | None = None) -> None:
        if pm.is_blocked(name):
            blocked_seen.add(name)
            return
        if pm.has_plugin(name):
            errors.append(ConfigError("plugins", f"two plugins are named {name!r} ({source})"))
            return
        pm.register(obj, name=name)
        model = getattr(obj, "settings_model", None)
        if model is not None and not (inspect.isclass(model) and issubclass(model, BaseModel)):
            errors.append(ConfigError(f"plugins.{name}", f"plugin {name!r}: settings_model must be a pydantic "
                                      f"model class (a proxy.Settings), not {model!r}"))
        # The module a reference named (``plugins.auth``), not the file inside a package
        # that happens to define the class (``plugins.auth.plugin``).
        module = module or str(getattr(inspect.getmodule(obj) or obj, "__name__", "?"))
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(obj) or ()))
        infos.append(PluginInfo(name, source, module, _version(obj, distributions), hooks))

    for obj in core:
        register(obj, plugin_name(obj, type(obj).__module__), "core")
    refs = [(ref, "builtin", "plugins") for ref in builtins]
    if entry_points:
        refs += [(value, "entrypoint", f"entry point {name!r}") for name, value in _entry_point_refs()]
    refs += [(ref, "config", f"plugins.modules.{i}") for i, ref in enumerate(modules)]
    for ref, source, path in refs:
        try:
            obj = load_object(ref)
        except Exception as exc:  # ImportError, AttributeError, errors in the plugin's module
            errors.append(ConfigError(path, f"cannot load plugin {ref!r}: {type(exc).__name__}: {exc}"))
            continue
        register(obj, plugin_name(obj, ref), source, ref.partition(":")[0])
    for obj in extra:
        register(obj, plugin_name(obj, getattr(type(obj), "__module__", "extra")), "extra")
    for i, name in enumerate(disabled):
        if name not in blocked_seen and name not in REQUIRED and name not in OPTIONAL_CORE:
            errors.append(ConfigError(f"plugins.disabled.{i}", f"no plugin is named {name!r}"))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        errors.append(ConfigError("plugins", f"plugin {exc.plugin!r}: {exc}"))
    errors.extend(sync_only_violations(pm))
    return pm, infos, errors
