"""The sampler plugin manager: built-ins, installed packages, then a local folder.

Plugins are found in this order, and an earlier plugin keeps a name that a later one registers again:

1. built-in modules of the top-level ``samplers`` package,
2. installed packages declaring ``[project.entry-points."webui.samplers"]``
   (pluggy's ``load_setuptools_entrypoints``),
3. ``*.py`` files and packages in a local folder (``--samplers-dir``).

A plugin that fails to import, raises in ``register_samplers``, registers a name that is taken,
or registers something that is not a valid :class:`Sampler` is skipped as a whole, with exactly
one warning naming it (``registry.warnings``, also logged); all other plugins keep working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from webui.sampling import hookspecs
from webui.sampling.types import Sampler, UnknownSamplerError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BUILTIN_PACKAGE = "samplers"
LOCAL_MODULE_PREFIX = "webui_local_samplers"


@dataclass
class SamplerRegistry:
    """The samplers available to the app, in registration order.

    Attributes:
        samplers: every registered sampler, built-ins first.
        warnings: one line per skipped plugin.
        plugin_manager: the pluggy manager the plugins were registered with.
        sources: sampler name -> name of the plugin that registered it.
    """

    samplers: list[Sampler] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samplers]

    def find(self, name: str) -> Sampler | None:
        """The sampler whose name or alias equals ``name`` case-insensitively, or None."""
        key = name.strip().casefold() if isinstance(name, str) else None
        for sampler in self.samplers:
            if key in (n.casefold() for n in sampler.names):
                return sampler
        return None

    def get(self, name: str) -> Sampler:
        """Like :meth:`find` but raises :class:`UnknownSamplerError` listing the available names."""
        sampler = self.find(name)
        if sampler is None:
            raise UnknownSamplerError(f"Unknown sampler {name!r}; available: {', '.join(self.names)}")
        return sampler

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __iter__(self) -> Iterator[Sampler]:
        return iter(self.samplers)

    def __len__(self) -> int:
        return len(self.samplers)


class _PluginRejected(Exception):
    """Internal: why one plugin is skipped."""


def create_sampler_registry(samplers_dir: Path | str | None = None) -> SamplerRegistry:
    """Build a fresh registry (nothing is global; call it once per app).

    Args:
        samplers_dir: a folder of local plugins (``*.py`` modules or packages); None or a missing
            folder adds none. ``launch.py`` decides the default.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registry = SamplerRegistry(plugin_manager=pm)

    for plugin_name, load in _discover(pm, samplers_dir):
        try:
            plugin = load()
            _register_plugin(registry, pm, plugin_name, plugin)
        except _PluginRejected as err:
            _warn(registry, plugin_name, str(err))
        except Exception as err:  # a broken plugin must never take the app down
            _warn(registry, plugin_name, f"failed to load: {type(err).__name__}: {err}")
    _drop_unknown_hooks(registry, pm)
    return registry


def _drop_unknown_hooks(registry: SamplerRegistry, pm: pluggy.PluginManager) -> None:
    """Skip plugins with a ``@hookimpl`` that matches no spec (a misspelled hook name), via ``check_pending``."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as err:
            plugin_name = pm.get_name(err.plugin) or repr(err.plugin)
            pm.unregister(err.plugin)
            registry.samplers = [s for s in registry.samplers if registry.sources.get(s.name) != plugin_name]
            registry.sources = {k: v for k, v in registry.sources.items() if v != plugin_name}
            _warn(registry, plugin_name, f"invalid hook: {err}")


def _warn(registry: SamplerRegistry, plugin_name: str, reason: str) -> None:
    reason = " ".join(reason.split())  # one line, also for pluggy's multi-line validation errors
    message = f"Sampler plugin {plugin_name!r} skipped: {reason}"
    registry.warnings.append(message)
    logger.warning(message)


def _discover(pm: pluggy.PluginManager, samplers_dir: Path | str | None) -> Iterator[tuple[str, Any]]:
    """(plugin name, loader) pairs in registration order; each loader returns the registered plugin."""
    builtin = importlib.import_module(BUILTIN_PACKAGE)
    for info in sorted(pkgutil.iter_modules(builtin.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            module_name = f"{BUILTIN_PACKAGE}.{info.name}"
            yield module_name, lambda m=module_name: _register_module(pm, m, importlib.import_module(m))

    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        yield f"{ep.name} ({ep.value})", lambda ep=ep: _load_entry_point(pm, ep)

    if samplers_dir is not None and Path(samplers_dir).is_dir():
        for path in sorted(Path(samplers_dir).iterdir()):
            is_module = path.suffix == ".py" and path.is_file()
            is_package = path.is_dir() and (path / "__init__.py").is_file()
            if (is_module or is_package) and not path.name.startswith(("_", ".")):
                yield str(path), lambda p=path: _register_module(pm, str(p), _import_path(p))


def _register_module(pm: pluggy.PluginManager, name: str, module: ModuleType) -> object:
    try:
        pm.register(module, name=name)
    except ValueError as err:  # pluggy: name or object already registered
        raise _PluginRejected(str(err)) from None
    except pluggy.PluginValidationError as err:
        raise _PluginRejected(f"invalid hook: {err}") from None
    return module


def _load_entry_point(pm: pluggy.PluginManager, ep: importlib.metadata.EntryPoint) -> object:
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
    except pluggy.PluginValidationError as err:
        raise _PluginRejected(f"invalid hook: {err}") from None
    plugin = pm.get_plugin(ep.name)
    if plugin is None:
        raise _PluginRejected(f"entry point {ep.name!r} is blocked or already registered")
    return plugin


def _import_path(path: Path) -> ModuleType:
    """Import a local plugin file or package under a private module name."""
    module_name = f"{LOCAL_MODULE_PREFIX}.{path.stem}"
    location = path / "__init__.py" if path.is_dir() else path
    spec = importlib.util.spec_from_file_location(
        module_name, location, submodule_search_locations=[str(path)] if path.is_dir() else None
    )
    if spec is None or spec.loader is None:
        raise _PluginRejected(f"cannot import {location}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _register_plugin(registry: SamplerRegistry, pm: pluggy.PluginManager, plugin_name: str, plugin: object) -> None:
    """Call the plugin's ``register_samplers`` and keep its samplers only if all of them are valid."""
    impls = [i for i in pm.hook.register_samplers.get_hookimpls() if i.plugin is plugin]
    if not impls:
        pm.unregister(plugin)
        raise _PluginRejected("it defines no @hookimpl register_samplers(register) function")

    taken = {n.casefold(): registry.sources[s.name] for s in registry.samplers for n in s.names}
    staged: list[Sampler] = []

    def register(sampler: Sampler) -> None:
        if not isinstance(sampler, Sampler):
            raise _PluginRejected(f"register() got a {type(sampler).__name__}, not a webui.sampling.Sampler")
        for n in sampler.names:
            owner = taken.get(n.casefold())
            if owner is not None:
                where = "twice by this plugin" if owner == plugin_name else f"already by {owner!r}"
                raise _PluginRejected(f"sampler name {n!r} is registered {where}")
            taken[n.casefold()] = plugin_name
        staged.append(sampler)

    try:
        for impl in impls:
            impl.function(register=register)
        if not staged:
            raise _PluginRejected("register_samplers() registered no sampler")
    except _PluginRejected:
        pm.unregister(plugin)
        raise
    except Exception as err:
        pm.unregister(plugin)
        raise _PluginRejected(f"register_samplers() raised {type(err).__name__}: {err}") from None
    for sampler in staged:
        registry.samplers.append(sampler)
        registry.sources[sampler.name] = plugin_name
