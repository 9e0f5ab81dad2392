"""``kill -9`` of the whole ``dvc repro`` process group in prepare, train_gan and translate, then a
plain ``dvc repro``: it finishes, the GAN resumes from its checkpoint and ends with the weights of an
uninterrupted run, no partial folder is left, and ``dvc status`` is clean (no stale lock blocks it)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import deep_update, dvc_env, make_project_copy

DVC = str(Path(sys.executable).parent / "dvc")
TINY = {
    "data": {"image_size": 16, "render": {"train_count": 300, "val_count": 30}},
    "gan": {"generator": {"width": 4, "blocks": 1}, "discriminator": {"width": 4, "layers": 2},
            "batch_size": 4, "epochs": 2, "decay_epochs": 1, "steps_per_epoch": 40, "pool_size": 4,
            "diagnostics_samples": 24},
    "translate": {"batch_size": 1},          # slow enough to be caught writing
    "variants": {"source_only": {"method": "supervised", "train": "data/prepared/source/train"},
                 "translated": {"method": "supervised", "train": "data/translated/source/train"}},
    "task": {"width": 4, "steps": 4, "eval_every": 2, "batch_size": 32},
}


def _start(repo: Path, log: Path) -> subprocess.Popen:
    """``dvc repro`` in a process group of its own (as a terminal would start it)."""
    with log.open("a") as out:
        return subprocess.Popen([DVC, "repro"], cwd=repo, env=dvc_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill_group_when(proc: subprocess.Popen, condition: Callable[[], bool], log: Path, what: str,
                     timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"dvc repro ended before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _partial(folder: Path, final: str) -> list[Path]:
    return [p for p in folder.glob(f".{final}.tmp-*")] if folder.is_dir() else []


def _files_in(folder: Path, pattern: str = "*") -> int:
    return sum(1 for p in folder.rglob(pattern) if p.is_file()) if folder.is_dir() else 0


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "provenance.json"):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _generator(repo: Path) -> dict[str, torch.Tensor]:
    return torch.load(repo / "models/gan/generator.pt", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_kill_9_in_prepare_train_gan_and_translate_then_plain_repro_finishes(tmp_path, default_raw):
    raw = {**deep_update(default_raw, TINY), "variants": TINY["variants"]}   # only what the kills need
    reference = make_project_copy(tmp_path / "reference", raw)
    straight = subprocess.run([DVC, "repro", "translate"], cwd=reference, env=dvc_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]

    repo = make_project_copy(tmp_path / "repo", raw)
    log = tmp_path / "repro.log"
    data, translated = repo / "data", repo / "data/translated/source"

    # 1. In prepare, while it writes its temporary folder.
    proc = _start(repo, log)
    _kill_group_when(proc, lambda: any(_files_in(p, "*.png") > 50 for p in _partial(data, "prepared")), log,
                     "prepare writing images")
    assert _partial(data, "prepared") and not (data / "prepared").exists()

    # 2. In train_gan, after its first checkpoint (epoch 1 of 3).
    proc = _start(repo, log)
    _kill_group_when(proc, lambda: (repo / "checkpoints/gan/last.pt").exists(), log, "the first GAN checkpoint")
    assert torch.load(repo / "checkpoints/gan/last.pt", weights_only=True)["epoch"] < 3
    assert not (repo / "models/gan/generator.pt").exists()
    assert not _partial(data, "prepared")                        # the next run cleaned prepare's leftovers

    # 3. In translate, while it writes its temporary folder (the GAN resumed and finished first).
    proc = _start(repo, log)
    _kill_group_when(proc, lambda: any(_files_in(p, "*.png") > 20 for p in _partial(translated, "train")), log,
                     "translate writing images")
    assert _partial(translated, "train") and not (translated / "train").exists()
    assert "resumed the GAN at epoch" in log.read_text()

    # 4. A plain dvc repro finishes everything.
    final = subprocess.run([DVC, "repro"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    status = subprocess.run([DVC, "status"], cwd=repo, env=dvc_env(), capture_output=True, text=True)
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    leftovers = [p for p in (repo / "data").rglob(".*") if ".tmp-" in p.name or p.name.endswith(".old")]
    assert leftovers == [] and not list((repo / "models").rglob(".*.tmp-*"))

    # The interrupted, resumed GAN ends exactly where the uninterrupted one did.
    expected, got = _generator(reference), _generator(repo)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert _folder_digest(repo / "data/translated/source/train") == \
        _folder_digest(reference / "data/translated/source/train")
