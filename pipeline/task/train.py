"""Train one task variant: supervised, or DANN (the same loop plus a domain branch).

One loop serves both methods. Each step forwards a labelled batch ``x_s`` (DANN: ``x_s`` and an
unlabelled real batch ``x_t`` together, as one batch) through the classifier and minimises

    supervised:  L = CE(h(f(x_s)), y_s)
    DANN:        L = CE(h(f(x_s)), y_s) + trade_off * L_d(D(GRL_lambda(f(x_s))), D(GRL_lambda(f(x_t))))

where ``f`` is the feature extractor, ``h`` the classifier head, ``D`` the domain discriminator and
``GRL_lambda`` the gradient reversal (see :mod:`pipeline.task.dann`). With progress
``p = global_step / total_steps`` in [0, 1):

    learning rate   cosine:   lr_p = lr0 * (1 + cos(pi p)) / 2
                    constant: lr_p = lr0
                    DANN:     lr_p = lr0 / (1 + alpha p) ** beta      (overrides task.schedule)
    GRL weight      DANN:     lambda_p = 2 / (1 + exp(-gamma p)) - 1

Model selection never looks at real labels: ``task.select: source_val`` keeps the epoch with the
best accuracy on the labelled synthetic ``source/val``; ``last`` keeps the last epoch.

Every epoch ends with a full-state checkpoint (networks, optimiser, step, best-so-far weights,
history and RNG states), valid only for the same params, training code and data. Data order and augmentations are drawn from generators seeded by
``(seed, epoch, ...)``, so a run resumed from a checkpoint continues exactly as the uninterrupted
run would have.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from pipeline.checkpoint import Checkpointer
from pipeline.config import ConfigError, Params, trains_on_target
from pipeline.data.augment import Augment, build_augment
from pipeline.data.manifest import ImageSet
from pipeline.distributed import Runtime, barrier, sync_buffers, unwrap, wrap
from pipeline.guards import check_finite
from pipeline.io import write_json, write_table
from pipeline.task.dann import DomainDiscriminator, domain_adversarial_loss
from pipeline.task.export import save_task_model
from pipeline.task.grl import dann_lambda, dann_lr
from pipeline.task.models import build_task_model, classify_features, extract_features, feature_dim
from pipeline.reproducibility import code_digest, content_digest, derive_seed, seed_everything

logger = logging.getLogger(__name__)

PREPARED = Path("data/prepared")
SOURCE_VAL = "source/val"
TARGET_TRAIN = "target/train"
FINGERPRINT_SECTIONS = ("seed", "data", "augment", "task", "dann")


# ------------------------------------------------------------------------------------------------
# Identity of a run
# ------------------------------------------------------------------------------------------------


def params_hash(params: Params, variant: str) -> str:
    """Hash of the params sections that shape training plus the variant's own entry."""
    entry = dataclasses.asdict(params.variant(variant))
    blob = json.dumps({"params": params.fingerprint(*FINGERPRINT_SECTIONS), "variant": variant, "entry": entry},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_fingerprint(params: Params, variant: str, data_folders: Iterable[str | Path]) -> str:
    """Identity of a training run for its checkpoint: params, training code and data contents.

    These are the stage's DVC dependencies; when any of them changes DVC reruns the stage, and the
    persisted checkpoint (made from the old inputs) must then not be resumed.
    """
    parts = [params_hash(params, variant), code_digest(), content_digest(data_folders)]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:16]


def uses_target_labels(params: Params, variant: str, prepared: str | Path = PREPARED) -> bool:
    """True when the variant learns from labelled real images (its train folder lies under ``target``)."""
    return trains_on_target(params.variant(variant), Path(prepared) / "target")


# Streams of derive_seed(seed, epoch, STREAM, ...): one generator per purpose.
_SHUFFLE, _TARGET, _AUGMENT = 1, 2, 3


# ------------------------------------------------------------------------------------------------
# Schedules
# ------------------------------------------------------------------------------------------------


def learning_rate(params: Params, method: str, p: float) -> float:
    """``lr_p`` at progress ``p`` (formulas in the module docstring)."""
    lr0 = params.task.optimizer.lr
    if method == "dann":
        return dann_lr(p, lr0, params.dann.alpha, params.dann.beta)
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


def make_loader(dataset: Dataset, batch_size: int, rt: Runtime, shuffle_seed: Optional[int] = None) -> DataLoader:
    """Single process, no workers; shuffled by a generator seeded with ``shuffle_seed`` (None: in order).

    Under torchrun each rank reads its shard through a :class:`DistributedSampler` with the same seed.
    """
    generator = torch.Generator().manual_seed(shuffle_seed or 0)
    if rt.distributed:
        sampler = DistributedSampler(dataset, rt.world_size, rt.rank, shuffle=shuffle_seed is not None,
                                     seed=shuffle_seed or 0)
    elif shuffle_seed is not None:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=0, generator=generator)


