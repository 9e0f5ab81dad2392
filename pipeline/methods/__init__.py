"""Adaptation methods as plug-ins: a registry of :class:`~pipeline.methods.base.Method` classes.

A method is one file that defines a ``Method`` subclass with a typed ``Params`` dataclass and
decorates it with :func:`register`; a variant in ``params.yaml`` names it (``method: <name>``) and
gives its ``params``, which the method's dataclass validates (errors name the dotted key). The
training loop (:mod:`pipeline.task.train`) names no method. The modules of this package are the
built-in methods, found on first use (:mod:`pipeline.methods.registry`): adding one is one new file.

    from pipeline.methods import register
    from pipeline.methods.base import Method

    @register
    class MyMethod(Method):
        name = "my_method"
        ...
"""

from __future__ import annotations

from pipeline.methods.base import Method, MethodContext, StepBatch, StepOutput
from pipeline.methods.registry import available, check_variant, get, parse_params, register, unregister

__all__ = ["Method", "MethodContext", "StepBatch", "StepOutput", "register", "unregister", "available", "get",
           "parse_params", "check_variant"]
