"""The one downstream training loop: a task model of any kind trained by any registered method.

A variant is ``{method, train, augment, params}``. Each optimiser step draws a labelled batch from
``train`` (augmented by the variant's ``augment`` pipeline) and, when the method asks for them, the
views of an unlabelled batch of real images (``data/prepared/target/train``); the method
(:mod:`pipeline.methods`) turns them into a loss. The loop names no method and no task kind
(classification or detection: :mod:`pipeline.task.kinds` says what a label, a loss and a score are): data order, learning
rate, checkpoints, DDP, non-finite guard, model selection, label-free scores and reports are shared.

Budgets are in optimiser steps (``task.steps``, or a variant's own ``steps``), not epochs, so a small training set (a few
hundred real images for the oracle) gets as many updates as a large one; ``budget`` multiplies them and
``task.eval_every`` (:meth:`~pipeline.config.Params.effective`, resolved once in
:class:`~pipeline.task.variant.Variant`), so the number of rounds stays the same. Every ``task.eval_every``
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

Where stderr is not a terminal (DVC, a batch job), rank 0 logs a progress line at most every
:data:`~pipeline.progress.INTERVAL_S` seconds (:mod:`pipeline.progress`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from pipeline.checkpoint import Checkpointer
from pipeline.config import Params
from pipeline.distributed import Runtime, barrier, sync_buffers, wrap
from pipeline.guards import check_finite
from pipeline.io import write_json, write_table
from pipeline.methods.base import Method, StepBatch
from pipeline.progress import Progress, log_progress
from pipeline.reproducibility import derive_seed, seed_everything
from pipeline.task.batchnorm import adapt_batchnorm
from pipeline.task.export import save_task_model
from pipeline.task.kinds import task_kind
from pipeline.task.models import classifier_layer, unwrap
from pipeline.task.prototypes import fit_prototype_head
from pipeline.task.train_data import Samplers, TrainData, build_method, load_data, make_samplers, real_images
from pipeline.task.variant import FINGERPRINT_SECTIONS, PREPARED, Variant

logger = logging.getLogger(__name__)

COLLAPSE_RATIO = 0.5      # a final source-val accuracy below half the best means the run destroyed what it learned
STEP_LOG_EVERY = 25       # optimiser steps per row of reports/train/<variant>/steps.csv (the training curve)
__all__ = ["FINGERPRINT_SECTIONS", "RunState", "TrainResult", "collapse_guard", "export_task_model", "train_task_model"]

# Streams of derive_seed(seed, round, STREAM, ...): one generator per purpose.
_AUGMENT = 3


# ------------------------------------------------------------------------------------------------
# Schedules and optimiser
# ------------------------------------------------------------------------------------------------


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


def train_round(net: nn.Module, method: Method, optimizer: torch.optim.Optimizer, data: TrainData,
                samplers: Samplers, params: Params, run: "RunState", rt: Runtime, stage: str,
                checkpoint: Optional[Path], total_steps: int, progress: Optional[Progress] = None) -> dict[str, float]:
    """Up to ``task.eval_every`` steps (fewer in the last round); returns the round's means and last lr.

    ``params`` are the effective ones (``budget`` applied: :meth:`~pipeline.config.Params.effective`).
    A NaN or infinite loss term stops training at once (:func:`~pipeline.guards.check_finite`),
    naming ``stage``, the term and the step; ``checkpoint`` (the last good one) is left as it is.
    ``progress`` is told each finished step (it only reads a clock).
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
        log_step(run, float(out.loss.detach()), correct, len(x), total_steps)
        if progress is not None:
            progress.update(run.step)
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
    steps_log: list[dict[str, float]] = field(default_factory=list)   # rows of steps.csv
    step_window: dict[str, float] = field(default_factory=dict)       # sums of the row being filled


def log_step(run: RunState, loss: float, correct: Optional[int], images: int, total_steps: int) -> None:
    """Add the step just taken (``run.step``) to the training curve: every :data:`STEP_LOG_EVERY` steps
    (and at the last one) a row ``{step, loss, train_acc}`` of the means over those steps (this rank's
    batches; ``train_acc`` only when the kind has one)."""
    window = run.step_window
    for key, value in (("loss", loss), ("steps", 1), ("correct", correct or 0), ("images", images)):
        window[key] = window.get(key, 0) + value
    if run.step % STEP_LOG_EVERY and run.step < total_steps:
        return
    row = {"step": run.step, "loss": window["loss"] / window["steps"]}
    if correct is not None:
        row["train_acc"] = window["correct"] / max(window["images"], 1)
    run.steps_log.append(row)
    run.step_window = {}


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


