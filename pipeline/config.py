"""Typed, validated configuration: ``params.yaml`` parsed once into frozen dataclasses.

Every stage calls :func:`load_params` and passes the resulting objects down; nothing else reads the
YAML. Unknown keys, wrong types and bad values raise :class:`ConfigError` with the dotted key
(``gan.weights.cycle``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A bad value in params.yaml; the message names the key and what was expected."""


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSource:
    format: str
    root: Optional[str] = None
    val_fraction: float = 0.15
    test_root: Optional[str] = None
    test_fraction: float = 0.3
    labelled_per_class: int = 0            # target: real images per class drawn from a labelled target/train
    labelled_root: Optional[str] = None    # target: a small labelled folder or manifest of real images
    pick_fraction: float = 0.4             # target: share of the labelled real images kept to choose with


@dataclass(frozen=True)
class RenderParams:
    train_count: int = 6000
    val_count: int = 1000
    canvas: int = 64
    scale: tuple[float, float] = (0.55, 1.0)
    rotation_deg: float = 15.0
    translate: float = 0.08
    thickness: tuple[int, int] = (1, 5)
    italic_prob: float = 0.3
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    noise_prob: float = 0.5
    noise_std: tuple[float, float] = (0.0, 0.08)
    clutter_prob: float = 0.2
    foreground: tuple[int, int] = (190, 255)
    background: tuple[int, int] = (0, 40)


@dataclass(frozen=True)
class SceneParams:
    """The built-in detection scenario (``task.kind: detection`` with the ``digits`` formats): canvases
    of ``data.image_size`` pixels holding several digits of random size and position."""

    train_count: int = 3000          # rendered (synthetic) training canvases
    val_count: int = 500             # rendered validation canvases
    real_train_count: int = 1200     # real canvases (scans on photo crops) for training, labels used by target_oracle only
    real_test_count: int = 500       # real held-out test canvases (their own scans and photo regions)
    objects: tuple[int, int] = (1, 3)          # digits per canvas, [min, max]
    object_size: tuple[float, float] = (0.3, 0.55)  # digit height as a fraction of the canvas, [min, max]


@dataclass(frozen=True)
class DataParams:
    image_size: int
    channels: int
    classes: tuple[str, ...]
    source: DomainSource
    target: DomainSource
    skip_bad_images: bool = False
    polarity: str = "match"      # match: renders written inverted when their ink polarity is opposite the real images' | keep
    preload_mb: int = 2048       # training decodes a split into memory once when it fits; else it streams
    max_image_pixels: int = 40_000_000  # width x height above which an image is refused undecoded
    render: RenderParams = field(default_factory=RenderParams)
    scene: SceneParams = field(default_factory=SceneParams)


@dataclass(frozen=True)
class AugmentStep:
    name: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GeneratorParams:
    width: int = 16
    blocks: int = 3
    downsamplings: int = 2


@dataclass(frozen=True)
class DiscriminatorParams:
    width: int = 16
    layers: int = 2


@dataclass(frozen=True)
class LossWeights:
    adversarial: float = 1.0
    cycle: float = 10.0
    identity: float = 5.0
    similarity: float = 1.0
    task: float = 1.0
    lipschitz: float = 10.0
    constancy: float = 0.0       # DTN f-constancy on the frozen task model's features
    perceptual: float = 0.0      # feature reconstruction on the frozen task model's maps
    distance: float = 0.0        # DistanceGAN: pairwise distances kept
    self_distance: float = 0.0   # DistanceGAN: left/right half distance kept


@dataclass(frozen=True)
class GanParams:
    generator: GeneratorParams = field(default_factory=GeneratorParams)
    discriminator: DiscriminatorParams = field(default_factory=DiscriminatorParams)
    mode: Literal["lsgan", "vanilla"] = "lsgan"
    structure: Literal["cycle", "one_sided"] = "cycle"
    pool_size: int = 50
    batch_size: int = 16
    epochs: int = 5
    decay_epochs: int = 3
    steps_per_epoch: int = 150
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weights: LossWeights = field(default_factory=LossWeights)
    lipschitz_interpolation: Literal["real_fake", "source_translated"] = "real_fake"
    diagnostics_samples: int = 500
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    channels_last: bool = False
    amp: Literal["none", "bf16", "fp16"] = "none"


@dataclass(frozen=True)
class TranslateParams:
    batch_size: int = 256


@dataclass(frozen=True)
class OptimizerParams:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9


