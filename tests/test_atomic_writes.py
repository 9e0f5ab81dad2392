"""Atomic writes: a write that fails midway (the writer raising, the rename failing, a full disk) leaves
the previous file or folder exactly as it was and no temporary file or folder beside it; a full disk is
reported as one line naming what could not be written; stale checkpoints do not pile up."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import cli
from pipeline.checkpoint import KEEP_STALE, Checkpointer, save_atomic
from pipeline.io import (DiskFullError, atomic_directory, remove_leftovers, save_png, write_json, write_table,
                         write_text)
from pipeline.metrics.classification import write_predictions

PREVIOUS = b"the previous content\n"


def _failing(err: int = errno.EIO):
    def fail(*args, **kwargs):
        raise OSError(err, os.strerror(err))
    return fail


def _siblings(path: Path) -> list[str]:
    """Everything beside ``path`` but ``path`` itself: temporary files and folders a write left."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


WRITERS = {
    "write_json": lambda path: write_json(path, {"accuracy": 0.5}),
    "write_text": lambda path: write_text(path, "new text\n"),
    "write_table": lambda path: write_table(path, [{"epoch": 1, "loss": 0.5}]),
    "save_png": lambda path: save_png(np.zeros((4, 4, 1), np.uint8), path),
    "write_predictions": lambda path: write_predictions(path, [0, 1], [1, 1], ["a", "b"]),
    "save_atomic": lambda path: save_atomic({"w": torch.zeros(3)}, path),
}


@pytest.fixture
def previous(tmp_path) -> Path:
    path = tmp_path / "out" / "result.bin"
    path.parent.mkdir()
    path.write_bytes(PREVIOUS)
    return path


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_failed_rename_keeps_the_previous_file_and_leaves_no_tmp(previous, monkeypatch, writer):
    monkeypatch.setattr(os, "replace", _failing())
    with pytest.raises(OSError):
        WRITERS[writer](previous)
    assert previous.read_bytes() == PREVIOUS
    assert _siblings(previous) == []


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_writer_replaces_the_file_when_nothing_fails(previous, writer):
    WRITERS[writer](previous)
    assert previous.read_bytes() != PREVIOUS and _siblings(previous) == []


def test_a_serializer_raising_midway_leaves_no_tmp(previous):
    with pytest.raises(UnicodeEncodeError):
        write_text(previous, "written, then a character no encoding takes: \ud800")
    assert previous.read_bytes() == PREVIOUS and _siblings(previous) == []
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(previous, {"fine": 1, "not fine": object()})
    assert previous.read_bytes() == PREVIOUS and _siblings(previous) == []


def test_torch_save_raising_midway_keeps_the_checkpoint(previous, monkeypatch):
    def half_a_save(obj, fh):
        fh.write(b"half a checkpoint")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", half_a_save)
    with pytest.raises(RuntimeError, match="interrupted"):
        save_atomic({"w": torch.zeros(3)}, previous)
    assert previous.read_bytes() == PREVIOUS and _siblings(previous) == []


def test_remove_leftovers_removes_the_tmp_file_of_a_killed_write(tmp_path):
    final = tmp_path / "metrics.json"
    (tmp_path / ".metrics.json.tmp").write_text("{\"half")                 # a killed atomic file write
    (tmp_path / ".metrics.json.tmp-abc").mkdir()                           # a killed atomic_directory
    (tmp_path / ".metrics.json.old").mkdir()
    (tmp_path / ".other.json.tmp").write_text("not ours")
    removed = remove_leftovers(final)
    assert sorted(p.name for p in removed) == [".metrics.json.old", ".metrics.json.tmp", ".metrics.json.tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.tmp"]


# ------------------------------------------------------------------------------------------------
# atomic_directory
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    final = tmp_path / "prepared"
    (final / "source").mkdir(parents=True)
    (final / "source" / "manifest.csv").write_bytes(PREVIOUS)
    return final


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def fail_the_swap(monkeypatch, err: int) -> None:
    """``os.replace`` raises ``OSError(err)`` when it moves the finished temporary folder into place."""
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".prepared.tmp-"):
            raise OSError(err, os.strerror(err))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_a_failed_final_rename_puts_the_previous_folder_back(folder, monkeypatch):
    fail_the_swap(monkeypatch, errno.EXDEV)
    with pytest.raises(OSError, match="cross-device"):
        with atomic_directory(folder) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _contents(folder) == {"source/manifest.csv": PREVIOUS}
    assert _siblings(folder) == []


