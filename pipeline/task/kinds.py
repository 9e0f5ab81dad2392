"""The registry of task kinds (``task.kind``): the one place that lists them.

A kind is one module with a :class:`~pipeline.task.kind.TaskKind` subclass (the interface and what
each hook means: :mod:`pipeline.task.kind`); a new kind is that module plus one line in
:data:`KINDS`. Everything else asks :func:`task_kind` (from params) or :func:`kind_of_config` /
:func:`kind_of_meta` (from an exported model) and never compares kind names.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Params
from pipeline.detection.kind import Detection
from pipeline.task.classification import Classification
from pipeline.task.kind import Supervised, TaskKind

KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (Classification(), Detection())}
LEGACY_KIND = Classification.name   # exports made before models recorded their kind are classifiers


def task_kind(params: Params) -> TaskKind:
    """The kind named by ``task.kind``."""
    return KINDS[params.task.kind]


def kind_of_config(config: dict[str, Any]) -> TaskKind:
    """The kind of an exported model, from its build config."""
    return KINDS[config.get("kind", LEGACY_KIND)]


def kind_of_meta(meta: dict[str, Any]) -> TaskKind:
    """The kind of an exported model, from the meta saved beside its weights."""
    return KINDS[meta.get("kind", LEGACY_KIND)]


__all__ = ["KINDS", "LEGACY_KIND", "Supervised", "TaskKind", "kind_of_config", "kind_of_meta", "task_kind"]
