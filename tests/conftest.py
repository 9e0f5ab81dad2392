"""Shared fixtures: tiny params built from the real params.yaml, one torch thread, no tracking."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
REPO = Path(__file__).resolve().parents[1]


def deep_update(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_update(out[k], v)
        else:
            out[k] = v
    return out


def tiny_budget(raw: dict, overrides: dict) -> dict:
    """``raw`` updated with ``overrides``, then every variant's own ``steps`` dropped: the tiny
    ``task.steps`` is then every variant's budget, whatever steps the shipped variants are given."""
    out = deep_update(raw, overrides)
    for variant in out.get("variants", {}).values():
        variant.pop("steps", None)
    return out


@pytest.fixture(autouse=True)
def _one_thread_no_tracking(monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("SIM2REAL_TRACKING", "off")


@pytest.fixture
def default_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def tiny_raw(default_raw) -> dict:
    """The default params with a tiny built-in scenario (16x16, 40 + 20 renders)."""
    return deep_update(default_raw, {"data": {"image_size": 16, "render": {"train_count": 40, "val_count": 20}}})


PROJECT_FILES = ("pyproject.toml", "dvc.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")
PROJECT_DIRS = ("pipeline", "stages")


def make_project_copy(dest: Path, raw_params: dict) -> Path:
    """A fresh git + DVC repository holding the project's code and the given params."""
    import shutil
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    for name in PROJECT_DIRS:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dest, check=True)
    return dest


def dvc_env() -> dict:
    """Environment for a ``dvc`` subprocess: this venv first on PATH, one thread, no tracking."""
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update({"OMP_NUM_THREADS": "1", "SIM2REAL_TRACKING": "off", "NO_ALBUMENTATIONS_UPDATE": "1"})
    return env
