"""``params.yaml`` -> checked :class:`~pipeline.config.schema.Params`: the one place that reads the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.checks import validate
from pipeline.config.schema import Params
from pipeline.typed import ConfigError, build_dataclass


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Build and validate :class:`Params` from an already-loaded mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    params = build_dataclass(Params, raw, "")
    params = dataclasses.replace(params, raw=raw)
    validate(params)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read ``params.yaml`` once; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameters file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse_params(raw, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
