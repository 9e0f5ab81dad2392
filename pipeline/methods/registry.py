"""The registry of adaptation methods: ``method: <name>`` in a variant -> a :class:`Method` class.

Built-in methods are the modules of this package, found and imported on first use (each registers
itself with :func:`register`), so adding one is one new file. :func:`check_variant` is how the
config checks a variant against its method; it takes plain values, never the params schema.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any, Collection

from pipeline.methods.base import Method
from pipeline.typed import ConfigError, build_dataclass

_REGISTRY: dict[str, type[Method]] = {}
_NOT_METHODS = {"base", "registry"}      # modules of this package that define no method
_builtins_loaded = False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``method: <cls.name>`` in variants."""
    if not getattr(cls, "name", None):
        raise TypeError(f"{cls.__name__}: a method needs a class attribute 'name'")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a method (tests register throw-away methods)."""
    _REGISTRY.pop(name, None)


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get(name: str, key: str = "method") -> type[Method]:
    """The registered class for ``name``; a :class:`~pipeline.typed.ConfigError` naming ``key`` if none."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"{key}: unknown method {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def parse_params(name: str, raw: dict[str, Any], key: str) -> Any:
    """``raw`` validated into the method's ``Params`` dataclass; errors name ``key.<field>``."""
    return build_dataclass(get(name, key.rsplit(".", 1)[0] + ".method").Params, raw or {}, key)


def check_variant(name: str, variant: Any, task_kind: str, augment_names: Collection[str]) -> None:
    """Variant ``name`` fits its method: the method exists and supports ``task_kind``, its params fit
    the method's dataclass, and every ``augment`` pipeline it names is one of ``augment_names``.

    ``variant`` is anything with the attributes ``method``, ``params``, ``augment`` and
    ``labelled_batch`` (a variant of params.yaml). Errors are :class:`ConfigError` naming
    ``variants.<name>.<key>``."""
    params = parse_params(variant.method, variant.params, f"variants.{name}.params")
    method = get(variant.method)
    if method.kinds is not None and task_kind not in method.kinds:
        raise ConfigError(f"variants.{name}.method: {variant.method!r} works for task.kind "
                          f"{' or '.join(method.kinds)}, not {task_kind!r}; remove variants.{name} or choose "
                          "another method")
    if variant.labelled_batch and not method.reads_labelled_real:
        readers = [m for m in available() if get(m).reads_labelled_real]
        raise ConfigError(f"variants.{name}.labelled_batch: method {variant.method!r} does not train on labelled "
                          f"real images; expected 0, or a method that does ({', '.join(readers)})")
    pipelines = sorted(augment_names)
    if variant.augment not in augment_names:
        raise ConfigError(f"variants.{name}.augment: {variant.augment!r} is not a pipeline of 'augment'; "
                          f"expected one of {pipelines}")
    for view, pipeline in method.target_views_of(params).items():
        if pipeline is not None and pipeline not in augment_names:
            raise ConfigError(f"variants.{name}.params: the {view!r} view uses augment pipeline {pipeline!r}, "
                              f"which 'augment' does not define (expected one of {pipelines})")


def _load_builtins() -> None:
    """Import the built-in methods once: every module of this package (each registers itself)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")
    _builtins_loaded = True
