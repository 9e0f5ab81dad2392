"""Device choice and optional DistributedDataParallel under ``torchrun``.

A plain ``python -m stages.<x>`` is a single process. Under ``torchrun --nproc_per_node N`` every
rank trains on its shard of each batch; ``nccl`` on GPUs, ``gloo`` on CPUs (so CI can test two CPU
ranks). Only rank 0 writes files and logs to MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import ConfigError
from pipeline.task.models import unwrap


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, key: str = "device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(name)


def init_runtime(device: str = "auto", key: str = "device") -> Runtime:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else run single-process.

    ``device`` is the params value and ``key`` its name (``task.device``), for the error message.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device, key)
    if world <= 1:
        return Runtime(dev)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world)


def wrap(model: nn.Module, rt: Runtime) -> nn.Module:
    """DDP-wrap a trainable network when distributed (each network on its own), else return it.

    Without ``find_unused_parameters`` (which would cost a graph traversal every iteration): every
    network here is used either whole or not at all by a step's loss. A loss weight of 0 that
    leaves a network out of the loss (the GAN's F with adversarial, cycle and identity weights 0)
    is fine: no gradient hook of that network fires, so its DDP reducer has nothing to wait for,
    its parameters keep ``grad=None`` on every rank and the optimiser skips them, and they stay
    identical everywhere (``tests/test_two_ranks.py`` runs that case). Only a network whose loss
    reaches *some* of its parameters would make DDP fail ("Expected to have finished reduction").
    """
    if not rt.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_buffers(rt: Runtime, *modules: nn.Module | None) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) of ``modules``.

    DDP broadcasts buffers at the start of each forward, so after an epoch's last forward each
    rank holds statistics updated by its own shard. Called once per epoch, before evaluation,
    model selection and the checkpoint, so that all ranks evaluate, select and end with the same
    weights. ``None`` entries are skipped.
    """
    if not rt.distributed:
        return
    with torch.no_grad():
        for module in modules:
            if module is not None:
                for buffer in unwrap(module).buffers():
                    dist.broadcast(buffer, src=0)


def barrier(rt: Runtime) -> None:
    if rt.distributed:
        dist.barrier()


def shutdown(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()