@dataclass(frozen=True)
class DetectorParams:
    """The detector of ``task.kind: detection`` (torchvision, ``weights=None``, a small backbone)."""

    architecture: Literal["fcos", "retinanet"] = "fcos"
    width: int = 16                  # backbone base width (channels double at each of its stages)
    score_threshold: float = 0.05    # detections below this score are dropped before NMS
    nms_threshold: float = 0.5
    detections_per_image: int = 20


@dataclass(frozen=True)
class TaskParams:
    kind: Literal["classification", "detection"] = "classification"
    model: str = "small_cnn"
    width: int = 32
    steps: int = 1500         # optimiser steps: the budget does not depend on the size of the training set
    eval_every: int = 250     # steps between a source-val evaluation, a history row and a checkpoint
    batch_size: int = 64
    optimizer: OptimizerParams = field(default_factory=OptimizerParams)
    schedule: Literal["cosine", "constant"] = "cosine"
    select: Literal["source_val", "last"] = "last"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    detector: DetectorParams = field(default_factory=DetectorParams)


@dataclass(frozen=True)
class VariantParams:
    method: str                  # a registered method (pipeline/methods): supervised, dann, self_training, ...
    train: str                   # the labelled training folder
    val: Optional[str] = None    # labelled images of the same domain as train, for the source-val score and
                                 # selection (None: data/prepared/source/val; a translated variant: the translated val)
    augment: str = "default"     # the name of an `augment` pipeline for the labelled images
    params: dict = field(default_factory=dict)   # the method's own, validated by its Params dataclass
    steps: Optional[int] = None  # this variant's budget in optimiser steps (None: task.steps)
    target_bn: bool = False      # re-estimate BatchNorm statistics on the unlabelled real images before export (AdaBN)
    target_head: bool = False    # then make the classifier the class prototypes of the real images (classification; skipped for detection)
    labelled_batch: int = 0      # labelled real images (data/prepared/target/labelled) in every step; 0: none


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    augment: dict[str, tuple[AugmentStep, ...]] = field(default_factory=dict)   # named pipelines
    gan: GanParams = field(default_factory=GanParams)
    translate: TranslateParams = field(default_factory=TranslateParams)
    task: TaskParams = field(default_factory=TaskParams)
    variants: dict[str, VariantParams] = field(default_factory=dict)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def variant(self, name: str) -> VariantParams:
        if name not in self.variants:
            raise ConfigError(f"variants.{name}: no such variant; params.yaml defines {sorted(self.variants)}")
        return self.variants[name]

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named top-level sections (all when none): identifies what produced an output."""
        chosen = {k: self.raw.get(k) for k in (sections or sorted(self.raw))}
        blob = json.dumps(chosen, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Value checks: (dotted key, predicate, what was expected)
# --------------------------------------------------------------------------------------------

_FORMATS_SOURCE = ("digits", "imagefolder", "manifest", "coco")
_FORMATS_TARGET = ("digits", "imagefolder", "manifest", "folder", "coco")
_FORMATS_OF_KIND = {"classification": ("digits", "imagefolder", "manifest", "folder"),
                    "detection": ("digits", "coco", "folder")}


def _validate(p: Params) -> None:
    d = p.data
    checks: list[tuple[str, bool, str]] = [
        ("seed", p.seed >= 0, "a non-negative integer"),
        ("data.image_size", 8 <= d.image_size <= 4096, "an integer between 8 and 4096"),
        ("data.channels", d.channels in (1, 3), "1 (grey) or 3 (RGB)"),
        ("data.polarity", d.polarity in ("match", "keep"), "match or keep"),
        ("data.preload_mb", d.preload_mb >= 0, "a non-negative number of MiB (0: always stream from disk)"),
        ("data.classes", len(d.classes) >= 2, "a list of at least two class names"),
        ("data.classes", len(set(d.classes)) == len(d.classes), "class names without duplicates"),
        ("data.source.format", d.source.format in _FORMATS_SOURCE, f"one of {_FORMATS_SOURCE}"),
        ("data.target.format", d.target.format in _FORMATS_TARGET, f"one of {_FORMATS_TARGET}"),
        ("data.source.val_fraction", 0.0 < d.source.val_fraction < 1.0, "a fraction in (0, 1)"),
        ("data.target.test_fraction", 0.0 < d.target.test_fraction < 1.0, "a fraction in (0, 1)"),
        ("data.target.labelled_per_class", d.target.labelled_per_class >= 0,
         "a non-negative number of real images per class (0: none)"),
        ("data.target.pick_fraction", 0.0 <= d.target.pick_fraction < 1.0, "a fraction in [0, 1)"),
        ("data.max_image_pixels", d.max_image_pixels > 0, "a positive integer (pixels, width x height)"),
        ("data.render.train_count", d.render.train_count > 0, "a positive integer"),
        ("data.render.val_count", d.render.val_count > 0, "a positive integer"),
        ("data.render.canvas", d.render.canvas >= 16, "an integer >= 16"),
        ("data.render.scale", 0 < d.render.scale[0] <= d.render.scale[1] <= 1.5, "[min, max] with 0 < min <= max <= 1.5"),
        ("data.render.thickness", 1 <= d.render.thickness[0] <= d.render.thickness[1], "[min, max] with 1 <= min <= max"),
        ("data.render.blur_sigma", 0 <= d.render.blur_sigma[0] <= d.render.blur_sigma[1], "[min, max] with 0 <= min <= max"),
        ("data.render.noise_std", 0 <= d.render.noise_std[0] <= d.render.noise_std[1], "[min, max] with 0 <= min <= max"),
        ("data.render.foreground", 0 <= d.render.foreground[0] <= d.render.foreground[1] <= 255, "[min, max] grey levels within 0..255"),
        ("data.render.background", 0 <= d.render.background[0] <= d.render.background[1] <= 255, "[min, max] grey levels within 0..255"),
        ("gan.generator.width", p.gan.generator.width > 0, "a positive integer"),
        ("gan.generator.blocks", p.gan.generator.blocks >= 0, "a non-negative integer"),
        ("gan.generator.downsamplings", p.gan.generator.downsamplings >= 0, "a non-negative integer"),
        ("gan.discriminator.width", p.gan.discriminator.width > 0, "a positive integer"),
        ("gan.discriminator.layers", p.gan.discriminator.layers >= 1, "an integer >= 1"),
        ("gan.pool_size", p.gan.pool_size >= 0, "a non-negative integer"),
        ("gan.batch_size", p.gan.batch_size > 0, "a positive integer"),
        ("gan.epochs", p.gan.epochs >= 0, "a non-negative integer"),
        ("gan.decay_epochs", p.gan.decay_epochs >= 0, "a non-negative integer"),
        ("gan.epochs", p.gan.epochs + p.gan.decay_epochs > 0, "epochs + decay_epochs > 0"),
        ("gan.steps_per_epoch", p.gan.steps_per_epoch > 0, "a positive integer"),
        ("gan.lr", p.gan.lr > 0, "a positive number"),
        ("gan.betas", all(0 <= b < 1 for b in p.gan.betas), "two numbers in [0, 1)"),
        ("gan.diagnostics_samples", p.gan.diagnostics_samples > 0, "a positive integer"),
        ("translate.batch_size", p.translate.batch_size > 0, "a positive integer"),
        ("task.width", p.task.width > 0, "a positive integer"),
        ("task.steps", p.task.steps > 0, "a positive integer"),
        ("task.eval_every", p.task.eval_every > 0, "a positive integer"),
        ("task.batch_size", p.task.batch_size > 0, "a positive integer"),
        ("task.optimizer.lr", p.task.optimizer.lr > 0, "a positive number"),
        ("task.optimizer.weight_decay", p.task.optimizer.weight_decay >= 0, "a non-negative number"),
        ("task.detector.width", p.task.detector.width > 0, "a positive integer"),
        ("task.detector.score_threshold", 0 <= p.task.detector.score_threshold < 1, "a number in [0, 1)"),
        ("task.detector.nms_threshold", 0 < p.task.detector.nms_threshold <= 1, "a number in (0, 1]"),
        ("task.detector.detections_per_image", p.task.detector.detections_per_image > 0, "a positive integer"),
        ("data.scene.train_count", d.scene.train_count > 0, "a positive integer"),
        ("data.scene.val_count", d.scene.val_count > 0, "a positive integer"),
        ("data.scene.real_train_count", d.scene.real_train_count > 0, "a positive integer"),
        ("data.scene.real_test_count", d.scene.real_test_count > 0, "a positive integer"),
        ("data.scene.objects", 1 <= d.scene.objects[0] <= d.scene.objects[1], "[min, max] with 1 <= min <= max"),
        ("data.scene.object_size", 0 < d.scene.object_size[0] <= d.scene.object_size[1] <= 1,
         "[min, max] fractions of the canvas with 0 < min <= max <= 1"),
    ]
    for name, value in dataclasses.asdict(p.gan.weights).items():
        checks.append((f"gan.weights.{name}", value >= 0, "a non-negative number (0 turns the term off)"))
    checks.append(("gan.weights.cycle", p.gan.structure == "cycle" or p.gan.weights.cycle == 0,
                   "0 with gan.structure: one_sided (it trains no F, so there is no cycle)"))
    checks.append(("gan.batch_size", not (p.gan.weights.distance or p.gan.weights.self_distance)
                   or p.gan.batch_size >= 3, "at least 3 with gan.weights.distance or self_distance "
                   "(distances are standardised over the batch)"))
    for name, prob in (("italic_prob", d.render.italic_prob), ("blur_prob", d.render.blur_prob),
                       ("noise_prob", d.render.noise_prob), ("clutter_prob", d.render.clutter_prob)):
        checks.append((f"data.render.{name}", 0.0 <= prob <= 1.0, "a probability in [0, 1]"))
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key}: expected {expected}, got {_lookup(p.raw, key)!r}")

    for side, src in (("source", d.source), ("target", d.target)):
        if src.format not in _FORMATS_OF_KIND[p.task.kind]:
            raise ConfigError(f"data.{side}.format: {src.format!r} does not hold what task.kind {p.task.kind!r} "
                              f"needs; expected one of {_FORMATS_OF_KIND[p.task.kind]}")
        if src.format == "coco" and src.root and not Path(src.root).is_file():
            raise ConfigError(f"data.{side}.root: expected a COCO JSON file for format 'coco', got {src.root!r}")
        if src.format != "digits":
            if not src.root:
                raise ConfigError(f"data.{side}.root: expected a path for format {src.format!r}, got nothing")
            if not Path(src.root).exists():
                raise ConfigError(f"data.{side}.root: {src.root!r} does not exist")
        if src.test_root and not Path(src.test_root).exists():
            raise ConfigError(f"data.{side}.test_root: {src.test_root!r} does not exist")
    _validate_labelled_target(p)
    if d.target.format == "folder" and not d.target.test_root:
        raise ConfigError("data.target.test_root: a flat unlabelled target folder needs a labelled test set "
                          "(an imagefolder folder or a manifest CSV; a COCO JSON file for detection)")
    if (d.source.format == "digits") != (d.target.format == "digits"):
        raise ConfigError("data.source.format / data.target.format: the built-in 'digits' scenario needs both "
                          "sides set to 'digits'")
    if d.source.format == "digits" and list(d.classes) != [str(i) for i in range(10)]:
        raise ConfigError(f"data.classes: the digits scenario expects ['0', ..., '9'], got {list(d.classes)}")
    if not p.variants:
        raise ConfigError("variants: expected at least one variant")
    if "source_only" not in p.variants:
        raise ConfigError("variants.source_only: expected this variant; it is the frozen task model of the GAN")
    for name, v in p.variants.items():
        if not name.replace("_", "").isalnum():
            raise ConfigError(f"variants.{name}: expected a name of letters, digits and underscores")
        _validate_method(p, name, v)
        if v.labelled_batch < 0:
            raise ConfigError(f"variants.{name}.labelled_batch: expected a non-negative integer, got {v.labelled_batch!r}")
        if v.labelled_batch and not has_labelled_target(d):
            raise ConfigError(f"variants.{name}.labelled_batch: {v.labelled_batch} labelled real images per step, but "
                              "there are none: set data.target.labelled_per_class (drawn from a labelled target) or "
                              "data.target.labelled_root (a small labelled folder or manifest), or set it to 0")
        if v.steps is not None and v.steps <= 0:
            raise ConfigError(f"variants.{name}.steps: expected a positive integer, got {v.steps!r}")
        if d.target.format == "folder" and trains_on_target(v):
            raise ConfigError(unlabelled_target_refusal(name, v, "data.target.format is 'folder'",
                                                        "give labelled real training images "
                                                        "(data.target.format: imagefolder or manifest)"))


PREPARED_TARGET = Path("data/prepared/target")


def has_labelled_target(data: DataParams) -> bool:
    """Whether prepare writes labelled real images besides the test split (``target/labelled``)."""
    return data.target.labelled_per_class > 0 or bool(data.target.labelled_root)


def _validate_labelled_target(p: Params) -> None:
    """A few labelled real images: from one place, for classification, and never on the source side."""
    d = p.data
    for key in ("labelled_per_class", "labelled_root"):
        if getattr(d.source, key):
            raise ConfigError(f"data.source.{key}: labelled real images belong to data.target, not data.source")
    if not has_labelled_target(d):
        return
    if d.target.labelled_per_class and d.target.labelled_root:
        raise ConfigError("data.target.labelled_per_class / data.target.labelled_root: give the labelled real images "
                          "one way, drawn from a labelled target (labelled_per_class) or as their own folder "
                          "(labelled_root), not both")
    if p.task.kind != "classification":
        raise ConfigError(f"data.target.labelled_per_class / labelled_root: labelled real images are for task.kind "
                          f"classification, not {p.task.kind!r}")
    if d.target.labelled_per_class and d.target.format == "folder":
        raise ConfigError("data.target.labelled_per_class: a flat target folder has no labels to draw from; give "
                          "data.target.labelled_root (a few labelled real images) instead")
    if d.target.labelled_root and not Path(d.target.labelled_root).exists():
        raise ConfigError(f"data.target.labelled_root: {d.target.labelled_root!r} does not exist")


def _validate_method(p: Params, name: str, v: VariantParams) -> None:
    """The method exists, its params fit its dataclass and every augment pipeline it names exists."""
    from pipeline import methods

    params = methods.parse_params(v.method, v.params, f"variants.{name}.params")
    kinds = methods.get(v.method).kinds
    if p.task.kind not in kinds:
        raise ConfigError(f"variants.{name}.method: {v.method!r} works for task.kind {' or '.join(kinds)}, not "
                          f"{p.task.kind!r}; remove variants.{name} or choose another method")
    if v.labelled_batch and not methods.get(v.method).reads_labelled_real:
        readers = [m for m in methods.available() if methods.get(m).reads_labelled_real]
        raise ConfigError(f"variants.{name}.labelled_batch: method {v.method!r} does not train on labelled real "
                          f"images; expected 0, or a method that does ({', '.join(readers)})")
    pipelines = sorted(p.augment)
    if v.augment not in p.augment:
        raise ConfigError(f"variants.{name}.augment: {v.augment!r} is not a pipeline of 'augment'; "
                          f"expected one of {pipelines}")
    views = methods.get(v.method).target_views_of(params)
    for view, pipeline in views.items():
        if pipeline is not None and pipeline not in p.augment:
            raise ConfigError(f"variants.{name}.params: the {view!r} view uses augment pipeline {pipeline!r}, "
                              f"which 'augment' does not define (expected one of {pipelines})")


def unlabelled_target_refusal(name: str, variant: VariantParams, why: str, fix: str) -> str:
    """The one-line refusal of a variant that trains on real training images that have no labels (``why``)."""
    return (f"variants.{name}.train: {variant.train!r} holds the real training images, which have no labels here "
            f"({why}), so this supervised variant cannot train; remove variants.{name} from params.yaml, or {fix}")


def trains_on_target(variant: VariantParams, prepared_target: str | Path = PREPARED_TARGET) -> bool:
    """True when the variant learns from the (labelled) real training images under ``data/prepared/target``."""
    return Path(variant.train).resolve().is_relative_to(Path(prepared_target).resolve())


def _lookup(raw: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return "<default>"
        raw = raw[part]
    return raw


# --------------------------------------------------------------------------------------------
# Generic dict -> dataclass conversion with key-naming errors
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null", dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str) -> Any:
    def bad() -> ConfigError:
        return ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise bad()
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise bad()
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def build_dataclass(cls: type, raw: dict, prefix: str) -> Any:
    """``raw`` as a ``cls`` dataclass; unknown keys, bad types and values refused by the class's own
    ``__post_init__`` (a :class:`ConfigError` naming the field) raise a ConfigError naming the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {raw!r}")
    return _build(cls, raw, prefix)


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "raw"}
    for k in raw:
        if k not in fields:
            where = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"{where}: unknown key; expected one of {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in raw:
            kwargs[name] = _convert(raw[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing; expected {_type_name(hints[name])}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a dataclass's own check names its field; add where it is
        raise ConfigError(f"{prefix}.{exc}" if prefix else str(exc)) from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Build and validate :class:`Params` from an already-loaded mapping."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    params = _build(Params, raw, "")
    params = dataclasses.replace(params, raw=raw)
    _validate(params)
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


def flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    """``{'gan': {'lr': 1}}`` -> ``{'gan.lr': 1}``; lists are kept as their string form."""
    out: dict[str, Any] = {}
    if isinstance(raw, dict):
        for k, v in raw.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = raw
    return out
