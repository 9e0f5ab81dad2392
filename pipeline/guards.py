"""Stop training as soon as a loss stops being a finite number.

A NaN or infinite loss poisons the weights in the next optimiser step and every checkpoint after it.
The training loops call :func:`check_finite` on each step's loss terms; the first non-finite term
stops the stage with :class:`NonFiniteLossError`, whose one-line message names the term, the step and
the checkpoint that is kept. Checkpoints are only written at the end of an epoch, after every step of
it passed this check, so the last one on disk is always a good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
import torch.distributed as dist


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the message names the stage, the term and the step."""


def first_non_finite(terms: Mapping[str, torch.Tensor | float]) -> Optional[tuple[str, float]]:
    """``(name, value)`` of the first term that is NaN or +-inf, else None (one device sync)."""
    if not terms:
        return None
    names = list(terms)
    device = next((v.device for v in terms.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    values = torch.stack([torch.as_tensor(terms[k], device=device).detach().float().reshape(())
                          for k in names]).cpu()
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad) == 0:
        return None
    i = int(bad[0, 0])
    return names[i], float(values[i])


def check_finite(terms: Mapping[str, torch.Tensor | float], stage: str, step: int, epoch: int,
                 checkpoint: Optional[str | Path], distributed: bool = False) -> None:
    """Raise :class:`NonFiniteLossError` when any of ``terms`` is NaN or infinite.

    ``step`` is the 1-based optimiser step that produced the terms, ``epoch`` the 1-based epoch it
    belongs to. Under torchrun every rank learns whether any rank saw a bad term (one all-reduce),
    so all ranks stop together instead of one waiting forever in the next collective.
    """
    found = first_non_finite(terms)
    if distributed and dist.is_initialized():
        flag = torch.tensor([0.0 if found is None else 1.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if found is None and float(flag) > 0:
            found = ("<on another rank>", float("nan"))
    if found is None:
        return
    name, value = found
    kept = (f"the last good checkpoint {checkpoint} is kept" if checkpoint and Path(checkpoint).exists()
            else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"{stage}: loss term {name!r} became {value} at step {step} (epoch {epoch}); training stopped, "
        f"{kept} and nothing was exported. Lower the learning rate or a loss weight, or check the input images")