def test_disk_full_inside_a_folder_names_the_folder_and_keeps_it(folder):
    with pytest.raises(DiskFullError) as err:
        with atomic_directory(folder) as tmp:
            save_png(np.zeros((4, 4, 1), np.uint8), tmp / "source" / "000000.png")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(err.value)
    assert message.startswith(f"{folder}: ") and "disk is full" in message and "previous version is kept" in message
    assert "\n" not in message and ".tmp" not in message and err.value.errno == errno.ENOSPC
    assert _contents(folder) == {"source/manifest.csv": PREVIOUS}
    assert _siblings(folder) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_in_a_nested_file_write_names_the_outer_folder(folder, monkeypatch, err):
    """The innermost write fails; the message names the folder the user asked for, not a temporary file."""
    real_replace = os.replace

    def full_for_pngs(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(err, os.strerror(err))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_for_pngs)
    with pytest.raises(DiskFullError, match=rf"^{folder}: cannot write it: the disk is full") as caught:
        with atomic_directory(folder) as tmp:
            save_png(np.zeros((4, 4, 1), np.uint8), tmp / "source" / "000000.png")
    assert caught.value.errno == err
    assert _contents(folder) == {"source/manifest.csv": PREVIOUS} and _siblings(folder) == []


def test_disk_full_in_the_final_rename_names_the_folder(folder, monkeypatch):
    fail_the_swap(monkeypatch, errno.ENOSPC)
    with pytest.raises(DiskFullError, match=f"^{folder}: .*disk is full"):
        with atomic_directory(folder) as tmp:
            (tmp / "new.txt").write_text("new")
    assert _contents(folder) == {"source/manifest.csv": PREVIOUS} and _siblings(folder) == []


def test_disk_full_on_a_new_file_says_nothing_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "replace", _failing(errno.ENOSPC))
    path = tmp_path / "reports" / "stats.json"
    with pytest.raises(DiskFullError, match=f"^{path}: .*disk is full.*nothing was written"):
        write_json(path, {"a": 1})
    assert list(path.parent.iterdir()) == []


def test_a_stage_reports_a_full_disk_as_one_line_and_exit_2(previous, monkeypatch, capsys):
    def main(argv):
        monkeypatch.setattr(os, "replace", _failing(errno.ENOSPC))
        write_json(previous, {"accuracy": 0.5})

    monkeypatch.setattr(sys, "argv", ["stage"])
    with pytest.raises(SystemExit) as exit_:
        cli.run(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {previous}: ") and "disk is full" in err and "previous version is kept" in err
    assert "\n" not in err and "Traceback" not in err
    assert previous.read_bytes() == PREVIOUS and _siblings(previous) == []


# ------------------------------------------------------------------------------------------------
# stale checkpoints
# ------------------------------------------------------------------------------------------------


def test_only_the_newest_stale_checkpoints_are_kept(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for age, name in enumerate("abcd"):                       # moved aside long ago, oldest first
        stale = folder / f"stale-{name}.pt"
        save_atomic({"fingerprint": name}, stale)
        os.utime(stale, (1_000 + age, 1_000 + age))
    Checkpointer(folder, "e").save({"epoch": 1})
    os.utime(folder / "last.pt", (500, 500))                  # written before all of them: still the newest stale
    caplog.set_level("WARNING", logger="pipeline.checkpoint")

    assert Checkpointer(folder, "f").resume() is None
    assert KEEP_STALE == 3
    assert sorted(p.name for p in folder.iterdir()) == ["stale-c.pt", "stale-d.pt", "stale-e.pt"]
    removed = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert len(removed) == 1 and "stale-a.pt" in removed[0] and "stale-b.pt" in removed[0]
    assert torch.load(folder / "stale-e.pt", weights_only=True)["epoch"] == 1
