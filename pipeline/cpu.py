"""CPU settings every stage applies before it computes anything (see :func:`pipeline.cli.run`).

**Denormal numbers are flushed to zero.** Floats below 1.2e-38 ("denormals") take a slow
micro-coded path on x86 CPUs, often 10-100x per operation, and a network whose activations or
gradients underflow gradually (saturated tanh outputs, vanishing gradients) then crawls. Measured in
``bench/bench_gan.py`` at the reference size: one unflushed run had the GAN iteration at 3.0-5.7
images/s, the next, flushed, at 11.5-11.8; the slowdown comes and goes with the networks' state and
was not seen over whole GAN runs on the built-in and grey scenarios. Flushing changes results only
by values below 1.2e-38, far under float32 rounding of any loss here. The flag (x86 FTZ/DAZ) belongs
to each thread and new threads copy it from the thread that starts them, so it must be set before
torch starts its OpenMP workers: :func:`configure_cpu` is the first thing a stage does.

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


def configure_cpu() -> dict[str, object]:
    """Flush denormals to zero (where the CPU supports it); return what is in force, for the logs."""
    torch.set_flush_denormal(True)
    return describe()


def flushing_denormals() -> bool:
    """Whether this thread flushes denormals now (torch has no getter: a denormal times 2 tells)."""
    return float(torch.tensor([1e-39]) * 2) == 0.0


def describe() -> dict[str, object]:
    """The CPU settings of this process: threads, the OpenMP environment and the denormal flush."""
    from pipeline import TORCH_LOADED_FIRST

    policy = os.environ.get("OMP_WAIT_POLICY", "")
    if TORCH_LOADED_FIRST:
        policy += " (torch was loaded before pipeline: the OpenMP default may be in force)"
    return {"threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "omp_wait_policy": policy, "flush_denormal": flushing_denormals()}
