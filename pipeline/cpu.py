"""CPU settings every stage applies before it computes anything (see :func:`pipeline.cli.run`).

**Denormal numbers are flushed to zero.** Floats below 1.2e-38 ("denormals") take a slow
micro-coded path on x86 CPUs, often 10-100x per operation. A GAN meets them all the time: black
image backgrounds, saturated tanh outputs and decaying Adam moments produce activations and
gradients that underflow gradually, and then every convolution touching them crawls. Measured on
the 2-core CI machine (README, "CPU settings"): a GAN epoch on a grey user data set ran twice as long
as the same network on the built-in set until the flush was on. Flushing changes results only by
values below 1.2e-38, far under float32 rounding of any loss here. The flag (x86 FTZ/DAZ) belongs to
each thread and new threads copy it from the thread that starts them, so it must be set before torch
starts its OpenMP workers: :func:`configure_cpu` is the first thing a stage does.

**Threads wait passively.** ``pipeline/__init__.py`` sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user
set it (OpenMP reads it when torch loads, so it must be set before): OpenMP threads that wait for
the next parallel region sleep instead of spinning. Measured with ``bench/bench_threads.py`` on the
2-core machine, a GAN iteration (default config) beside another torch job ran 51x slower with
spinning threads and 1.2x slower with sleeping ones; beside one busy Python process 3x and 1.3x;
alone, sleeping costs about 9% (``OMP_WAIT_POLICY=ACTIVE`` wins that back on a dedicated machine).
The thread count stays torch's default, one intra-op thread per core (``OMP_NUM_THREADS`` overrides):
one thread alone ran at about half the speed.
"""

from __future__ import annotations

import os

import torch


_flushing = False


def configure_cpu() -> dict[str, object]:
    """Flush denormals to zero (where the CPU supports it); return what is in force, for the logs."""
    global _flushing
    _flushing = bool(torch.set_flush_denormal(True))
    return describe()


def describe() -> dict[str, object]:
    """The CPU settings of this process: threads, the OpenMP environment and the denormal flush."""
    from pipeline import TORCH_LOADED_FIRST

    policy = os.environ.get("OMP_WAIT_POLICY", "")
    if TORCH_LOADED_FIRST:
        policy += " (torch was loaded before pipeline: the OpenMP default may be in force)"
    return {"threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "omp_wait_policy": policy, "flush_denormal": _flushing}
