"""The checks of :class:`~pipeline.config.schema.Params` beyond types: ranges, paths that must exist,
combinations that cannot work, and each variant against its method (:func:`pipeline.methods.check_variant`).
Every error is a one-line :class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from pipeline import methods
from pipeline.config.schema import KIND_SCHEMAS, Params, VariantParams, has_labelled_target, trains_on_target
from pipeline.typed import ConfigError, lookup

_FORMATS_SOURCE = ("digits", "imagefolder", "manifest", "coco")
_FORMATS_TARGET = ("digits", "imagefolder", "manifest", "folder", "coco")


def validate(p: Params) -> None:
    """Refuse values the types allow but the pipeline does not: every error names the dotted key."""
    d = p.data
    checks: list[tuple[str, bool, str]] = [
        ("seed", p.seed >= 0, "a non-negative integer"),
        ("budget", 0 < p.budget < math.inf, "a positive number (the multiplier of every step count; 1: as written)"),
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
            raise ConfigError(f"{key}: expected {expected}, got {lookup(p.raw, key)!r}")

    for side, src in (("source", d.source), ("target", d.target)):
        formats = KIND_SCHEMAS[p.task.kind].formats
        if src.format not in formats:
            raise ConfigError(f"data.{side}.format: {src.format!r} does not hold what task.kind {p.task.kind!r} "
                              f"needs; expected one of {formats}")
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
        methods.check_variant(name, v, p.task.kind, p.augment)
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
    if not KIND_SCHEMAS[p.task.kind].labelled_real:
        readers = " or ".join(name for name, kind in KIND_SCHEMAS.items() if kind.labelled_real)
        raise ConfigError(f"data.target.labelled_per_class / labelled_root: labelled real images are for task.kind "
                          f"{readers}, not {p.task.kind!r}")
    if d.target.labelled_per_class and d.target.format == "folder":
        raise ConfigError("data.target.labelled_per_class: a flat target folder has no labels to draw from; give "
                          "data.target.labelled_root (a few labelled real images) instead")
    if d.target.labelled_root and not Path(d.target.labelled_root).exists():
        raise ConfigError(f"data.target.labelled_root: {d.target.labelled_root!r} does not exist")


def unlabelled_target_refusal(name: str, variant: VariantParams, why: str, fix: str) -> str:
    """The one-line refusal of a variant that trains on real training images that have no labels (``why``)."""
    return (f"variants.{name}.train: {variant.train!r} holds the real training images, which have no labels here "
            f"({why}), so this supervised variant cannot train; remove variants.{name} from params.yaml, or {fix}")
