"""What ``--help`` shows a user: plain text (no reStructuredText markup) that says what the command does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.cli import help_text

STAGES = ("prepare", "train_task", "train_gan", "translate", "evaluate", "report")


def test_help_text_drops_markup():
    assert help_text("Writes ``a.json``; see :mod:`pipeline.report` and :func:`~pipeline.io.write_json`.") == \
        "Writes a.json; see pipeline.report and write_json."


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help_is_plain_text(stage):
    shown = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--help"], cwd=REPO, capture_output=True,
                           text=True, env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "``" not in shown.stdout and ":mod:" not in shown.stdout and ":func:" not in shown.stdout
    assert f"DVC stage {stage}" in shown.stdout


def test_train_task_help_names_every_method():
    shown = subprocess.run([sys.executable, "-m", "stages.train_task", "--help"], cwd=REPO, capture_output=True,
                           text=True, env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"}).stdout
    assert "supervised or DANN" not in shown
    assert all(name in shown.replace("\n", " ") for name in ("supervised", "dann", "self_training"))
