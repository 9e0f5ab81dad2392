"""The contract between the training loop and an adaptation method.

Each optimiser step the loop hands the method a :class:`StepBatch` (a labelled batch, plus the views
of an unlabelled real batch the method asked for) and the task kind's network ``net``; the method
returns a :class:`StepOutput` with the loss to minimise. A method that works for every task kind
(:mod:`pipeline.task.kinds`) gets the supervised loss and features from ``ctx.kind.supervised``; one
that works for some task kinds only names them in ``kinds``. Besides that a method may own
extra trainable modules (a domain discriminator), override the learning-rate rule and keep state
that checkpoints must restore (running statistics). Nothing else about training is its business:
data order, checkpoints, DDP, tracking and model selection belong to the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Optional

import torch
from torch import nn

from pipeline.typed import ConfigError


def check_fields(checks: Iterable[tuple[str, bool, str]]) -> None:
    """For a method's ``Params.__post_init__``: raise a ConfigError naming the first field whose check
    failed, from ``(field, ok, expected)`` triples (the config adds where the field is)."""
    for name, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{name}: expected {expected}")


@dataclass(frozen=True)
class NoParams:
    """A method without parameters: ``variants.<v>.params`` must be empty."""


@dataclass
class MethodContext:
    """What a method may build on."""

    num_classes: int
    feature_dim: int
    device: torch.device
    kind: Any                         # the task kind (pipeline.task.kinds.TaskKind)
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module   # DDP-wraps a trainable module under torchrun


@dataclass
class StepBatch:
    x: torch.Tensor                                              # labelled images (N, C, H, W)
    y: Any                                                       # their labels: class indices (N,) or box dicts
    target: dict[str, torch.Tensor] = field(default_factory=dict)  # view name -> unlabelled real images
    source: dict[str, torch.Tensor] = field(default_factory=dict)  # view name -> other views of ``x`` (same rows)
    labelled_real: Optional[tuple[torch.Tensor, torch.Tensor]] = None   # a few labelled real images and their
                                                 # classes, augmented as ``x`` (variants with labelled_batch > 0)


@dataclass
class StepOutput:
    loss: torch.Tensor                  # what the optimiser minimises
    logits: Optional[torch.Tensor]      # logits of the labelled batch (train accuracy); None for detection
    terms: dict[str, torch.Tensor]      # named loss terms, unweighted (logged; a NaN in any stops training)
    stats: dict[str, float] = field(default_factory=dict)   # other per-step statistics, averaged per epoch


class Method:
    """Base class: supervised behaviour hooks with no extra modules, state or target data."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    kinds: ClassVar[Optional[tuple[str, ...]]] = None   # the task kinds it supports; None: every kind
    reads_labelled_real: ClassVar[bool] = False   # uses StepBatch.labelled_real (a variant's labelled_batch > 0)

    def __init__(self, params: Any, ctx: MethodContext):
        self.params, self.ctx = params, ctx

    @classmethod
    def target_views_of(cls, params: Any) -> dict[str, Optional[str]]:
        """Views of an unlabelled real batch needed per step: view name -> ``augment`` pipeline name
        (None: the variant's own pipeline, i.e. augmented like the labelled images). Empty: none."""
        return {}

    def target_views(self) -> dict[str, Optional[str]]:
        return self.target_views_of(self.params)

    def source_views(self) -> dict[str, Optional[str]]:
        """Other views of the labelled batch needed per step, besides the one the variant's ``augment``
        makes: view name -> ``augment`` pipeline name (None: the variant's own). The loop hands them in
        :attr:`StepBatch.source`, row for row with ``x``. Empty (the default): none."""
        return {}

    def target_batch_size(self, batch_size: int) -> int:
        """Real images per step, given the labelled batch size."""
        return batch_size

    def modules(self) -> dict[str, nn.Module]:
        """Extra trainable modules (plain, unwrapped): optimised with the model, checkpointed."""
        return {}

    def before_step(self, net: nn.Module, step: int, real: Optional[Any], labelled: Optional[Any] = None) -> None:
        """Called before each step's loss with the number of steps done and a fixed sample of the
        unaugmented real training images (a Dataset of at most the loop's ``REAL_SAMPLE`` images, the
        same every step; None when the method asked for no views): for state computed over the real
        set, such as refreshed cluster centroids. ``labelled``: the few labelled real images,
        unaugmented, with their classes (None unless the variant reads them). Default: nothing."""

    def loss(self, net: nn.Module, batch: StepBatch, progress: float) -> StepOutput:
        """The loss of one step; ``progress`` in [0, 1) is the share of training done."""
        raise NotImplementedError

    def learning_rate(self, lr0: float, progress: float) -> Optional[float]:
        """The method's own learning rate at ``progress``, or None for the task's schedule."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Non-module state a resumed run needs (tensors and plain values only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
