"""A stage whose output folder is on a full disk stops with one line naming the folder, keeps the
previous output and leaves nothing half-written (a real 256 KiB tmpfs; skipped where mounting is not
permitted). The same behaviour without a mount, for every atomic writer, is in test_atomic_writes.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PREVIOUS = {"source/train/manifest.csv": b"path,label\nimages/000000.png,0\n", "provenance.json": b"{}\n"}


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs mounted at ``tmp_path/disk``, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_prepare_on_a_full_disk_says_so_in_one_line_and_keeps_the_previous_output(small_disk, tmp_path, tiny_raw):
    out = small_disk / "prepared"
    for name, data in PREVIOUS.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw))

    res = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(tmp_path / "params.yaml"),
                          "--out", str(out), "--reports", str(tmp_path / "reports")],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={"SIM2REAL_TRACKING": "off", "PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1"})

    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith(f"error: {out}: cannot write it: the disk is full")
    assert "No space left on device" in errors[0] and "the previous version is kept unchanged" in errors[0]
    assert _contents(out) == PREVIOUS
    assert sorted(p.name for p in small_disk.iterdir()) == ["prepared"]     # no .prepared.tmp-*, no .old
    assert not (tmp_path / "reports").exists()