def cycle_batches(dataset: Dataset, batch_size: int, rt: Runtime, seed: int, epoch: int) -> Iterator[torch.Tensor]:
    """Endless unlabelled batches for one epoch; pass ``k`` over the data is shuffled with ``(seed, epoch, k)``."""
    for k in itertools.count():
        for x, _ in make_loader(dataset, batch_size, rt, derive_seed(seed, epoch, _TARGET, k)):
            yield x


@dataclass
class TrainData:
    labelled: ImageSet
    val: ImageSet
    target: Optional[ImageSet]          # DANN only: unlabelled real images
    augment: Optional[Augment]

    @property
    def folders(self) -> list[Path]:
        return [s.folder for s in (self.labelled, self.val, self.target) if s is not None]


def load_data(params: Params, variant: str, prepared: str | Path = PREPARED) -> TrainData:
    """The variant's labelled set (augmented), synthetic validation and, for DANN, unlabelled target."""
    d, v = params.data, params.variant(variant)
    augment = build_augment(params.augment, params.seed)
    labelled = ImageSet(v.train, d.classes, d.channels, d.image_size, transform=augment)
    val = ImageSet(Path(prepared) / SOURCE_VAL, d.classes, d.channels, d.image_size)
    target = None
    if v.method == "dann":
        target = ImageSet(Path(prepared) / TARGET_TRAIN, d.classes, d.channels, d.image_size, labels=False)
    return TrainData(labelled, val, target, augment)


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------


class FeaturesAndLogits(nn.Module):
    """``x -> (f(x), h(f(x)))`` so one (DDP-wrapped) forward serves both the task and the domain branch."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = extract_features(self.model, x)
        return features, classify_features(self.model, features)


class DomainBranch:
    """What DANN adds to a supervised step: a real batch and the discriminator's loss on the features."""

    def __init__(self, discriminator: nn.Module, params: Params):
        self.discriminator, self.dann = discriminator, params.dann
        self.batches: Iterator[torch.Tensor] = iter(())

    def start_epoch(self, batches: Iterator[torch.Tensor]) -> None:
        self.batches = batches

    def next_batch(self) -> torch.Tensor:
        return next(self.batches)

    def loss(self, f_source: torch.Tensor, f_target: torch.Tensor, p: float) -> tuple[torch.Tensor, dict[str, float]]:
        """``trade_off * L_d`` with the GRL at ``lambda_p``, and the step's domain statistics."""
        lambd = dann_lambda(p, self.dann.gamma)
        loss, accuracy = domain_adversarial_loss(self.discriminator, f_source, f_target, lambd)
        return self.dann.trade_off * loss, {"lambda": lambd, "domain_loss": float(loss.detach()), "domain_acc": accuracy}


# ------------------------------------------------------------------------------------------------
# One epoch
# ------------------------------------------------------------------------------------------------


