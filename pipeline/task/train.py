"""The one downstream training loop: a task model of any kind trained by any registered method.

A variant is ``{method, train, augment, params}``. Each optimiser step draws a labelled batch from
``train`` (augmented by the variant's ``augment`` pipeline) and, when the method asks for them, the
views of an unlabelled batch of real images (``data/prepared/target/train``); the method
(:mod:`pipeline.methods`) turns them into a loss. The loop names no method and no task kind
(classification or detection: :mod:`pipeline.task.kinds` says what a label, a loss and a score are): data order, learning
rate, checkpoints, DDP, non-finite guard, model selection, label-free scores and reports are shared.

Budgets are in optimiser steps (``task.steps``, or a variant's own ``steps``), not epochs, so a small training set (a few
hundred real images for the oracle) gets as many updates as a large one. Every ``task.eval_every``
steps (a "round") the loop evaluates the kind's score (accuracy, mAP@.5) on the labelled synthetic
``source/val``, writes a history row and a full-state checkpoint. With progress ``p = step / steps`` in [0, 1):

    learning rate   the method's own rule if it has one (DANN's annealing), else
                    cosine:   lr_p = lr0 * (1 + cos(pi p)) / 2      constant: lr_p = lr0

Model selection never looks at real labels: ``task.select: source_val`` keeps the round with the
best source-val accuracy; ``last`` keeps the last one, except that a run whose source-val accuracy
collapses (ends below :data:`COLLAPSE_RATIO` of its best) exports its best round instead and says
so (the guard that catches an adversarial method destroying what it learned from the source).

A variant with ``target_bn: true`` has the exported model's BatchNorm statistics re-estimated on the
unlabelled real training images (AdaBN, :mod:`pipeline.task.batchnorm`) after selection; with
``target_head: true`` its classifier then becomes the class prototypes of those images
(:mod:`pipeline.task.prototypes`). The label-free scores are measured on the model as exported.

Data order and augmentations come from generators seeded by ``(seed, round, ...)``, and a
checkpoint holds every network, the optimiser, the method's state and the RNG states, so a resumed
run continues exactly as the uninterrupted run would have. The identity of a run (its checkpoint
fingerprint) covers the params, the project's code and the data.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from pipeline import methods
from pipeline.checkpoint import Checkpointer
from pipeline.config import ConfigError, Params
from pipeline.data.manifest import Views, label_origin, manifest_rows, preload_within
from pipeline.data.sampling import DomainSampler, subsample
from pipeline.distributed import Runtime, barrier, sync_buffers, unwrap, wrap
from pipeline.guards import check_finite
from pipeline.io import write_json, write_table
from pipeline.methods.base import Method, MethodContext, StepBatch
from pipeline.reproducibility import code_digest, content_digest, derive_seed, seed_everything
from pipeline.task.batchnorm import adapt_batchnorm
from pipeline.task.export import save_task_model
from pipeline.task.kinds import task_kind
from pipeline.task.models import classifier_layer
from pipeline.task.prototypes import fit_prototype_head

logger = logging.getLogger(__name__)

PREPARED = Path("data/prepared")
SOURCE_VAL = "source/val"
TARGET_TRAIN = "target/train"
TARGET_LABELLED = "target/labelled"   # a few labelled real images a variant may train on (labelled_batch > 0)
TARGET_PICK = "target/pick"           # labelled real images no variant trains on: the report chooses with them
FINGERPRINT_SECTIONS = ("seed", "data", "augment", "task")
COLLAPSE_RATIO = 0.5      # a final source-val accuracy below half the best means the run destroyed what it learned
REAL_SAMPLE = 2048        # real images that clustering, AdaBN and the prototype head read (a fixed, seeded sample
                          # beyond this), so their cost does not grow with the real set

# Streams of derive_seed(seed, round, STREAM, ...): one generator per purpose.
_AUGMENT = 3


# ------------------------------------------------------------------------------------------------
# Identity of a run
# ------------------------------------------------------------------------------------------------


def params_hash(params: Params, variant: str) -> str:
    """Hash of the params sections that shape training plus the variant's own entry."""
    entry = dataclasses.asdict(params.variant(variant))
    blob = json.dumps({"params": params.fingerprint(*FINGERPRINT_SECTIONS), "variant": variant, "entry": entry},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_fingerprint(params: Params, variant: str, data_folders: Iterable[str | Path]) -> str:
    """Identity of a training run for its checkpoint: params, the project's code and data contents.

    When any of them changes DVC reruns the stage, and the persisted checkpoint (made from the old
    inputs) must then not be resumed.
    """
    parts = [params_hash(params, variant), code_digest(), content_digest(data_folders)]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def uses_target_labels(params: Params, variant: str, prepared: str | Path = PREPARED) -> Optional[bool]:
    """Whether the variant learns from, or is selected on, labels of real images: True when it reads the
    few labelled real images (``labelled_batch > 0``) or its train or val folder is marked ``real``
    (:data:`~pipeline.data.manifest.LABEL_ORIGIN_FILE`, which prepare writes into every split and
    translate and copies carry along, so a copy or a translation of labelled real images still counts,
    wherever it lies); None when a folder has no mark (unknown: the report never picks such a variant);
    else False."""
    if params.variant(variant).labelled_batch:
        return True
    origins = _label_origins(params, variant, prepared)
    if "real" in origins:
        return True
    return None if None in origins else False


def few_target_labels(params: Params, variant: str, prepared: str | Path = PREPARED) -> bool:
    """True when the only real labels the variant reads are the few of ``target/labelled``: it may be
    chosen (with labels to choose by), unlike the oracle, which needs every real training label."""
    return bool(params.variant(variant).labelled_batch) and "real" not in _label_origins(params, variant, prepared)


def _label_origins(params: Params, variant: str, prepared: str | Path) -> list[Optional[str]]:
    """The ``LABEL_ORIGIN`` marks of the variant's train and val folders."""
    return [label_origin(folder) for folder in (params.variant(variant).train, val_folder(params, variant, prepared))]


# ------------------------------------------------------------------------------------------------
# Schedules and optimiser
# ------------------------------------------------------------------------------------------------


def variant_steps(params: Params, variant: str) -> int:
    """The variant's budget in optimiser steps: its own ``steps``, else ``task.steps``."""
    return params.variant(variant).steps or params.task.steps


def task_learning_rate(params: Params, p: float) -> float:
    """``lr_p`` of ``task.schedule`` at progress ``p`` (formulas in the module docstring)."""
    lr0 = params.task.optimizer.lr
    if params.task.schedule == "cosine":
        return lr0 * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr0


def build_optimizer(parameters, params: Params) -> torch.optim.Optimizer:
    opt = params.task.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(parameters, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    return cls(parameters, lr=opt.lr, weight_decay=opt.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


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


def build_method(params: Params, variant: str, model: nn.Module, rt: Runtime) -> Method:
    v, kind = params.variant(variant), task_kind(params)
    ctx = MethodContext(num_classes=len(params.data.classes), feature_dim=kind.feature_dim(model), device=rt.device,
                        wrap=lambda module: wrap(module, rt), kind=kind)
    return methods.get(v.method, f"variants.{variant}.method")(
        methods.parse_params(v.method, v.params, f"variants.{variant}.params"), ctx)


def val_folder(params: Params, variant: str, prepared: str | Path = PREPARED) -> Path:
    """Where the variant's source-val score is measured: its own ``val`` (labelled images of the domain
    it trains on, e.g. the translated validation renders), else ``<prepared>/source/val``."""
    v = params.variant(variant)
    return Path(v.val) if v.val else Path(prepared) / SOURCE_VAL


def load_data(params: Params, variant: str, method: Method, prepared: str | Path = PREPARED) -> TrainData:
    """The variant's labelled set (with the other views of it the method asks for), its validation
    set (:func:`val_folder`) and the method's views of the real images, each decoded into memory once
    when it fits ``data.preload_mb``."""
    d, v, kind = params.data, params.variant(variant), task_kind(params)
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
    val = kind.dataset(val_folder(params, variant, prepared), params)
    target, views = None, {}
    if method.target_views():
        real = kind.dataset(Path(prepared) / TARGET_TRAIN, params, labels=False)
        for view, name in method.target_views().items():
            name = name or v.augment
            views[view] = kind.view_transform(pipeline(name), params.augment[name], params.seed, f"augment.{name}")
        target = Views(real, views)
    few = plain = None
    if v.labelled_batch:
        few = kind.dataset(Path(prepared) / TARGET_LABELLED, params, transform=pipeline(None))
        plain = kind.dataset(Path(prepared) / TARGET_LABELLED, params)
    pick = Path(prepared) / TARGET_PICK
    pick = kind.dataset(pick, params) if manifest_rows(pick) else None
    preload_within((getattr(labelled, "images", labelled), val, target.images if target else None, few, plain, pick),
                   d.preload_mb * 2**20)
    in_use = {id(a): a for a in [*pipelines.values(), *views.values()] if a is not None}
    sample = subsample(target.images, REAL_SAMPLE, params.seed) if target is not None else None
    return TrainData(labelled, val, target, list(in_use.values()), sample, few, plain, pick, v.labelled_batch)


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------


# ------------------------------------------------------------------------------------------------
# One round of steps
# ------------------------------------------------------------------------------------------------


@dataclass
class RoundTotals:
    """Sums over a round's steps; averaged (over all ranks) by :meth:`means`."""

    correct: float = 0.0
    images: float = 0.0
    steps: float = 0.0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, correct: int, images: int, values: dict[str, float]) -> None:
        self.correct += correct
        self.images += images
        self.steps += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v

    def means(self, rt: Runtime, accuracy: bool = True) -> dict[str, float]:
        keys = sorted(self.sums)
        sums = torch.tensor([self.correct, self.images, self.steps] + [self.sums[k] for k in keys],
                            dtype=torch.float64)
        if rt.distributed:
            sums = sums.to(rt.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        correct, images, steps, *values = sums.tolist()
        out = {"train_acc": correct / max(images, 1)} if accuracy else {}
        out.update({k: v / max(steps, 1) for k, v in zip(keys, values)})
        return out


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


def train_round(net: nn.Module, method: Method, optimizer: torch.optim.Optimizer, data: TrainData,
                samplers: Samplers, params: Params, run: "RunState", rt: Runtime, stage: str,
                checkpoint: Optional[Path], total_steps: int) -> dict[str, float]:
    """Up to ``task.eval_every`` steps (fewer in the last round); returns the round's means and last lr.

    A NaN or infinite loss term stops training at once (:func:`~pipeline.guards.check_finite`),
    naming ``stage``, the term and the step; ``checkpoint`` (the last good one) is left as it is.
    """
    task, rnd, kind = params.task, run.epoch, task_kind(params)
    steps = min(task.eval_every, total_steps - run.step)
    for augment in data.augments:
        augment.reseed(derive_seed(params.seed, rnd, _AUGMENT, rt.rank))
    labelled_idx = samplers.labelled.epoch_indices(rnd)
    target_idx = samplers.target.epoch_indices(rnd) if samplers.target is not None else None
    few_idx = samplers.labelled_real.epoch_indices(rnd) if samplers.labelled_real is not None else None
    views, source_views = list(method.target_views()), list(method.source_views())
    net.train()
    totals, lr, started = RoundTotals(), 0.0, time.perf_counter()
    for i in range(steps):
        p = run.step / total_steps
        lr = method.learning_rate(task.optimizer.lr, p) or task_learning_rate(params, p)
        set_lr(optimizer, lr)
        x, y = samplers.labelled.load(labelled_idx[i])
        source = {}
        if source_views:      # (N, 1 + views, C, H, W): the variant's own view first
            source = {view: x[:, k + 1].to(rt.device) for k, view in enumerate(source_views)}
            x = x[:, 0]
        y = kind.to_device(y, rt.device)
        target = {}
        if target_idx is not None:
            stacked, _ = samplers.target.load(target_idx[i])
            target = {view: stacked[:, k].to(rt.device) for k, view in enumerate(views)}
        few = None
        if few_idx is not None:
            x_r, y_r = samplers.labelled_real.load(few_idx[i])
            few = (x_r.to(rt.device), y_r.to(rt.device))
        method.before_step(net, run.step, data.real_sample, data.labelled_real_plain)
        out = method.loss(net, StepBatch(x.to(rt.device), y, target, source, few), p)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        run.step += 1
        check_finite(out.terms, stage, run.step, rnd + 1, checkpoint, rt.distributed)
        correct = kind.correct(out.logits, y) if out.logits is not None else None
        totals.add(correct or 0, len(x), {**{f"loss/{k}": float(v.detach()) for k, v in out.terms.items()}, **out.stats})
    run.train_seconds += time.perf_counter() - started
    run.images_seen += int(totals.images) * rt.world_size
    return {**totals.means(rt, accuracy=kind.train_accuracy), "lr": lr}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: nn.Module                 # the selected weights, unwrapped, in eval mode, on CPU
    meta: dict[str, Any]             # what export writes next to the weights
    history: list[dict[str, float]]  # one row per round
    metrics: dict[str, Any]          # reports/train/<variant>/metrics.json
    modules: dict[str, nn.Module] = field(default_factory=dict)   # the method's own trained modules


@dataclass
class RunState:
    """Everything a checkpoint restores besides the networks, the optimiser and the method's state."""

    epoch: int = 0                   # completed rounds of task.eval_every steps
    step: int = 0                    # completed optimiser steps
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_state: Optional[dict[str, torch.Tensor]] = None
    top_val_acc: float = -1.0        # the best source-val accuracy seen (for the collapse guard)
    top_epoch: int = 0
    top_state: Optional[dict[str, torch.Tensor]] = None
    train_seconds: float = 0.0
    images_seen: int = 0


def _state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _checkpoint_state(model: nn.Module, method: Method, optimizer, run: RunState) -> dict:
    return {"model": _state_dict_copy(model),
            "modules": {name: _state_dict_copy(m) for name, m in method.modules().items()},
            "method": method.state_dict(), "optimizer": optimizer.state_dict(), **dataclasses.asdict(run)}


def _restore(saved: dict, model: nn.Module, method: Method, optimizer) -> RunState:
    model.load_state_dict(saved["model"])
    for name, module in method.modules().items():
        module.load_state_dict(saved["modules"][name])
    method.load_state_dict(saved["method"])
    optimizer.load_state_dict(saved["optimizer"])
    return RunState(**{f.name: saved[f.name] for f in dataclasses.fields(RunState)})


def resume(checkpointer: Checkpointer, rt: Runtime) -> Optional[dict]:
    """Rank 0 first (it moves a stale checkpoint aside), then the other ranks read the same file."""
    saved = checkpointer.resume() if rt.is_main else None
    barrier(rt)
    return saved if rt.is_main else checkpointer.resume()


def _select(run: RunState, model: nn.Module, val_acc: float, select: str) -> None:
    """Remember the round to export (the last one, or the best on synthetic validation so far) and
    the best round overall (for the collapse guard)."""
    state = None
    if val_acc > run.top_val_acc:
        state = _state_dict_copy(model)
        run.top_epoch, run.top_val_acc, run.top_state = run.epoch, val_acc, state
    if select == "last" or val_acc > run.best_val_acc:
        run.best_epoch, run.best_val_acc = run.epoch, val_acc
        run.best_state = state if state is not None else _state_dict_copy(model)


def collapse_guard(run: RunState) -> Optional[str]:
    """When the exported round's source-val accuracy is below :data:`COLLAPSE_RATIO` of the best
    round's, switch the export to the best round and return a one-line warning (else None)."""
    if run.top_state is None or run.best_val_acc >= COLLAPSE_RATIO * run.top_val_acc:
        return None
    warning = (f"source-val accuracy collapsed from {run.top_val_acc:.3f} (round {run.top_epoch}) to "
               f"{run.best_val_acc:.3f} (round {run.best_epoch}); exported round {run.top_epoch} instead")
    run.best_epoch, run.best_val_acc, run.best_state = run.top_epoch, run.top_val_acc, run.top_state
    return warning


def train_task_model(params: Params, variant: str, runtime: Runtime, tracker, checkpoint_dir: str | Path,
                     reports_dir: str | Path, prepared: str | Path = PREPARED,
                     log: logging.Logger = logger,
                     on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train (or resume) ``variant``; write history.csv and metrics.json (rank 0) and return the result.

    ``on_epoch_end(round, row)`` runs after each round's checkpoint (tests use it to interrupt a run).
    """
    v, task, rt, kind = params.variant(variant), params.task, runtime, task_kind(params)
    seed_everything(params.seed)
    model = kind.build_model(params).to(rt.device)
    method = build_method(params, variant, model, rt)
    data = load_data(params, variant, method, prepared)
    trainable = list(model.parameters()) + [p for m in method.modules().values() for p in m.parameters()]
    optimizer = build_optimizer(trainable, params)

    checkpointer = Checkpointer(checkpoint_dir, run_fingerprint(params, variant, data.folders))
    saved = resume(checkpointer, rt)
    run = _restore(saved, model, method, optimizer) if saved else RunState()
    total_steps = variant_steps(params, variant)
    rounds = math.ceil(total_steps / task.eval_every)
    if saved:
        log.info("%s: %s", variant, f"resuming after round {run.epoch} of {rounds}" if run.epoch < rounds
                 else "checkpoint holds the finished run; exporting it without training")

    net = wrap(kind.network(model), rt)
    samplers = make_samplers(params, data, method, rt)
    while run.epoch < rounds:
        row = train_round(net, method, optimizer, data, samplers, params, run, rt, f"train_task@{variant}",
                          checkpointer.path, total_steps)
        run.epoch += 1
        sync_buffers(rt, model, *method.modules().values())  # BatchNorm statistics: rank 0's on every rank
        row = {"epoch": run.epoch, "step": run.step, **row,
               kind.score_name: kind.val_score(model, data.val, rt.device)}   # the last column (the DVC plot's y)
        run.history.append(row)
        _select(run, model, row[kind.score_name], task.select)
        if rt.is_main:
            checkpointer.save(_checkpoint_state(model, method, optimizer, run))
            tracker.log_metrics({k: val for k, val in row.items() if k != "epoch"}, step=run.step)
        log.info("%s round %d/%d (step %d)  %s", variant, run.epoch, rounds, run.step,
                 "  ".join(f"{k} {val:.4g}" for k, val in row.items() if k not in ("epoch", "step")))
        if on_epoch_end is not None:
            on_epoch_end(run.epoch, row)

    warning = collapse_guard(run)
    if warning:
        log.warning("%s: %s", variant, warning)
    result = _result(params, variant, run, model, prepared, [warning] if warning else [])
    result.modules = method.modules()
    result.metrics["labelled_real_images"] = len(data.labelled_real) if data.labelled_real is not None else 0
    if rt.is_main:
        real = _real_images(data, params, prepared)
        if v.target_bn:
            layers = adapt_batchnorm(kind.batchnorm_module(result.model), real)
            result.metrics["target_bn_layers"] = layers
            log.info("%s: BatchNorm statistics of %d layers re-estimated on the real training images", variant, layers)
        if v.target_head and kind.name != "classification":
            log.info("%s: target_head skipped: class prototypes are for task.kind classification", variant)
        elif v.target_head:
            result.metrics["target_head_stats"] = fit_prototype_head(
                kind.network(result.model), classifier_layer(result.model), real)
            log.info("%s: classifier replaced by the prototypes of the real training images (%s)", variant,
                     ", ".join(f"{k} {val:.3f}" for k, val in result.metrics["target_head_stats"].items()))
        if data.pick is not None:       # labelled real images no variant trained on: the report may choose by them
            result.metrics["labelled_pick"] = {"accuracy": kind.val_score(result.model, data.pick, rt.device),
                                               "images": len(data.pick)}
        scores = kind.label_free(result.model, real, data.val, rt.device, params.seed)
        predicted = scores.pop("target_predicted", None)    # the report compares variants' predictions
        result.metrics["label_free"] = scores
        if predicted is not None:
            result.metrics["target_predicted"] = predicted
        tracker.log_metrics({f"label_free.{k}": v for k, v in result.metrics["label_free"].items()})
        write_table(Path(reports_dir) / "history.csv", run.history)
        write_json(Path(reports_dir) / "metrics.json", result.metrics)
    return result


def _real_images(data: TrainData, params: Params, prepared: str | Path) -> Dataset:
    """At most :data:`REAL_SAMPLE` unlabelled real training images (a fixed, seeded sample), unaugmented
    (already in memory when the method used them): AdaBN, the prototype head and the label-free scores
    (what the report picks a variant by) read them."""
    if data.real_sample is not None:
        return data.real_sample
    real = task_kind(params).dataset(Path(prepared) / TARGET_TRAIN, params, labels=False)
    return subsample(real, REAL_SAMPLE, params.seed)


def _result(params: Params, variant: str, run: RunState, model: nn.Module, prepared: str | Path,
            warnings: list[str]) -> TrainResult:
    selected = copy.deepcopy(unwrap(model)).cpu()
    selected.load_state_dict(run.best_state)
    selected.eval()
    v, last = params.variant(variant), run.history[-1]
    target_labels = uses_target_labels(params, variant, prepared)
    few = few_target_labels(params, variant, prepared)
    meta = {"kind": params.task.kind, "classes": list(params.data.classes), "image_size": params.data.image_size,
            "channels": params.data.channels, "variant": variant, "method": v.method,
            "selected_epoch": run.best_epoch, "uses_target_labels": target_labels, "few_target_labels": few,
            "params_hash": params_hash(params, variant)}
    metrics = {
        "variant": variant, "method": v.method, "uses_target_labels": target_labels, "few_target_labels": few,
        "steps": run.step, "rounds": run.epoch, "select": params.task.select, "selected_round": run.best_epoch,
        "selected_source_val_acc": run.best_val_acc, "val": val_folder(params, variant, prepared).as_posix(),
        "warnings": warnings, "target_bn": v.target_bn,
        "target_head": v.target_head and params.task.kind == "classification",
        "final": {k: val for k, val in last.items() if k not in ("epoch", "step")},
        "train_seconds": round(run.train_seconds, 3),
        "images_per_second": round(run.images_seen / max(run.train_seconds, 1e-9), 1),
    }
    return TrainResult(selected, meta, run.history, metrics)


def export_task_model(result: TrainResult, folder: str | Path, tracker) -> Path:
    """``<folder>/model.pt`` (weights + build config + meta), mirrored to MLflow with its tags: that
    same file is the logged model's artifact, loaded by a pyfunc loader without pickled code
    (:mod:`pipeline.task.mlflow_model`)."""
    from pipeline.task.mlflow_model import task_model_spec

    path = Path(folder) / "model.pt"
    save_task_model(path, result.model, result.meta)
    tracker.set_tags({"stage": "train_task", "variant": result.meta["variant"], "method": result.meta["method"],
                      "uses_target_labels": result.meta["uses_target_labels"],
                      "few_target_labels": result.meta.get("few_target_labels", False)})
    tracker.log_model(task_model_spec(path, result.meta), f"task_{result.meta['variant']}")
    return path
