"""The real test labels are read by the evaluate code only: at run time and in the sources."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

from pipeline.data.manifest import HeldOutLabelsError, ImageSet, heldout_test_set, read_manifest
from pipeline.distributed import Runtime
from pipeline.task.train import train_task_model
from tinydata import CLASSES, SIZE, RecordingTracker, tiny_params, tiny_prepared, write_split

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"pipeline/data/manifest.py", "pipeline/task/evaluate.py",       # the guards and their one caller
           "pipeline/data/coco.py", "pipeline/data/detection_set.py"}
GUARDED = re.compile(r"\b(heldout_test_set|_allow_heldout)\b")


@pytest.fixture
def heldout(tmp_path):
    return write_split(tmp_path / "target" / "test", 6, heldout=True)


def test_labelled_imageset_on_heldout_split_is_refused(heldout):
    with pytest.raises(HeldOutLabelsError, match="held-out"):
        ImageSet(heldout, CLASSES, 1, SIZE)


def test_unlabelled_imageset_on_heldout_split_works(heldout):
    images = ImageSet(heldout, CLASSES, 1, SIZE, labels=False)
    x, y = images[0]
    assert len(images) == 6 and x.shape == (1, SIZE, SIZE) and y == -1
    with pytest.raises(HeldOutLabelsError):
        images.targets()


def test_unlabelled_imageset_on_heldout_split_holds_no_labels(heldout):
    images = ImageSet(heldout, CLASSES, 1, SIZE, labels=False)
    assert len(images.entries) == 6 and [e.label for e in images.entries] == [None] * 6


def test_unlabelled_imageset_drops_labels_of_any_split(tmp_path):
    folder = write_split(tmp_path / "target" / "train", 4)      # labelled, not held out
    assert [e.label for e in ImageSet(folder, CLASSES, 1, SIZE).entries] == [0, 1, 0, 1]
    images = ImageSet(folder, CLASSES, 1, SIZE, labels=False)
    assert [e.label for e in images.entries] == [None] * 4 and [images[i][1] for i in range(4)] == [-1] * 4


def test_read_manifest_of_heldout_split_is_refused(heldout):
    with pytest.raises(HeldOutLabelsError, match=r"manifest\.csv: manifest of a held-out test split"):
        read_manifest(heldout / "manifest.csv", CLASSES)
    with pytest.raises(HeldOutLabelsError):
        read_manifest(heldout / "manifest.csv", CLASSES, require_labels=True)
    unlabelled = read_manifest(heldout / "manifest.csv", CLASSES, labels=False)
    assert [e.label for e in unlabelled] == [None] * 6
    assert [e.path.name for e in unlabelled] == [f"{i:04d}.png" for i in range(6)]


def test_read_manifest_through_a_link_to_a_heldout_split_is_refused(heldout, tmp_path):
    link = tmp_path / "elsewhere" / "manifest.csv"
    link.parent.mkdir()
    link.symlink_to(heldout / "manifest.csv")
    with pytest.raises(HeldOutLabelsError):
        read_manifest(link, CLASSES, root=heldout)


def test_heldout_test_set_reads_the_labels(heldout):
    test = heldout_test_set(heldout, CLASSES, 1, SIZE)
    assert test.targets() == [0, 1, 0, 1, 0, 1]
    assert test[1][1] == 1


def test_only_evaluate_code_references_the_heldout_labels():
    offenders = sorted(
        str(path.relative_to(REPO))
        for folder in ("pipeline", "stages")
        for path in (REPO / folder).rglob("*.py")
        if GUARDED.search(path.read_text()) and str(path.relative_to(REPO)) not in ALLOWED
    )
    assert offenders == [], f"only {sorted(ALLOWED)} may read the held-out test labels"
    assert all(GUARDED.search((REPO / name).read_text()) for name in ALLOWED)


def _scramble_test_labels(manifest: Path) -> None:
    """Rewrite the held-out labels: every other one flipped, the rest names of no class."""
    with manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    flipped = {CLASSES[0]: CLASSES[1], CLASSES[1]: CLASSES[0]}
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows((r["path"], flipped[r["label"]] if i % 2 else f"garbage-{i}") for i, r in enumerate(rows))


@pytest.mark.parametrize("variant", ["source_only", "dann"])
def test_training_cannot_see_the_test_labels(tmp_path, variant):
    """Training with the held-out labels scrambled gives bit-identical weights: they never reach it."""
    prepared = tiny_prepared(tmp_path, n=16)
    params = tiny_params(tmp_path, prepared, steps=6)
    cpu = Runtime(torch.device("cpu"))

    def train(tag: str) -> dict[str, torch.Tensor]:
        result = train_task_model(params, variant, cpu, RecordingTracker(), tmp_path / "ckpt" / tag,
                                  tmp_path / "reports" / tag, prepared=prepared)
        return result.model.state_dict()

    before = train("as_is")
    manifest = prepared / "target" / "test" / "manifest.csv"
    original = manifest.read_text()
    _scramble_test_labels(manifest)
    assert manifest.read_text() != original and "garbage-0" in manifest.read_text()
    after = train("scrambled")

    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