@dataclass
class EpochTotals:
    """Sums over an epoch's steps; averaged (over all ranks) by :meth:`means`."""

    loss: float = 0.0
    correct: float = 0.0
    images: float = 0.0
    steps: float = 0.0
    domain: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, correct: int, images: int, domain: dict[str, float]) -> None:
        self.loss += loss * images
        self.correct += correct
        self.images += images
        self.steps += 1
        for k, v in domain.items():
            self.domain[k] = self.domain.get(k, 0.0) + v

    def means(self, rt: Runtime) -> dict[str, float]:
        keys = sorted(self.domain)
        sums = torch.tensor([self.loss, self.correct, self.images, self.steps] + [self.domain[k] for k in keys],
                            dtype=torch.float64)
        if rt.distributed:
            sums = sums.to(rt.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        loss, correct, images, steps, *domain = sums.tolist()
        out = {"train_loss": loss / max(images, 1), "train_acc": correct / max(images, 1)}
        out.update({k: v / max(steps, 1) for k, v in zip(keys, domain)})
        return out


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               branch: Optional[DomainBranch], p: float, device: torch.device) -> tuple[float, int, dict]:
    """One update; returns (task loss, correct predictions, domain statistics)."""
    x, y = x.to(device), y.to(device)
    inputs = x if branch is None else torch.cat([x, branch.next_batch().to(device)])
    features, logits = net(inputs)
    n = len(x)
    task_loss = F.cross_entropy(logits[:n], y)
    loss, domain = task_loss, {}
    if branch is not None:
        domain_loss, domain = branch.loss(features[:n], features[n:], p)
        loss = loss + domain_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = int((logits[:n].detach().argmax(1) == y).sum())
    return float(task_loss.detach()), correct, domain


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy of ``model`` (switched to eval mode and back) over ``loader``."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        pred = model(x.to(device)).argmax(1).cpu()
        correct += int((pred == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def _progress(loader: DataLoader, desc: str, rt: Runtime):
    from tqdm import tqdm

    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (rt.is_main and sys.stderr.isatty()))


def start_epoch(data: TrainData, branch: Optional[DomainBranch], params: Params, rt: Runtime,
                epoch: int) -> DataLoader:
    """Seed this epoch's shuffling, augmentations and target stream from ``(seed, epoch)``; the labelled loader."""
    loader = make_loader(data.labelled, params.task.batch_size, rt, derive_seed(params.seed, epoch, _SHUFFLE))
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if data.augment is not None:
        data.augment.reseed(derive_seed(params.seed, epoch, _AUGMENT, rt.rank))
    if branch is not None:
        branch.start_epoch(cycle_batches(data.target, params.task.batch_size, rt, params.seed, epoch))
    return loader


def train_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                branch: Optional[DomainBranch], params: Params, method: str, run: RunState, total_steps: int,
                rt: Runtime, desc: str, stage: str = "train_task", checkpoint: Optional[Path] = None
                ) -> dict[str, float]:
    """One pass over the labelled loader; advances ``run.step`` and returns the epoch's means and last lr.

    A NaN or infinite loss stops training at once (:func:`~pipeline.guards.check_finite`), naming
    ``stage``, the term and the step; ``checkpoint`` (the last good one) is left as it is.
    """
    net.train()
    if branch is not None:
        branch.discriminator.train()
    totals, lr, started = EpochTotals(), 0.0, time.perf_counter()
    bar = _progress(loader, desc, rt)
    for x, y in bar:
        p = run.step / total_steps
        lr = learning_rate(params, method, p)
        set_lr(optimizer, lr)
        loss, correct, domain = train_step(net, optimizer, x, y, branch, p, rt.device)
        run.step += 1
        terms = {"task": loss} if branch is None else {"task": loss, "domain": domain["domain_loss"]}
        check_finite(terms, stage, run.step, run.epoch + 1, checkpoint, rt.distributed)
        totals.add(loss, correct, len(x), domain)
        bar.set_postfix(loss=f"{loss:.3f}")
    run.train_seconds += time.perf_counter() - started
    run.images_seen += int(totals.images) * rt.world_size
    return {**totals.means(rt), "lr": lr}


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: nn.Module                 # the selected weights, unwrapped, in eval mode, on CPU
    meta: dict[str, Any]             # what export writes next to the weights
    history: list[dict[str, float]]  # one row per epoch
    metrics: dict[str, Any]          # reports/train/<variant>/metrics.json
    discriminator: Optional[nn.Module] = None  # DANN: the last epoch's domain discriminator, unwrapped


@dataclass
class RunState:
    """Everything a checkpoint restores besides the networks and the optimiser."""

    epoch: int = 0                   # completed epochs
    step: int = 0                    # completed optimiser steps
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -1.0
    best_state: Optional[dict[str, torch.Tensor]] = None
    train_seconds: float = 0.0
    images_seen: int = 0


def _state_dict_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _checkpoint_state(model: nn.Module, discriminator: Optional[nn.Module], optimizer, run: RunState) -> dict:
    return {"model": _state_dict_copy(model),
            "discriminator": _state_dict_copy(discriminator) if discriminator is not None else None,
            "optimizer": optimizer.state_dict(), **dataclasses.asdict(run)}


def _restore(saved: dict, model: nn.Module, discriminator: Optional[nn.Module], optimizer) -> RunState:
    model.load_state_dict(saved["model"])
    if discriminator is not None:
        discriminator.load_state_dict(saved["discriminator"])
    optimizer.load_state_dict(saved["optimizer"])
    return RunState(**{f.name: saved[f.name] for f in dataclasses.fields(RunState)})


def resume(checkpointer: Checkpointer, rt: Runtime) -> Optional[dict]:
    """Rank 0 first (it moves a stale checkpoint aside), then the other ranks read the same file."""
    saved = checkpointer.resume() if rt.is_main else None
    barrier(rt)
    return saved if rt.is_main else checkpointer.resume()


def _select(run: RunState, model: nn.Module, val_acc: float, select: str) -> None:
    """Remember the epoch to export: the last one, or the best on synthetic validation so far."""
    if select == "last" or val_acc > run.best_val_acc:
        run.best_epoch, run.best_val_acc, run.best_state = run.epoch, val_acc, _state_dict_copy(model)


