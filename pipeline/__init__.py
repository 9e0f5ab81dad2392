"""sim2real: synthetic-to-real domain adaptation of vision models as a reproducible DVC pipeline."""

import os as _os
import sys as _sys

# OpenMP threads that wait for work sleep instead of spinning, unless the user chose otherwise. OpenMP
# reads this once, when torch loads, so it is set here: every stage imports this package before torch.
# Why (measured in bench/bench_threads.py, see docs/results.md, "CPU settings"): beside another torch job,
# spinning threads made a GAN iteration ~50x slower; sleeping ones 1.2x, for ~9% when alone.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TORCH_LOADED_FIRST = "torch" in _sys.modules  # then the line above came too late for this process
