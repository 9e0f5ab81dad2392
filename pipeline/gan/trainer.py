"""Balanced CycleGAN training: G (source -> real), F (real -> source), D_real and D_source.

With ``gan.structure: one_sided`` only G and D_real exist (a SimGAN-style refiner: adversarial,
self-regularisation and the other one-sided terms; no F, no D_source, no cycle).

:class:`CycleGan` owns the four networks, their optimisers, schedulers and fake-image pools and
runs one training iteration (:meth:`CycleGan.train_step`); the benchmark drives it directly.
:class:`GanTrainer` adds seeded data sampling, per-epoch diagnostics, reports, MLflow logging and
full-state checkpoints; :func:`train_gan` is what the ``train_gan`` stage calls.

Reproducibility: every random choice comes from a generator derived from ``params.seed``: network
initialisation (global RNG), batch order (a fresh generator per epoch and domain), the pools and
the Lipschitz interpolation (own generators, checkpointed). A checkpoint is written after each
epoch, so a rerun after an interruption continues from the last finished epoch and ends with
exactly the weights of an uninterrupted run (single process; under ``torchrun`` every rank
resumes from rank 0's state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pipeline.checkpoint import Checkpointer
from pipeline.config import ConfigError, GanParams, Params
from pipeline.data.manifest import preload_within
from pipeline.data.polarity import renders_inverted
from pipeline.data.sampling import DomainSampler
from pipeline.distributed import Runtime, barrier, wrap
from pipeline.gan.diagnostics import BalanceDiagnostics
from pipeline.gan.export import GENERATOR_FILE, export_generator
from pipeline.gan.losses import (adversarial_loss, constancy_loss, cycle_loss, discriminator_loss, distance_loss,
                                 freeze, identity_loss, lipschitz_pairs, lipschitz_penalty, perceptual_loss,
                                 self_distance_loss, similarity_loss)
from pipeline.gan.networks import PatchDiscriminator, ResnetGenerator
from pipeline.gan.pool import ImagePool
from pipeline.guards import check_finite
from pipeline.io import atomic_directory, save_png, write_json, write_table
from pipeline.provenance import execution, provenance, write_provenance
from pipeline.reproducibility import code_digest, content_digest, derive_seed, file_sha256, seed_everything, seeded_generator
from pipeline.task.kinds import KINDS, TaskKind, task_kind

log = logging.getLogger(__name__)

#: generator loss term -> the ``gan.weights`` entry that scales it (a weight of 0 skips the term)
GENERATOR_TERMS = {
    "adv_g": "adversarial", "adv_f": "adversarial",
    "cycle_source": "cycle", "cycle_real": "cycle",
    "identity_real": "identity", "identity_source": "identity",
    "similarity": "similarity",
    "task": "task",
    "constancy": "constancy",
    "perceptual": "perceptual",
    "distance": "distance",
    "self_distance": "self_distance",
}
FINGERPRINT_SECTIONS = ("seed", "data", "gan")
TASK_MODEL_HINT = "run `dvc repro train_task@source_only` (or `python -m stages.train_task --variant source_only`) first"


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def run_fingerprint(params: Params, prepared: str | Path, task_sha256: str) -> str:
    """Identity of a GAN run for its checkpoint: the stage's DVC dependencies, i.e. the params
    sections, the frozen task model, the training code and the prepared data it reads. When any of
    them changes DVC reruns the stage, and the persisted checkpoint must then not be resumed."""
    data = content_digest([Path(prepared) / "source", Path(prepared) / "target" / "train"])
    code = code_digest()
    return f"{params.fingerprint(*FINGERPRINT_SECTIONS)}-{task_sha256[:16]}-{code}-{data}"


def lr_factor(step: int, constant_steps: int, decay_steps: int) -> float:
    """1 for the first ``constant_steps`` iterations, then linearly down to 0 over ``decay_steps``."""
    if step < constant_steps or decay_steps == 0:
        return 1.0
    return max(0.0, 1.0 - (step - constant_steps) / decay_steps)


def set_requires_grad(modules: Iterable[nn.Module], flag: bool) -> None:
    for module in modules:
        module.requires_grad_(flag)


@dataclass
class Networks:
    """The networks of a CycleGAN, by role; F and D_source are None in ``one_sided`` mode."""

    G: nn.Module                         # source -> real
    F: Optional[nn.Module] = None        # real -> source
    D_real: Optional[nn.Module] = None   # real vs G(source)
    D_source: Optional[nn.Module] = None  # source vs F(real)

    def items(self) -> list[tuple[str, nn.Module]]:
        """(name, network) of the networks that exist, in the order G, F, D_real, D_source."""
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    @property
    def two_sided(self) -> bool:
        return self.F is not None

    def generators(self) -> list[nn.Module]:
        return [net for net in (self.G, self.F) if net is not None]

    def critics(self) -> list[nn.Module]:
        return [net for net in (self.D_real, self.D_source) if net is not None]

    @classmethod
    def build(cls, gan: GanParams, channels: int) -> "Networks":
        """Built in the order G, F, D_real, D_source from the global RNG (seeded by the caller)."""
        g, d = dataclasses.asdict(gan.generator), dataclasses.asdict(gan.discriminator)
        two_sided = gan.structure == "cycle"
        G = ResnetGenerator(channels, channels, **g)
        F = ResnetGenerator(channels, channels, **g) if two_sided else None
        D_real = PatchDiscriminator(channels, **d)
        D_source = PatchDiscriminator(channels, **d) if two_sided else None
        return cls(G=G, F=F, D_real=D_real, D_source=D_source)


@dataclass(frozen=True)
class Precision:
    """Where and how tensors are computed: device, memory format and autocast (``gan.amp``)."""

    device: torch.device
    amp: str = "none"
    channels_last: bool = False

    def autocast(self):
        if self.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def full_precision(self):
        """Autocast off (the Lipschitz penalty's double backward runs in float32)."""
        if self.amp == "none":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def module(self, m: nn.Module) -> nn.Module:
        m = m.to(self.device)
        return m.to(memory_format=torch.channels_last) if self.channels_last else m


def check_geometry(gan: GanParams, image_size: int) -> None:
    """Fail early, naming the key, when the image size does not fit the networks."""
    factor = 2 ** gan.generator.downsamplings
    if image_size % factor:
        raise ConfigError(f"gan.generator.downsamplings: data.image_size {image_size} is not divisible by "
                          f"2**{gan.generator.downsamplings} = {factor}")
    try:
        PatchDiscriminator(1, 1, gan.discriminator.layers).output_size(image_size, image_size)
    except ValueError as exc:
        raise ConfigError(f"gan.discriminator.layers: {exc}") from None


# ------------------------------------------------------------------------------------------------
# The model: networks, optimisers, pools and one iteration
# ------------------------------------------------------------------------------------------------


class CycleGan:
    """Networks, Adam optimisers (G+F, D_real+D_source), linear-decay schedulers, pools, one step.

    In ``one_sided`` mode (no F, no D_source) the same class trains G against D_real alone: the
    terms that need F (cycle, F's adversarial and identity terms) and D_source are not computed.

    ``self.nets`` holds the plain modules (state dicts, diagnostics, export); ``self.run`` the same
    modules as trained: DDP-wrapped under torchrun and optionally ``torch.compile``d. The
    generator step reads the discriminators through ``self.nets`` (frozen, never DDP) so that only
    the generators' gradients are reduced in that step.
    """

    def __init__(self, gan: GanParams, channels: int, task_model: nn.Module, precision: Precision,
                 seed: int, runtime: Optional[Runtime] = None, kind: TaskKind = KINDS["classification"]):
        self.gan, self.weights, self.precision, self.kind = gan, gan.weights, precision, kind
        self.runtime = runtime or Runtime(precision.device)
        self.task_model = freeze(task_model.to(precision.device))
        self.nets = Networks.build(gan, channels)
        for _, net in self.nets.items():
            precision.module(net)
        self.run = self._prepare_for_training(gan.compile)

        generator_params = [p for net in self.nets.generators() for p in net.parameters()]
        critic_params = [p for net in self.nets.critics() for p in net.parameters()]
        self.opt_G = torch.optim.Adam(generator_params, lr=gan.lr, betas=gan.betas)
        self.opt_D = torch.optim.Adam(critic_params, lr=gan.lr, betas=gan.betas)
        constant, decay = gan.epochs * gan.steps_per_epoch, gan.decay_epochs * gan.steps_per_epoch
        self.schedulers = [LambdaLR(opt, lambda step: lr_factor(step, constant, decay))
                           for opt in (self.opt_G, self.opt_D)]
        self.scaler = torch.amp.GradScaler(precision.device.type) if gan.amp == "fp16" else None

        rank = self.runtime.rank
        self.pool_real = ImagePool(gan.pool_size, seed=derive_seed(seed, "pool_real", rank))
        self.pool_source = ImagePool(gan.pool_size, seed=derive_seed(seed, "pool_source", rank)) \
            if self.nets.two_sided else None
        self.lipschitz_rng = seeded_generator(seed, "lipschitz", rank)

    def _prepare_for_training(self, compile_: bool) -> Networks:
        """DDP-wrap each network when distributed; compile the generators (and the critics when the
        Lipschitz penalty, whose double backward torch.compile does not support, is off).

        A network that zero loss weights leave out of the generator loss (F when the adversarial,
        cycle and identity weights are 0) is wrapped too: DDP then reduces nothing for it and it
        stays as initialised on every rank, without ``find_unused_parameters`` (see
        :func:`pipeline.distributed.wrap`)."""
        def prepare(name: str, net: nn.Module) -> nn.Module:
            net = wrap(net, self.runtime)
            if compile_ and (name in ("G", "F") or not self.weights.lipschitz):
                net = torch.compile(net)
            return net
        return Networks(**{name: prepare(name, net) for name, net in self.nets.items()})

    def weight(self, term: str) -> float:
        return getattr(self.weights, GENERATOR_TERMS[term])

    # -- one iteration ---------------------------------------------------------------------------

    def train_step(self, x: torch.Tensor, labels: Any, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One update of G and F, then of both discriminators, on a source batch ``x`` (with its
        ``labels``: class indices, or box dicts for detection) and a real batch ``y``. Returns the
        detached loss terms (unweighted) and totals."""
        x, y = self.precision.tensor(x), self.precision.tensor(y)
        labels = self.kind.to_device(labels, self.precision.device)
        g_terms, fake_y, fake_x = self.generator_step(x, labels, y)
        d_terms = self.discriminator_step(x, y, fake_y, fake_x)
        if self.scaler is not None:
            self.scaler.update()
        for scheduler in self.schedulers:
            scheduler.step()
        return {**g_terms, **d_terms}

    def generator_terms(self, x: torch.Tensor, labels: torch.Tensor, y: torch.Tensor
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """The generator loss terms whose weight is > 0 (others are not computed), G(x) and F(y).

        The same terms as the textbook iteration (:mod:`pipeline.gan.reference`) with fewer network
        calls: with identity on, ``G`` translates ``x`` and its identity input ``y`` in one batch
        (``F`` likewise ``y`` and ``x``); instance norm keeps every sample independent, so the
        results are those of separate calls."""
        G, F, w, mode = self.run.G, self.run.F, self.weights, self.gan.mode
        if w.identity:
            fake_y, same_y = G(torch.cat([x, y])).split([len(x), len(y)])
        else:
            fake_y = G(x)
        fake_x = None
        if F is not None:
            if w.identity:
                fake_x, same_x = F(torch.cat([y, x])).split([len(y), len(x)])
            else:
                fake_x = F(y)
        terms: dict[str, torch.Tensor] = {}
        if w.adversarial:
            terms["adv_g"] = adversarial_loss(self.nets.D_real(fake_y), True, mode)
            if F is not None:
                terms["adv_f"] = adversarial_loss(self.nets.D_source(fake_x), True, mode)
        if w.cycle:   # config refuses cycle > 0 without F
            terms["cycle_source"] = cycle_loss(x, F(fake_y))
            terms["cycle_real"] = cycle_loss(y, G(fake_x))
        if w.identity:
            terms["identity_real"] = identity_loss(y, same_y)
            if F is not None:
                terms["identity_source"] = identity_loss(x, same_x)
        if w.similarity:
            terms["similarity"] = similarity_loss(x, fake_y)
        if w.task:
            terms["task"] = self.kind.gan_task_loss(self.task_model, x, fake_y, labels)
        if w.constancy:
            terms["constancy"] = constancy_loss(lambda b: self.kind.gap_features(self.task_model, b), x, fake_y)
        if w.perceptual:
            terms["perceptual"] = perceptual_loss(lambda b: self.kind.encoder_layers(self.task_model, b), x, fake_y)
        if w.distance:
            terms["distance"] = distance_loss(x, fake_y)
        if w.self_distance:
            terms["self_distance"] = self_distance_loss(x, fake_y)
        return terms, fake_y, fake_x

    def generator_step(self, x: torch.Tensor, labels: torch.Tensor, y: torch.Tensor
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        set_requires_grad(self.nets.critics(), False)
        with self.precision.autocast():
            terms, fake_y, fake_x = self.generator_terms(x, labels, y)
        if terms:
            total = sum(self.weight(name) * value.float() for name, value in terms.items())
            self._update(total, self.opt_G)
            terms["g_total"] = total
        return ({k: v.detach() for k, v in terms.items()}, fake_y.detach(),
                fake_x.detach() if fake_x is not None else None)

    def discriminator_step(self, x: torch.Tensor, y: torch.Tensor, fake_y: torch.Tensor,
                           fake_x: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Discriminator losses on real vs pooled fakes, plus the weighted Lipschitz penalties
        (D_real only when one-sided)."""
        set_requires_grad(self.nets.critics(), True)
        two_sided = self.nets.two_sided
        pooled_y = self.pool_real.query(fake_y)
        pooled_x = self.pool_source.query(fake_x) if two_sided else None
        with self.precision.autocast():
            terms = {"d_real": self._critic_loss(self.run.D_real, y, pooled_y)}
            if two_sided:
                terms["d_source"] = self._critic_loss(self.run.D_source, x, pooled_x)
        total = sum(t.float() for t in terms.values())
        if self.weights.lipschitz:
            with self.precision.full_precision():
                terms["lp_real"] = self._penalty(self.run.D_real, source=x, translated=fake_y, real=y)
                if two_sided:
                    terms["lp_source"] = self._penalty(self.run.D_source, source=y, translated=fake_x, real=x)
            total = total + self.weights.lipschitz * sum(terms[k] for k in ("lp_real", "lp_source") if k in terms)
        self._update(total, self.opt_D)
        terms["d_total"] = total
        return {k: v.detach() for k, v in terms.items()}

    def _critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        # One forward over both halves: instance norm keeps every sample independent.
        logits = critic(torch.cat([real, fake]))
        return discriminator_loss(logits[:len(real)], logits[len(real):], self.gan.mode)

    def _penalty(self, critic: nn.Module, source: torch.Tensor, translated: torch.Tensor,
                 real: torch.Tensor) -> torch.Tensor:
        a, b = lipschitz_pairs(self.gan.lipschitz_interpolation, source, translated, real)
        penalty, _ = lipschitz_penalty(critic, a.float(), b.float(), self.lipschitz_rng)
        return penalty

    def _update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: net.state_dict() for name, net in self.nets.items()},
            "optimizers": {"G": self.opt_G.state_dict(), "D": self.opt_D.state_dict()},
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "pools": {"real": self.pool_real.state_dict(),
                      "source": self.pool_source.state_dict() if self.pool_source is not None else None},
            "generators": {"lipschitz": self.lipschitz_rng.get_state()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = set(state["networks"])
        if saved != {name for name, _ in self.nets.items()}:
            raise ValueError(f"the checkpoint holds the networks {sorted(saved)}, this GAN has "
                             f"{[name for name, _ in self.nets.items()]} (gan.structure changed?)")
        for name, net in self.nets.items():
            net.load_state_dict(state["networks"][name])
        self.opt_G.load_state_dict(state["optimizers"]["G"])
        self.opt_D.load_state_dict(state["optimizers"]["D"])
        for scheduler, s in zip(self.schedulers, state["schedulers"]):
            scheduler.load_state_dict(s)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.pool_real.load_state_dict(state["pools"]["real"])
        if self.pool_source is not None:
            self.pool_source.load_state_dict(state["pools"]["source"])
        self.lipschitz_rng.set_state(state["generators"]["lipschitz"])


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
        gan = params.gan
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
        self.model = CycleGan(gan, params.data.channels, task_model, precision, params.seed, self.runtime, kind)
        rank, world = self.runtime.rank, self.runtime.world_size
        self.source = DomainSampler(data.source, "source", gan.batch_size, gan.steps_per_epoch, params.seed, rank, world,
                                    kind.collate)
        self.target = DomainSampler(data.target, "target", gan.batch_size, gan.steps_per_epoch, params.seed, rank, world,
                                    kind.collate)
        self.diagnostics = None
        if self.runtime.is_main:
            self.diagnostics = BalanceDiagnostics(
                self.model.task_model, data.source_val, data.target, gan.mode, gan.lipschitz_interpolation,
                gan.diagnostics_samples, params.seed, self.runtime.device, kind)
        self.checkpointer = Checkpointer(paths.checkpoints, fingerprint)
        self.fingerprint = fingerprint
        self.history: list[dict[str, float]] = []
        self.epoch = 0          # finished epochs
        self.step = 0           # finished iterations
        self.resumed_from = 0

    @property
    def total_epochs(self) -> int:
        return self.gan.epochs + self.gan.decay_epochs

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, max_epochs: Optional[int] = None) -> dict[str, float]:
        """Train from the last checkpoint up to ``total_epochs`` (or stop after ``max_epochs``
        finished epochs, as an interruption would); returns the last epoch's record."""
        self.resume()
        stop = self.total_epochs if max_epochs is None else min(max_epochs, self.total_epochs)
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
                        "finished": self.epoch >= self.total_epochs})

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


