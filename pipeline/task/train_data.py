"""What one variant trains on: its data sets, views and samplers, and its method.

:func:`load_data` opens the variant's labelled set (augmented by its pipeline, plus the other views
of it the method asks for), its validation set, the method's views of the unlabelled real images, the
few labelled real images and the labelled pick images; :func:`make_samplers` draws their batches
(seeded by ``(seed, round)``, sharded over torchrun ranks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn
from torch.utils.data import Dataset

from pipeline import methods
from pipeline.config import ConfigError, Params
from pipeline.data.manifest import Views, manifest_rows, preload_within
from pipeline.data.sampling import DomainSampler, subsample
from pipeline.distributed import Runtime, wrap
from pipeline.methods.base import Method, MethodContext
from pipeline.task.kinds import task_kind
from pipeline.task.variant import TARGET_LABELLED, TARGET_PICK, TARGET_TRAIN, Variant

REAL_SAMPLE = 2048        # real images that clustering, AdaBN and the prototype head read (a fixed, seeded sample
                          # beyond this), so their cost does not grow with the real set




@dataclass
class TrainData:
    labelled: Dataset                  # the variant's labelled set, augmented by its pipeline (and, when the
                                       # method asks for other views of it, a Views of them, that one first)
    val: Dataset                       # labelled images of the training domain (val_folder), not augmented
    target: Optional[Views]            # the method's views of the unlabelled real images, or None
    augments: list                     # every pipeline in use (reseeded each round)
    real_sample: Optional[Dataset] = None   # at most REAL_SAMPLE of the real images, unaugmented (None: no views)
    labelled_real: Optional[Dataset] = None   # the few labelled real images, augmented as ``labelled`` (labelled_batch > 0)
    labelled_real_plain: Optional[Dataset] = None   # the same, unaugmented (methods anchor on them)
    pick: Optional[Dataset] = None     # labelled real images kept for the report's choice (target/pick), unaugmented
    labelled_batch: int = 0            # labelled real images per step (the variant's labelled_batch)

    @property
    def folders(self) -> list[Path]:
        return [s.folder for s in (self.labelled, self.val, self.target.images if self.target else None,
                                   self.labelled_real, self.pick) if s is not None]


def build_method(params: Params, variant: Variant, model: nn.Module, rt: Runtime) -> Method:
    """The variant's method, its params parsed, on the kind's network features."""
    v, kind = variant.entry, task_kind(params)
    ctx = MethodContext(num_classes=len(params.data.classes), feature_dim=kind.feature_dim(model), device=rt.device,
                        wrap=lambda module: wrap(module, rt), kind=kind)
    return methods.get(v.method, f"variants.{variant.name}.method")(
        methods.parse_params(v.method, v.params, f"variants.{variant.name}.params"), ctx)


def load_data(params: Params, variant: Variant, method: Method) -> TrainData:
    """The variant's labelled set (with the other views of it the method asks for), its validation
    set (:attr:`Variant.val`) and the method's views of the real images, each decoded into memory once
    when it fits ``data.preload_mb``."""
    d, v, kind = params.data, variant.entry, task_kind(params)
    pipelines: dict[str, Any] = {}

    def pipeline(name: Optional[str]):
        name = name or v.augment
        if name not in pipelines:
            pipelines[name] = kind.build_augment(params.augment[name], params.seed, key=f"augment.{name}")
        return pipelines[name]

    if method.source_views():
        labelled = Views(kind.dataset(v.train, params), {
            "train": pipeline(None), **{view: pipeline(name) for view, name in method.source_views().items()}},
            labelled=True)
    else:
        labelled = kind.dataset(v.train, params, transform=pipeline(None))
    val = kind.dataset(variant.val, params)
    target, views = None, {}
    if method.target_views():
        real = kind.dataset(variant.split(TARGET_TRAIN), params, labels=False)
        for view, name in method.target_views().items():
            name = name or v.augment
            views[view] = kind.view_transform(pipeline(name), params.augment[name], params.seed, f"augment.{name}")
        target = Views(real, views)
    few = plain = None
    if v.labelled_batch:
        few = kind.dataset(variant.split(TARGET_LABELLED), params, transform=pipeline(None))
        plain = kind.dataset(variant.split(TARGET_LABELLED), params)
    pick = variant.split(TARGET_PICK)
    pick = kind.dataset(pick, params) if manifest_rows(pick) else None
    preload_within((getattr(labelled, "images", labelled), val, target.images if target else None, few, plain, pick),
                   d.preload_mb * 2**20)
    in_use = {id(a): a for a in [*pipelines.values(), *views.values()] if a is not None}
    sample = subsample(target.images, REAL_SAMPLE, params.seed) if target is not None else None
    return TrainData(labelled, val, target, list(in_use.values()), sample, few, plain, pick, v.labelled_batch)


@dataclass
class Samplers:
    labelled: DomainSampler
    target: Optional[DomainSampler]
    labelled_real: Optional[DomainSampler] = None


def make_samplers(params: Params, data: TrainData, method: Method, rt: Runtime) -> Samplers:
    task = params.task
    if task.batch_size % rt.world_size:
        raise ConfigError(f"task.batch_size: {task.batch_size} is not divisible by the {rt.world_size} torchrun processes")
    collate = task_kind(params).collate
    labelled = DomainSampler(data.labelled, "labelled", task.batch_size, task.eval_every, params.seed,
                             rt.rank, rt.world_size, collate)
    target = None
    if data.target is not None:
        size = method.target_batch_size(task.batch_size)
        size += (-size) % rt.world_size
        target = DomainSampler(data.target, "target", size, task.eval_every, params.seed, rt.rank, rt.world_size)
    few = None
    if data.labelled_real is not None:
        size = data.labelled_batch + (-data.labelled_batch) % rt.world_size
        few = DomainSampler(data.labelled_real, "labelled_real", size, task.eval_every, params.seed, rt.rank,
                            rt.world_size, collate)
    return Samplers(labelled, target, few)


def real_images(data: TrainData, params: Params, variant: Variant) -> Dataset:
    """At most :data:`REAL_SAMPLE` unlabelled real training images (a fixed, seeded sample), unaugmented
    (already in memory when the method used them): AdaBN, the prototype head and the label-free scores
    (what the report picks a variant by) read them."""
    if data.real_sample is not None:
        return data.real_sample
    real = task_kind(params).dataset(variant.split(TARGET_TRAIN), params, labels=False)
    return subsample(real, REAL_SAMPLE, params.seed)
