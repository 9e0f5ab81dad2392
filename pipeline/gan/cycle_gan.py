"""The CycleGAN model: its networks by role, where they compute, and one training iteration.

Balanced CycleGAN: G (source -> real), F (real -> source), D_real and D_source. With
``gan.structure: one_sided`` only G and D_real exist (a SimGAN-style refiner: adversarial,
self-regularisation and the other one-sided terms; no F, no D_source, no cycle).

:class:`CycleGan` owns the networks, their optimisers, schedulers and fake-image pools and runs one
training iteration (:meth:`CycleGan.train_step`); :class:`pipeline.gan.trainer.GanTrainer` drives it
epoch by epoch, the benchmark directly. Its random state: network initialisation from the global RNG
(seeded by the caller), the pools and the Lipschitz interpolation from own generators derived from
the seed (part of :meth:`CycleGan.state_dict`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pipeline.config import ConfigError, GanParams
from pipeline.distributed import Runtime, wrap
from pipeline.gan.losses import (adversarial_loss, constancy_loss, cycle_loss, discriminator_loss, distance_loss,
                                 freeze, identity_loss, lipschitz_pairs, lipschitz_penalty, perceptual_loss,
                                 self_distance_loss, similarity_loss)
from pipeline.gan.networks import PatchDiscriminator, ResnetGenerator
from pipeline.gan.pool import ImagePool
from pipeline.reproducibility import derive_seed, seeded_generator
from pipeline.task.kinds import TaskKind

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

    ``kind`` is the task kind of the frozen ``task_model`` (:func:`pipeline.task.kinds.task_kind`): it
    moves the labels to the device and computes the task, constancy and perceptual terms.

    ``self.nets`` holds the plain modules (state dicts, diagnostics, export); ``self.run`` the same
    modules as trained: DDP-wrapped under torchrun and optionally ``torch.compile``d. The
    generator step reads the discriminators through ``self.nets`` (frozen, never DDP) so that only
    the generators' gradients are reduced in that step.
    """

    def __init__(self, gan: GanParams, channels: int, task_model: nn.Module, kind: TaskKind, precision: Precision,
                 seed: int, runtime: Optional[Runtime] = None):
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
