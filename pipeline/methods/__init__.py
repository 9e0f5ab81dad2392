"""Adaptation methods as plug-ins: a registry of :class:`~pipeline.methods.base.Method` classes.

A method is one file that defines a ``Method`` subclass with a typed ``Params`` dataclass and
decorates it with :func:`register`; a variant in ``params.yaml`` names it (``method: <name>``) and
gives its ``params``, which the method's dataclass validates (errors name the dotted key). The
training loop (:mod:`pipeline.task.train`) names no method.

    from pipeline.methods import register
    from pipeline.methods.base import Method

    @register
    class MyMethod(Method):
        name = "my_method"
        ...
"""

from __future__ import annotations

from typing import Any

from pipeline.methods.base import Method, MethodContext, StepBatch, StepOutput

_REGISTRY: dict[str, type[Method]] = {}


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
    """The registered class for ``name``; a :class:`~pipeline.config.ConfigError` naming ``key`` if none."""
    from pipeline.config import ConfigError

    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"{key}: unknown method {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def parse_params(name: str, raw: dict[str, Any], key: str) -> Any:
    """``raw`` validated into the method's ``Params`` dataclass; errors name ``key.<field>``."""
    from pipeline.config import build_dataclass

    return build_dataclass(get(name, key.rsplit(".", 1)[0] + ".method").Params, raw or {}, key)


def _load_builtins() -> None:
    """Import the built-in methods once (each registers itself)."""
    from pipeline.methods import dann, self_training, supervised  # noqa: F401


__all__ = ["Method", "MethodContext", "StepBatch", "StepOutput", "register", "unregister", "available", "get",
           "parse_params"]