def ensure_task_model(path: str | Path, params: Params, runtime: Runtime, fallback_dir: str | Path,
                      prepared: str | Path = "data/prepared") -> Path:
    """``path`` when it exists; else the source-only task model trained here, as
    ``train_task@source_only`` would train it (same params, same seed), kept in ``fallback_dir``.

    The fallback serves a standalone ``python -m stages.train_gan``; under DVC the file is a dependency.
    Training resumes from (or, when finished, just reloads) its own checkpoint in ``fallback_dir``;
    ``model.pt`` is rewritten only when the weights changed, so its hash, part of the GAN's
    checkpoint fingerprint, stays put across reruns.
    """
    from pipeline.task.export import save_task_model
    from pipeline.task.train import train_task_model
    from pipeline.tracking import NullTracker

    path, fallback_dir = Path(path), Path(fallback_dir)
    if path.is_file():
        return path
    cached = fallback_dir / "model.pt"
    log.warning("%s is missing: using the source-only task model trained here (as `dvc repro "
                "train_task@source_only` would), in %s", path, cached)
    result = train_task_model(params, "source_only", runtime, NullTracker(), checkpoint_dir=fallback_dir,
                              reports_dir=fallback_dir, prepared=prepared, log=log)
    if runtime.is_main and not _same_weights(cached, result.model):
        save_task_model(cached, result.model, result.meta)
    barrier(runtime)
    return cached


