"""The params schema: ``params.yaml`` as frozen dataclasses, and what follows from them alone.

Built from a mapping by :func:`pipeline.config.load.parse_params` (the generic converter,
:mod:`pipeline.typed`) and checked by :mod:`pipeline.config.checks`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from pipeline.typed import ConfigError


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
    steps_per_epoch: int = 150   # x budget
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
class KindSchema:
    """What params.yaml may ask of a task kind (the kinds themselves: :mod:`pipeline.task.kinds`)."""

    formats: tuple[str, ...]    # data formats whose labels the kind reads (data.source/target.format)
    labelled_real: bool         # a few labelled real images (data.target.labelled_per_class / labelled_root)


KIND_SCHEMAS = {"classification": KindSchema(("digits", "imagefolder", "manifest", "folder"), labelled_real=True),
                "detection": KindSchema(("digits", "coco", "folder"), labelled_real=False)}


@dataclass(frozen=True)
class TaskParams:
    kind: Literal["classification", "detection"] = "classification"   # a key of KIND_SCHEMAS
    model: str = "small_cnn"
    width: int = 32
    steps: int = 1500         # optimiser steps (x budget), whatever the size of the training set
    eval_every: int = 250     # steps (x budget) between a source-val evaluation, a history row and a checkpoint
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
    steps: Optional[int] = None  # this variant's optimiser steps (None: task.steps), x budget
    target_bn: bool = False      # re-estimate BatchNorm statistics on the unlabelled real images before export (AdaBN)
    target_head: bool = False    # then make the classifier the class prototypes of the real images (classification; skipped for detection)
    labelled_batch: int = 0      # labelled real images (data/prepared/target/labelled) in every step; 0: none


def scale_steps(count: int, budget: float) -> int:
    """``count`` x ``budget`` rounded to a whole number (halves up), at least 1; ``budget`` 1 gives ``count``."""
    return max(1, math.floor(count * budget + 0.5))


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataParams
    budget: float = 1.0          # multiplies every step count (see effective()); never a network's size
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
        """Short hash of the named top-level sections (all when none): identifies what produced an output.

        ``budget`` is hashed only when it is not 1, so a budget of 1 (written or left out) keeps the
        hashes, and the checkpoints, of the runs made before the knob existed.
        """
        chosen = {k: self.raw.get(k) for k in (sections or sorted(self.raw))}
        if chosen.get("budget") in (None, 1):    # absent (None) or 1
            chosen.pop("budget", None)
        blob = json.dumps(chosen, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # -- budget: the one place where it is applied ------------------------------------------------

    def effective(self) -> "Params":
        """These params with ``budget`` applied: the step counts a run uses. Every count is multiplied
        by ``budget`` (:func:`scale_steps`: rounded, at least 1); nothing else changes (network widths,
        batch sizes, image size and learning rates keep their own settings):

        * each variant's ``steps`` (when it has its own) and ``task.steps`` (the others' budget), so
          every variant's effective steps scale;
        * ``task.eval_every``, so a run keeps its number of rounds (source-val scores, history rows,
          checkpoints) and its evaluation cost stays the same share of the run;
        * ``gan.steps_per_epoch``, not ``gan.epochs`` / ``gan.decay_epochs``: the learning rate is
          constant for ``epochs x steps_per_epoch`` iterations, then decays linearly to 0 over
          ``decay_epochs x steps_per_epoch``, so scaling the epoch's length scales both phases by the
          same factor and keeps the schedule's shape exactly (rounding two epoch counts separately would
          change their ratio, and would turn an ``epochs: 0`` into 1); and the diagnostics, sample grids,
          history rows and checkpoints, written once per epoch, keep their number (6 by default) and
          their cost instead of growing with the budget.

        Budget 1 returns these params unchanged. The result has ``budget`` 1 (its counts hold it), so
        applying it twice changes nothing; ``raw``, and so every fingerprint, stays as written.
        """
        if self.budget == 1:
            return self
        b = self.budget
        task = dataclasses.replace(self.task, steps=scale_steps(self.task.steps, b),
                                   eval_every=scale_steps(self.task.eval_every, b))
        variants = {name: v if v.steps is None else dataclasses.replace(v, steps=scale_steps(v.steps, b))
                    for name, v in self.variants.items()}
        gan = dataclasses.replace(self.gan, steps_per_epoch=scale_steps(self.gan.steps_per_epoch, b))
        return dataclasses.replace(self, budget=1.0, task=task, variants=variants, gan=gan)

    def effective_task(self, variant: str) -> dict[str, float | int]:
        """What the budget gives train_task@``variant``: ``{budget, steps, eval_every, rounds}`` (its own
        ``steps``, else ``task.steps``, and ``task.eval_every``, both scaled by :meth:`effective`)."""
        run = self.effective()
        steps, eval_every = run.variant(variant).steps or run.task.steps, run.task.eval_every
        return {"budget": self.budget, "steps": steps, "eval_every": eval_every,
                "rounds": math.ceil(steps / eval_every)}

    def effective_gan(self) -> dict[str, Any]:
        """What the budget gives train_gan: ``{budget, gan: {steps_per_epoch, epochs, decay_epochs,
        iterations}}`` (see :meth:`effective`)."""
        gan = self.effective().gan
        return {"budget": self.budget,
                "gan": {"steps_per_epoch": gan.steps_per_epoch, "epochs": gan.epochs, "decay_epochs": gan.decay_epochs,
                        "iterations": (gan.epochs + gan.decay_epochs) * gan.steps_per_epoch}}


PREPARED_TARGET = Path("data/prepared/target")


def has_labelled_target(data: DataParams) -> bool:
    """Whether prepare writes labelled real images besides the test split (``target/labelled``)."""
    return data.target.labelled_per_class > 0 or bool(data.target.labelled_root)


def trains_on_target(variant: VariantParams, prepared_target: str | Path = PREPARED_TARGET) -> bool:
    """True when the variant learns from the (labelled) real training images under ``data/prepared/target``."""
    return Path(variant.train).resolve().is_relative_to(Path(prepared_target).resolve())
