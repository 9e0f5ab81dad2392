"""The train_gan stage's training run: seeded data, the epoch loop, diagnostics, reports, checkpoints, export.

:class:`GanTrainer` drives :class:`pipeline.gan.cycle_gan.CycleGan` epoch by epoch with seeded data
sampling, per-epoch diagnostics (:mod:`pipeline.gan.diagnostics`), reports, MLflow logging and
full-state checkpoints; :func:`train_gan` is what the ``train_gan`` stage calls. The frozen task
model it reads comes from :mod:`pipeline.task.provision`.

Reproducibility: every random choice comes from a generator derived from ``params.seed``: network
initialisation (global RNG), batch order (a fresh generator per epoch and domain), the pools and
the Lipschitz interpolation (own generators, checkpointed). A checkpoint is written after each
epoch, so a rerun after an interruption continues from the last finished epoch and ends with
exactly the weights of an uninterrupted run (single process; under ``torchrun`` every rank
resumes from rank 0's state).

``budget`` multiplies ``gan.steps_per_epoch`` (:meth:`~pipeline.config.Params.effective`: the
learning-rate schedule keeps its shape and the per-epoch diagnostics their number); the trainer
reads only the effective settings. On a terminal rank 0 shows a tqdm bar per epoch; elsewhere it logs
a progress line at most every :data:`~pipeline.progress.INTERVAL_S` seconds (:mod:`pipeline.progress`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pipeline.checkpoint import Checkpointer
from pipeline.config import ConfigError, Params
from pipeline.data.manifest import preload_within
from pipeline.data.polarity import renders_inverted
from pipeline.data.sampling import DomainSampler
from pipeline.distributed import Runtime, barrier
from pipeline.gan.cycle_gan import CycleGan, Precision, check_geometry
from pipeline.gan.diagnostics import BalanceDiagnostics
from pipeline.gan.export import GENERATOR_FILE, export_generator
from pipeline.guards import check_finite
from pipeline.io import atomic_directory, save_png, write_json, write_table
from pipeline.progress import Progress, log_progress
from pipeline.provenance import execution, provenance, write_provenance
from pipeline.reproducibility import code_digest, content_digest, seed_everything
from pipeline.task.kinds import task_kind
from pipeline.task.provision import ensure_task_model, load_frozen_task_model

log = logging.getLogger(__name__)

FINGERPRINT_SECTIONS = ("seed", "data", "gan", "budget")   # budget: hashed only when not 1


def run_fingerprint(params: Params, prepared: str | Path, task_sha256: str) -> str:
    """Identity of a GAN run for its checkpoint: the stage's DVC dependencies, i.e. the params
    sections, the frozen task model, the training code and the prepared data it reads. When any of
    them changes DVC reruns the stage, and the persisted checkpoint must then not be resumed."""
    data = content_digest([Path(prepared) / "source", Path(prepared) / "target" / "train"])
    code = code_digest()
    return f"{params.fingerprint(*FINGERPRINT_SECTIONS)}-{task_sha256[:16]}-{code}-{data}"


# ------------------------------------------------------------------------------------------------
# Data: seeded, resumable batches
# ------------------------------------------------------------------------------------------------


@dataclass
class GanData:
    source: Dataset        # source/train, labelled (the task loss needs the labels)
    target: Dataset        # target/train, read without labels
    source_val: Dataset    # source/val, labelled (diagnostics only)

    @classmethod
    def from_prepared(cls, prepared: str | Path, params: Params) -> "GanData":
        """The three splits, each decoded into memory once while they fit ``data.preload_mb``
        (the rest streams from disk), so training steps do not pay for PNG decoding."""
        root, d, kind = Path(prepared), params.data, task_kind(params)
        def split(rel: str, labels: bool) -> Dataset:
            return kind.dataset(root / rel, params, labels=labels)
        data = cls(split("source/train", True), split("target/train", False), split("source/val", True))
        preload_within((data.source, data.target, data.source_val), d.preload_mb * 2**20)
        return data


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GanPaths:
    checkpoints: Path = Path("checkpoints/gan")
    models: Path = Path("models/gan")
    reports: Path = Path("reports/gan")


class GanTrainer:
    """Epoch loop around :class:`CycleGan` with diagnostics, reports, tracking and checkpoints."""

    def __init__(self, params: Params, data: GanData, task_model: nn.Module, fingerprint: str,
                 paths: GanPaths = GanPaths(), tracker: Any = None, runtime: Optional[Runtime] = None):
        gan = params.effective().gan     # budget applied: steps_per_epoch scaled
        self.params, self.gan, self.paths = params, gan, paths
        self.runtime = runtime or Runtime(torch.device("cpu"))
        self.tracker = tracker
        check_geometry(gan, params.data.image_size)
        if gan.batch_size % self.runtime.world_size:
            raise ConfigError(f"gan.batch_size: {gan.batch_size} is not divisible by the "
                              f"{self.runtime.world_size} torchrun processes")
        seed_everything(params.seed)
        precision = Precision(self.runtime.device, gan.amp, gan.channels_last)
        kind = self.kind = task_kind(params)
        self.model = CycleGan(gan, params.data.channels, task_model, kind, precision, params.seed, self.runtime)
        rank, world = self.runtime.rank, self.runtime.world_size
        self.source = DomainSampler(data.source, "source", gan.batch_size, gan.steps_per_epoch, params.seed, rank, world,
                                    kind.collate)
        self.target = DomainSampler(data.target, "target", gan.batch_size, gan.steps_per_epoch, params.seed, rank, world,
                                    kind.collate)
        self.diagnostics = None
        if self.runtime.is_main:
            self.diagnostics = BalanceDiagnostics(
                self.model.task_model, kind, data.source_val, data.target, gan.mode, gan.lipschitz_interpolation,
                gan.diagnostics_samples, params.seed, self.runtime.device)
        self.checkpointer = Checkpointer(paths.checkpoints, fingerprint)
        self.fingerprint = fingerprint
        self.history: list[dict[str, float]] = []
        self.epoch = 0          # finished epochs
        self.step = 0           # finished iterations
        self.resumed_from = 0
        self.progress: Optional[Progress] = None   # set by fit()

    @property
    def total_epochs(self) -> int:
        return self.gan.epochs + self.gan.decay_epochs

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, max_epochs: Optional[int] = None) -> dict[str, float]:
        """Train from the last checkpoint up to ``total_epochs`` (or stop after ``max_epochs``
        finished epochs, as an interruption would); returns the last epoch's record."""
        self.resume()
        stop = self.total_epochs if max_epochs is None else min(max_epochs, self.total_epochs)
        self.progress = Progress("train_gan", self.total_epochs * self.gan.steps_per_epoch, self.step,
                                 unit="iteration", log=log, enabled=log_progress(self.runtime.is_main))
        while self.epoch < stop:
            started = time.perf_counter()
            record = {"epoch": self.epoch + 1, **self.train_epoch(self.epoch)}
            record["time/epoch_seconds"] = time.perf_counter() - started
            self.epoch += 1
            if self.runtime.is_main:
                record.update(self.diagnostics.evaluate(self.model.nets.G, self.model.nets.F,
                                                        self.model.nets.D_real, self.model.nets.D_source))
                self.history.append(record)
                self.publish(record)
                self.save_checkpoint()
                self.log_epoch(record)
            barrier(self.runtime)
        return self.history[-1] if self.history else {}

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """``steps_per_epoch`` iterations; returns each loss term's mean over the epoch."""
        source_idx, target_idx = self.source.epoch_indices(epoch), self.target.epoch_indices(epoch)
        lr = self.model.opt_G.param_groups[0]["lr"]  # at the epoch's start (it decays per iteration)
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.runtime.device))
        bar = tqdm(range(self.gan.steps_per_epoch), desc=f"gan epoch {epoch + 1}/{self.total_epochs}",
                   disable=not (self.runtime.is_main and sys.stderr.isatty()), leave=False, dynamic_ncols=True)
        for i in bar:
            x, labels = self.source.load(source_idx[i])
            y, _ = self.target.load(target_idx[i])
            terms = self.model.train_step(x, labels, y)
            self.step += 1
            check_finite(terms, "train_gan", self.step, epoch + 1, self.checkpointer.path, self.runtime.distributed)
            for k, v in terms.items():
                sums[k] += v.float()
            if self.progress is not None:
                self.progress.update(self.step)
            if i % 10 == 0 or i == self.gan.steps_per_epoch - 1:
                bar.set_postfix({k: f"{float(terms[k]):.3f}" for k in ("g_total", "d_total", "cycle_source", "task")
                                 if k in terms})
        bar.close()
        n = self.gan.steps_per_epoch
        means = {f"loss/{k}": float(v) / n for k, v in sums.items()}
        means["lr"] = lr
        return means

    def log_epoch(self, r: dict[str, float]) -> None:
        d_source = (f"  D_source {r['d_source/acc_real']:.2f}/{r['d_source/acc_fake']:.2f}"
                    if "d_source/acc_real" in r else "")   # one-sided: no D_source
        log.info("epoch %d/%d  G %.3f  D %.3f  | D_real acc real/fake %.2f/%.2f%s | "
                 "task %s %.3f -> %.3f | FD %.2f -> %.2f  PAD %.2f -> %.2f | |x-G(x)| %.3f | %.0fs",
                 r["epoch"], self.total_epochs, r.get("loss/g_total", math.nan), r.get("loss/d_total", math.nan),
                 r["d_real/acc_real"], r["d_real/acc_fake"], d_source,
                 self.kind.short_score, r[f"task/{self.kind.short_score}_source_val"],
                 r[f"task/{self.kind.short_score}_translated_val"], r["gap/fd_source_real"],
                 r["gap/fd_translated_real"], r["gap/pad_source_real"], r["gap/pad_translated_real"],
                 r["copy/l1_source_translated"], r["time/epoch_seconds"])

    # -- outputs -------------------------------------------------------------------------------

    def publish(self, record: dict[str, float]) -> None:
        """Per epoch: MLflow metrics and sample grid, ``history.csv`` and ``metrics.json``."""
        epoch = int(record["epoch"])
        if self.tracker is not None:
            self.tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            grid = self.diagnostics.sample_grid(self.model.nets.G, self.model.nets.F, scale=2)
            self.tracker.log_image(grid, f"samples/epoch_{epoch:03d}.png")
        self.write_reports()

    def write_reports(self) -> None:
        self.paths.reports.mkdir(parents=True, exist_ok=True)
        write_table(self.paths.reports / "history.csv", self.history)
        if self.history:
            final = self.history[-1]
            write_json(self.paths.reports / "metrics.json",
                       {**final, "epochs_total": self.total_epochs, "steps": self.step,
                        "effective": self.params.effective_gan(), "finished": self.epoch >= self.total_epochs})

    def save_samples(self, scale: int = 3) -> Path:
        path = self.paths.reports / "samples.png"
        save_png(self.diagnostics.sample_grid(self.model.nets.G, self.model.nets.F, scale=scale), path)
        return path

    # -- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        self.checkpointer.save({**self.model.state_dict(), "epoch": self.epoch, "step": self.step,
                                "history": self.history})

    def resume(self) -> None:
        """Load the last checkpoint of these params (rank 0 first: it moves a stale one aside)."""
        state = self.checkpointer.resume() if self.runtime.is_main else None
        barrier(self.runtime)
        if not self.runtime.is_main:
            state = self.checkpointer.resume()
        if state is None:
            return
        self.model.load_state_dict(state)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.resumed_from = self.epoch
        log.info("resumed the GAN at epoch %d/%d (step %d)", self.epoch, self.total_epochs, self.step)

    def export(self, path: Path, task_sha256: str, source_inverted: bool = False) -> None:
        """The generator alone, with what translation needs in its meta (see :mod:`pipeline.gan.export`;
        ``source_inverted``: prepare wrote the renders it learnt from inverted)."""
        d = self.params.data
        meta = {"image_size": d.image_size, "channels": d.channels, "classes": list(d.classes),
                "source_inverted": source_inverted,
                "direction": "source->real", "value_range": [-1.0, 1.0],
                "params_hash": self.params.fingerprint(*FINGERPRINT_SECTIONS), "fingerprint": self.fingerprint,
                "task_model_sha256": task_sha256, "epochs": self.epoch, "steps": self.step}
        export_generator(path, self.model.nets.G, meta)


