"""Progress lines in logs (:mod:`pipeline.progress`): by time, off a terminal, rank 0, no number changed."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from pipeline import progress as progress_module
from pipeline.progress import INTERVAL_S, Progress, duration, log_progress
from test_gan_training import project  # noqa: F401  (fixture)


class FakeClock:
    def __init__(self):
        self.now, self.calls = 100.0, 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_logs_at_most_every_interval_with_share_and_time_left(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = Progress("train_task@dann", 100, clock=clock, log=logging.getLogger("t"))
    lines = []
    for step, at in ((1, 5.0), (2, 19.9), (10, 20.0), (11, 30.0), (12, 39.9), (20, 40.0), (21, 41.0)):
        clock.now = 100.0 + at
        lines.append(bar.update(step))
    assert lines[:2] == [None, None] and lines[3:5] == [None, None] and lines[6] is None
    # 10 steps in 20 s: 0.5 step/s, 90 left -> 180 s
    assert lines[2] == "train_task@dann: step 10/100 (10%), 20 s in, about 3 min 00 s left"
    # 20 steps in 40 s: 80 left -> 160 s
    assert lines[5] == "train_task@dann: step 20/100 (20%), 40 s in, about 2 min 40 s left"
    assert [r.getMessage() for r in caplog.records] == [lines[2], lines[5]]


def test_a_resumed_loop_measures_its_own_rate_and_the_interval_is_the_module_constant():
    clock = FakeClock()
    bar = Progress("train_gan", 1000, done=600, unit="iteration", clock=clock)
    clock.now += INTERVAL_S - 0.1
    assert bar.update(650) is None
    clock.now += 0.1
    assert bar.update(700) == "train_gan: iteration 700/1000 (70%), 20 s in, about 1 min 00 s left"
    assert INTERVAL_S == 20.0


def test_disabled_progress_neither_logs_nor_reads_the_clock(caplog):
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    bar = Progress("x", 10, clock=clock, enabled=False)
    clock.now += 1000
    assert bar.update(5) is None and clock.calls == 0 and caplog.records == []


def test_no_progress_known_yet_says_so():
    clock = FakeClock()
    bar = Progress("x", 10, done=3, clock=clock)
    clock.now += 30
    assert bar.update(3).endswith("3/10 (30%), 30 s in, time left unknown")


def test_only_rank_zero_off_a_terminal_logs():
    assert log_progress(True, io.StringIO()) is True
    assert log_progress(True, Terminal()) is False          # a terminal keeps its bar (or nothing), as before
    assert log_progress(False, io.StringIO()) is False      # other torchrun ranks never log
    assert log_progress(True, object()) is True             # a stream without isatty is no terminal


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (59.4, "59 s"), (60, "1 min 00 s"), (185, "3 min 05 s"),
                                           (3600, "1 h 00 min"), (3725, "1 h 02 min"), (-3, "0 s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


# ------------------------------------------------------------------------------------------------
# Both loops: train_task's steps and the GAN's iterations
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def every_update(monkeypatch):
    """Off a terminal, with a line after every update."""
    monkeypatch.setattr(progress_module, "INTERVAL_S", 0.0)
    monkeypatch.setattr("sys.stderr", io.StringIO())


def progress_lines(caplog, prefix: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_task_training_logs_each_step_and_changes_no_number(tmp_path, caplog, every_update, monkeypatch):
    from pipeline.distributed import Runtime
    from pipeline.task.train import train_task_model
    from tinydata import RecordingTracker, tiny_params, tiny_prepared

    caplog.set_level(logging.INFO)
    prepared = tiny_prepared(tmp_path)
    params = tiny_params(tmp_path, prepared, steps=4, eval_every=2)

    def train(tag):
        return train_task_model(params, "dann", Runtime(torch.device("cpu")), RecordingTracker(),
                                tmp_path / tag / "ckpt", tmp_path / tag / "reports", prepared=prepared)

    logged = train("logged")
    lines = progress_lines(caplog, "train_task@dann: step")
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "(100%)" in lines[-1]

    caplog.clear()
    monkeypatch.setattr("sys.stderr", Terminal())
    quiet = train("terminal")
    assert progress_lines(caplog, "train_task@") == []
    assert logged.history == quiet.history
    assert all(torch.equal(a, b) for a, b in zip(logged.model.state_dict().values(), quiet.model.state_dict().values()))


def test_gan_training_logs_each_iteration(project, caplog, every_update):
    from test_gan_training import run_stage

    caplog.set_level(logging.INFO)
    tmp_path = project                                   # tiny params: 1 + 1 epochs of 2 iterations
    run_stage(tmp_path)
    lines = progress_lines(caplog, "train_gan: iteration")
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
