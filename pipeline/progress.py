"""Progress of a long loop as log lines, by time, where no progress bar is shown.

On a terminal the GAN shows a tqdm bar; under DVC, a batch job or ``2> log`` stderr is not a terminal
and a long stage would show nothing between its rounds or epochs (minutes apart on a big budget).
There :class:`Progress` logs one line at most every :data:`INTERVAL_S` seconds of its clock:

    train_task@dann: step 1200/4000 (30%), 1 min 52 s in, about 4 min 21 s left

The estimate is the mean rate since the loop (re)started, evaluations and checkpoints between rounds
included. Only rank 0 logs (:func:`log_progress`). Updating reads a clock and nothing else: no random
generator, no device synchronisation, so it changes no number of a run.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Optional, TextIO

INTERVAL_S = 20.0     # at most one progress line per this many seconds


def log_progress(is_main: bool, stream: Optional[TextIO] = None) -> bool:
    """Whether a loop logs its progress: on rank 0 (``is_main``), when ``stream`` (stderr) is no
    terminal; a terminal shows a bar, or nothing, as before."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return is_main and not (callable(isatty) and isatty())


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Logs ``<stage>: <unit> done/total (share), time in, about time left`` at most every ``interval``
    seconds (default :data:`INTERVAL_S`).

    ``done`` is where the loop starts (a resumed run's steps so far: the rate counts only this run's);
    ``clock`` (seconds, monotonic) is injectable so a test can check the timing without sleeping;
    ``enabled`` False makes :meth:`update` a no-op (see :func:`log_progress`).
    """

    def __init__(self, stage: str, total: int, done: int = 0, *, unit: str = "step",
                 log: Optional[logging.Logger] = None, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic, interval: Optional[float] = None):
        self.stage, self.total, self.unit, self.enabled = stage, total, unit, enabled
        self.log = log or logging.getLogger(__name__)
        self.clock, self.interval = clock, INTERVAL_S if interval is None else interval
        self.first = done
        self.started = self.last = clock() if enabled else 0.0

    def update(self, done: int) -> Optional[str]:
        """After ``done`` of ``total``: log and return the line when ``interval`` has passed since the
        last one (or the start), else None."""
        if not self.enabled:
            return None
        now = self.clock()
        if now - self.last < self.interval:
            return None
        self.last = now
        elapsed = now - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        left = f"about {duration((self.total - done) / rate)} left" if rate > 0 else "time left unknown"
        share = done / self.total if self.total else 1.0
        line = (f"{self.stage}: {self.unit} {done}/{self.total} ({share:.0%}), {duration(elapsed)} in, {left}")
        self.log.info("%s", line)
        return line