def _same_weights(path: Path, model: nn.Module) -> bool:
    from pipeline.task.export import load_task_model

    if not path.is_file():
        return False
    try:
        saved = load_task_model(path)[0].state_dict()
    except Exception:  # an unreadable file is simply rewritten
        return False
    current = model.state_dict()
    return saved.keys() == current.keys() and all(torch.equal(saved[k], current[k].cpu()) for k in saved)


def load_frozen_task_model(path: str | Path, params: Params, device: torch.device) -> tuple[nn.Module, str]:
    """The source-only task model T, frozen, and the SHA-256 of its file; checks it fits the data."""
    from pipeline.task.export import load_task_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the frozen source-only task model is missing; the GAN's task loss "
                                f"and diagnostics need it: {TASK_MODEL_HINT}")
    model, meta = load_task_model(path, device)
    d = params.data
    expected = {"classes": list(d.classes), "channels": d.channels, "image_size": d.image_size}
    for key, value in expected.items():
        found = meta.get(key)
        if found is not None and (list(found) if key == "classes" else found) != value:
            raise ConfigError(f"data.{key}: {path} was trained with {key}={found!r}, params.yaml has {value!r}; "
                              f"{TASK_MODEL_HINT}")
    kind = meta.get("kind", "classification")
    if kind != params.task.kind:
        raise ConfigError(f"task.kind: {path} is a {kind} model, params.yaml has {params.task.kind!r}; {TASK_MODEL_HINT}")
    return freeze(model), file_sha256(path)


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
                                task_model=str(task_model_path), task_model_sha256=task_sha)
            write_provenance(tmp, record)
        if tracker is not None:
            tracker.log_dict(execution({**record, "resumed_from_epoch": trainer.resumed_from}), "provenance.json")
        result["generator"] = Path(paths.models) / GENERATOR_FILE
    barrier(runtime)
    return result
