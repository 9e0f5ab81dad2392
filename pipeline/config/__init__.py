"""Typed, validated configuration: ``params.yaml`` parsed once into frozen dataclasses.

Every stage calls :func:`load_params` and passes the resulting objects down; nothing else reads the
YAML. Unknown keys, wrong types and bad values raise :class:`ConfigError` with the dotted key
(``gan.weights.cycle``) and what was expected.

Layers, each importing only those below it:

* :mod:`pipeline.typed`: :class:`ConfigError` and the generic mapping -> dataclass converter;
* :mod:`pipeline.methods`: the adaptation methods, each validating its own ``params`` with the converter;
* this package: :mod:`~pipeline.config.schema` (the dataclasses), :mod:`~pipeline.config.checks`
  (values, paths and each variant against its method) and :mod:`~pipeline.config.load` (the file).
"""

from pipeline.config.checks import unlabelled_target_refusal
from pipeline.config.load import load_params, parse_params
from pipeline.config.schema import (
    KIND_SCHEMAS,
    PREPARED_TARGET,
    AugmentStep,
    DataParams,
    DetectorParams,
    DiscriminatorParams,
    DomainSource,
    GanParams,
    GeneratorParams,
    LossWeights,
    OptimizerParams,
    Params,
    RenderParams,
    SceneParams,
    TaskParams,
    TranslateParams,
    VariantParams,
    has_labelled_target,
    scale_steps,
    trains_on_target,
)
from pipeline.typed import ConfigError, build_dataclass, flatten

__all__ = [
    "ConfigError", "build_dataclass", "flatten", "KIND_SCHEMAS",
    "DomainSource", "RenderParams", "SceneParams", "DataParams", "AugmentStep", "GeneratorParams",
    "DiscriminatorParams", "LossWeights", "GanParams", "TranslateParams", "OptimizerParams", "DetectorParams",
    "TaskParams", "VariantParams", "Params",
    "PREPARED_TARGET", "has_labelled_target", "scale_steps", "trains_on_target", "unlabelled_target_refusal",
    "parse_params", "load_params",
]