def train_task_model(params: Params, variant: str, runtime: Runtime, tracker, checkpoint_dir: str | Path,
                     reports_dir: str | Path, prepared: str | Path = PREPARED,
                     log: logging.Logger = logger,
                     on_epoch_end: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train (or resume) ``variant``; write history.csv and metrics.json (rank 0) and return the result.

    ``on_epoch_end(epoch, row)`` runs after each epoch's checkpoint (tests use it to interrupt a run).
    """
    v, task, rt = params.variant(variant), params.task, runtime
    seed_everything(params.seed)
    data = load_data(params, variant, prepared)
    classes = params.data.classes

    try:
        model = build_task_model(task.model, params.data.channels, len(classes), task.width).to(rt.device)
    except ValueError as exc:  # an unknown architecture; the message names task.model
        raise ConfigError(str(exc)) from None
    discriminator = None
    if v.method == "dann":
        discriminator = DomainDiscriminator(feature_dim(model), params.dann.hidden).to(rt.device)
    trainable = list(model.parameters()) + (list(discriminator.parameters()) if discriminator is not None else [])
    optimizer = build_optimizer(trainable, params)

    checkpointer = Checkpointer(checkpoint_dir, run_fingerprint(params, variant, data.folders))
    saved = resume(checkpointer, rt)
    run = _restore(saved, model, discriminator, optimizer) if saved else RunState()
    if saved:
        log.info("%s: %s", variant, f"resuming after epoch {run.epoch} of {task.epochs}" if run.epoch < task.epochs
                 else "checkpoint holds the finished run; exporting it without training")

    net = wrap(FeaturesAndLogits(model), rt)
    branch = DomainBranch(wrap(discriminator, rt), params) if discriminator is not None else None
    val_loader = make_loader(data.val, task.batch_size, dataclasses.replace(rt, world_size=1, rank=0))
    steps_per_epoch = len(make_loader(data.labelled, task.batch_size, rt, 0))
    total_steps = task.epochs * steps_per_epoch

    while run.epoch < task.epochs:
        epoch = run.epoch + 1
        loader = start_epoch(data, branch, params, rt, epoch)
        train_row = train_epoch(net, optimizer, loader, branch, params, v.method, run, total_steps, rt,
                                desc=f"epoch {epoch}/{task.epochs}", stage=f"train_task@{variant}",
                                checkpoint=checkpointer.path)
        run.epoch = epoch
        sync_buffers(rt, model, discriminator)  # BatchNorm statistics: rank 0's on every rank
        row = {"epoch": epoch, **train_row, "source_val_acc": accuracy(model, val_loader, rt.device)}
        run.history.append(row)
        _select(run, model, row["source_val_acc"], task.select)
        if rt.is_main:
            checkpointer.save(_checkpoint_state(model, discriminator, optimizer, run))
            tracker.log_metrics({k: val for k, val in row.items() if k != "epoch"}, step=epoch)
        log.info("%s epoch %d/%d  %s", variant, epoch, task.epochs,
                 "  ".join(f"{k} {val:.4g}" for k, val in row.items() if k != "epoch"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    result = _result(params, variant, run, model, prepared)
    result.discriminator = discriminator
    if rt.is_main:
        write_table(Path(reports_dir) / "history.csv", run.history)
        write_json(Path(reports_dir) / "metrics.json", result.metrics)
    return result


def _result(params: Params, variant: str, run: RunState, model: nn.Module, prepared: str | Path) -> TrainResult:
    selected = copy.deepcopy(unwrap(model)).cpu()
    selected.load_state_dict(run.best_state)
    selected.eval()
    v, last = params.variant(variant), run.history[-1]
    target_labels = uses_target_labels(params, variant, prepared)
    meta = {"classes": list(params.data.classes), "image_size": params.data.image_size,
            "channels": params.data.channels, "variant": variant, "method": v.method,
            "selected_epoch": run.best_epoch, "uses_target_labels": target_labels,
            "params_hash": params_hash(params, variant)}
    metrics = {
        "variant": variant, "method": v.method, "uses_target_labels": target_labels,
        "epochs": run.epoch, "select": params.task.select, "selected_epoch": run.best_epoch,
        "selected_source_val_acc": run.best_val_acc,
        "final": {k: val for k, val in last.items() if k != "epoch"},
        "train_seconds": round(run.train_seconds, 3),
        "images_per_second": round(run.images_seen / max(run.train_seconds, 1e-9), 1),
    }
    return TrainResult(selected, meta, run.history, metrics)


def export_task_model(result: TrainResult, folder: str | Path, tracker) -> Path:
    """``<folder>/model.pt`` (weights + build config + meta), mirrored to MLflow with its tags."""
    path = Path(folder) / "model.pt"
    save_task_model(path, result.model, result.meta)
    tracker.set_tags({"stage": "train_task", "variant": result.meta["variant"], "method": result.meta["method"],
                      "uses_target_labels": result.meta["uses_target_labels"]})
    tracker.log_model(result.model, f"task_{result.meta['variant']}")
    return path
