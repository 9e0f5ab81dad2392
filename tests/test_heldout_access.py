"""The real test labels are read by the evaluate code only: at run time and in the sources."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.data.manifest import HeldOutLabelsError, ImageSet, heldout_test_set
from tinydata import CLASSES, SIZE, write_split

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {"pipeline/data/manifest.py", "pipeline/task/evaluate.py"}
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
