"""The sampler plugin manager: built-ins, installed packages, then a local folder.

Plugins are found in this order, and an earlier plugin keeps a name that a later one registers again:

1. built-in modules of the top-level ``samplers`` package,
2. installed packages declaring ``[project.entry-points."webui.samplers"]``
   (pluggy's ``load_setuptools_entrypoints``),
3. ``*.py`` files and packages in a local folder (``--samplers-dir``).

A plugin registers samplers (``register_samplers``), schedules (``register_schedules``) or both; its
schedules come first, so that its samplers may name them. A plugin that fails to import, raises in a
hook, registers a name that is taken, or registers something that is not a valid :class:`Sampler` /
:class:`ScheduleType` is skipped as a whole, with exactly one warning naming it (``registry.warnings``,
also logged); all other plugins keep working.
"""

from __future__ import annotations

import dataclasses
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
from webui.sampling.schedules import SCHEDULES, ScheduleType, schedule_key
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
        schedules: the schedules registered by plugins, after the core ``SCHEDULES``.
        schedule_sources: schedule name -> name of the plugin that registered it.
    """

    samplers: list[Sampler] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plugin_manager: pluggy.PluginManager | None = None
    sources: dict[str, str] = field(default_factory=dict)
    schedules: list[ScheduleType] = field(default_factory=list)
    schedule_sources: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.samplers]

    @property
    def schedule_names(self) -> list[str]:
        """Every schedule users may pick: the core ``SCHEDULES``, then the plugins' in registration order."""
        return [*SCHEDULES, *(s.name for s in self.schedules)]

    def schedule(self, name: str) -> str | ScheduleType:
        """The core schedule's canonical name or the plugin's :class:`ScheduleType` that ``name`` (or an alias)
        means: what :func:`~webui.sampling.sample` takes. Case-insensitive, and ``_`` stands for a space, so that
        AUTOMATIC1111's API names ("sgm_uniform", "align_your_steps") match too. ValueError listing the choices."""
        key = schedule_key(name) if isinstance(name, str) else None
        for known in SCHEDULES:
            if key == schedule_key(known):
                return known
        for schedule in self.schedules:
            if key in (schedule_key(n) for n in schedule.names):
                return schedule
        raise ValueError(f"Unknown schedule {name!r}; choose one of {', '.join(self.schedule_names)}")

    def normalize_schedule(self, name: str) -> str:
        """The canonical spelling of a schedule name or alias ("sgm_uniform" -> "SGM Uniform")."""
        schedule = self.schedule(name)
        return schedule.name if isinstance(schedule, ScheduleType) else schedule

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
            registry.schedules = [s for s in registry.schedules if registry.schedule_sources.get(s.name) != plugin_name]
            registry.schedule_sources = {k: v for k, v in registry.schedule_sources.items() if v != plugin_name}
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
    """Call the plugin's ``register_schedules`` then ``register_samplers``; keep all it registers or nothing."""
    impls = [i for i in pm.hook.register_samplers.get_hookimpls() if i.plugin is plugin]
    schedule_impls = [i for i in pm.hook.register_schedules.get_hookimpls() if i.plugin is plugin]
    if not impls and not schedule_impls:
        pm.unregister(plugin)
        raise _PluginRejected(
            "it defines no @hookimpl register_samplers(register) function (nor register_schedules(register))"
        )

    taken = {n.casefold(): registry.sources[s.name] for s in registry.samplers for n in s.names}
    schedules_taken = {schedule_key(n): "the core" for n in SCHEDULES}
    schedules_taken.update(
        {schedule_key(n): registry.schedule_sources[s.name] for s in registry.schedules for n in s.names}
    )
    staged: list[Sampler] = []
    staged_schedules: list[ScheduleType] = []

    def register_schedule(schedule: ScheduleType) -> None:
        if not isinstance(schedule, ScheduleType):
            raise _PluginRejected(f"register() got a {type(schedule).__name__}, not a webui.sampling.ScheduleType")
        for n in schedule.names:
            owner = schedules_taken.get(schedule_key(n))
            if owner is not None:
                where = "twice by this plugin" if owner == plugin_name else f"already by {owner!r}"
                raise _PluginRejected(f"schedule name {n!r} is registered {where}")
            schedules_taken[schedule_key(n)] = plugin_name
        staged_schedules.append(schedule)

    def canonical_schedules(sampler: Sampler) -> Sampler:
        """The sampler with its schedules spelled as registered ("two_level" -> "Two Level"); rejects unknown ones."""
        if sampler.schedules is None:
            return sampler
        known = SamplerRegistry(schedules=[*registry.schedules, *staged_schedules])
        try:
            names = tuple(known.normalize_schedule(name) for name in sampler.schedules)
        except ValueError as err:
            raise _PluginRejected(f"sampler {sampler.name!r}: {err}") from None
        return dataclasses.replace(sampler, schedules=names)

    def register(sampler: Sampler) -> None:
        if not isinstance(sampler, Sampler):
            raise _PluginRejected(f"register() got a {type(sampler).__name__}, not a webui.sampling.Sampler")
        for n in sampler.names:
            owner = taken.get(n.casefold())
            if owner is not None:
                where = "twice by this plugin" if owner == plugin_name else f"already by {owner!r}"
                raise _PluginRejected(f"sampler name {n!r} is registered {where}")
            taken[n.casefold()] = plugin_name
        staged.append(canonical_schedules(sampler))

    hook = "register_schedules"
    try:
        for impl in schedule_impls:
            impl.function(register=register_schedule)
        if schedule_impls and not staged_schedules:
            raise _PluginRejected("register_schedules() registered no schedule")
        hook = "register_samplers"
        for impl in impls:
            impl.function(register=register)
        if impls and not staged:
            raise _PluginRejected("register_samplers() registered no sampler")
    except _PluginRejected:
        pm.unregister(plugin)
        raise
    except Exception as err:
        pm.unregister(plugin)
        raise _PluginRejected(f"{hook}() raised {type(err).__name__}: {err}") from None
    for schedule in staged_schedules:
        registry.schedules.append(schedule)
        registry.schedule_sources[schedule.name] = plugin_name
    for sampler in staged:
        registry.samplers.append(sampler)
        registry.sources[sampler.name] = plugin_name