def train_task_model(params: Params, name: str, runtime: Runtime, tracker, checkpoint_dir: str | Path,
                     reports_dir: str | Path, prepared: str | Path = PREPARED,
                     log: logging.Logger = logger,
                     on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train (or resume) the variant ``name``; write history.csv and metrics.json (rank 0) and return the result.

    ``on_epoch_end(round, row)`` runs after each round's checkpoint (tests use it to interrupt a run).
    """
    variant = Variant.resolve(params, name, prepared)     # its steps and eval_every with the budget applied
    effective = params.effective()                        # the same counts, for the samplers and the rounds
    v, task, rt, kind = variant.entry, params.task, runtime, task_kind(params)
    seed_everything(params.seed)
    model = kind.build_model(params).to(rt.device)
    method = build_method(params, variant, model, rt)
    data = load_data(params, variant, method)
    trainable = list(model.parameters()) + [p for m in method.modules().values() for p in m.parameters()]
    optimizer = build_optimizer(trainable, params)

    checkpointer = Checkpointer(checkpoint_dir, variant.run_fingerprint(params, data.folders))
    saved = resume(checkpointer, rt)
    run = _restore(saved, model, method, optimizer) if saved else RunState()
    total_steps, rounds = variant.steps, variant.rounds
    if saved:
        log.info("%s: %s", name, f"resuming after round {run.epoch} of {rounds}" if run.epoch < rounds
                 else "checkpoint holds the finished run; exporting it without training")

    net = wrap(kind.network(model), rt)
    samplers = make_samplers(effective, data, method, rt)
    progress = Progress(f"train_task@{name}", total_steps, run.step, log=log, enabled=log_progress(rt.is_main))
    while run.epoch < rounds:
        row = train_round(net, method, optimizer, data, samplers, effective, run, rt, f"train_task@{name}",
                          checkpointer.path, total_steps, progress)
        run.epoch += 1
        sync_buffers(rt, model, *method.modules().values())  # BatchNorm statistics: rank 0's on every rank
        row = {"epoch": run.epoch, "step": run.step, **row,
               kind.score_name: kind.val_score(model, data.val, rt.device)}   # the last column (the DVC plot's y)
        run.history.append(row)
        _select(run, model, row[kind.score_name], task.select)
        if rt.is_main:
            checkpointer.save(_checkpoint_state(model, method, optimizer, run))
            tracker.log_metrics({k: val for k, val in row.items() if k != "epoch"}, step=run.step)
        log.info("%s round %d/%d (step %d)  %s", name, run.epoch, rounds, run.step,
                 "  ".join(f"{k} {val:.4g}" for k, val in row.items() if k not in ("epoch", "step")))
        if on_epoch_end is not None:
            on_epoch_end(run.epoch, row)

    warning = collapse_guard(run)
    if warning:
        log.warning("%s: %s", name, warning)
    result = _result(params, variant, run, model, [warning] if warning else [])
    result.modules = method.modules()
    result.metrics["labelled_real_images"] = len(data.labelled_real) if data.labelled_real is not None else 0
    if rt.is_main:
        real = real_images(data, params, variant)
        if v.target_bn:
            layers = adapt_batchnorm(kind.batchnorm_module(result.model), real)
            result.metrics["target_bn_layers"] = layers
            log.info("%s: BatchNorm statistics of %d layers re-estimated on the real training images", name, layers)
        if v.target_head and not kind.prototype_head:
            log.info("%s: target_head skipped: a %s model has no classifier for class prototypes to replace",
                     name, kind.name)
        elif v.target_head:
            result.metrics["target_head_stats"] = fit_prototype_head(
                kind.network(result.model), classifier_layer(result.model), real)
            log.info("%s: classifier replaced by the prototypes of the real training images (%s)", name,
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
        write_table(Path(reports_dir) / "steps.csv", run.steps_log, first="step")
        write_json(Path(reports_dir) / "metrics.json", result.metrics)
    return result


def _result(params: Params, variant: Variant, run: RunState, model: nn.Module, warnings: list[str]) -> TrainResult:
    selected = copy.deepcopy(unwrap(model)).cpu()
    selected.load_state_dict(run.best_state)
    selected.eval()
    v, last, name = variant.entry, run.history[-1], variant.name
    target_labels, few = variant.uses_target_labels(), variant.few_target_labels()
    meta = {"kind": params.task.kind, "classes": list(params.data.classes), "image_size": params.data.image_size,
            "channels": params.data.channels, "variant": name, "method": v.method,
            "selected_epoch": run.best_epoch, "uses_target_labels": target_labels, "few_target_labels": few,
            "params_hash": variant.params_hash(params)}
    metrics = {
        "variant": name, "method": v.method, "uses_target_labels": target_labels, "few_target_labels": few,
        "steps": run.step, "rounds": run.epoch, "effective": params.effective_task(name),
        "select": params.task.select, "selected_round": run.best_epoch,
        "selected_source_val_acc": run.best_val_acc, "val": variant.val.as_posix(),
        "warnings": warnings, "target_bn": v.target_bn,
        "target_head": v.target_head and task_kind(params).prototype_head,
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