# ------------------------------------------------------------------------------------------------
# The stage's entry point
# ------------------------------------------------------------------------------------------------


def train_gan(params: Params, prepared: str | Path = "data/prepared",
              task_model_path: str | Path = "models/task/source_only/model.pt",
              paths: GanPaths = GanPaths(), tracker: Any = None, runtime: Optional[Runtime] = None,
              max_epochs: Optional[int] = None) -> dict[str, Any]:
    """Train (or resume) the GAN, then on rank 0 export ``generator.pt`` and the reports.

    Returns ``{"metrics": last record, "generator": path or None, "finished": bool,
    "networks": the four trained (plain) networks, ...}``.
    """
    runtime = runtime or Runtime(torch.device("cpu"))
    task_model_path = ensure_task_model(task_model_path, params, runtime, Path(paths.checkpoints) / "source_only_task",
                                        prepared)
    task_model, task_sha = load_frozen_task_model(task_model_path, params, runtime.device)
    fingerprint = run_fingerprint(params, prepared, task_sha)
    data = GanData.from_prepared(prepared, params)
    trainer = GanTrainer(params, data, task_model, fingerprint, paths, tracker, runtime)
    metrics = trainer.fit(max_epochs)
    finished = trainer.epoch >= trainer.total_epochs
    result = {"metrics": metrics, "generator": None, "finished": finished, "fingerprint": fingerprint,
              "task_model": str(task_model_path), "task_model_sha256": task_sha,
              "resumed_from_epoch": trainer.resumed_from, "networks": trainer.model.nets}
    if runtime.is_main and finished:
        trainer.write_reports()
        result["samples"] = trainer.save_samples()
        with atomic_directory(paths.models) as tmp:
            trainer.export(tmp / GENERATOR_FILE, task_sha, renders_inverted(prepared))
            record = provenance(params, "train_gan", FINGERPRINT_SECTIONS, fingerprint=fingerprint,
                                task_model=str(task_model_path), task_model_sha256=task_sha,
                                effective=params.effective_gan())
            write_provenance(tmp, record)
        if tracker is not None:
            tracker.log_dict(execution({**record, "resumed_from_epoch": trainer.resumed_from}), "provenance.json")
        result["generator"] = Path(paths.models) / GENERATOR_FILE
    barrier(runtime)
    return result
