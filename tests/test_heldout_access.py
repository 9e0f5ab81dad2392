"""The real test labels are read by the evaluate code only: at run time and in the sources."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pytest
import torch

from pipeline.data.manifest import HeldOutLabelsError, ImageSet, heldout_test_set, read_manifest
from pipeline.distributed import Runtime
from pipeline.task.train import train_task_model
from tinydata import CLASSES, SIZE, RecordingTracker, tiny_params, tiny_prepared, write_split

REPO = Path(__file__).resolve().parents[1]
TEST_SPLIT_PATH = "data/prepared/target/test"
ALLOWED = {"pipeline/data/manifest.py", "pipeline/task/evaluate.py",       # the guards and their one caller
           "pipeline/data/coco.py", "pipeline/data/detection_set.py"}
GUARDED = re.compile(r"\b(heldout_test_set|_allow_heldout)\b")
# The evaluate code: the only Python that may name the held-out split or run what scores on it. The task
# kinds name their evaluate function (the hook behind ``kind.evaluate``); only pipeline/task/evaluate.py calls it.
EVALUATE_CODE = {"stages/evaluate.py", "pipeline/task/evaluate.py", "pipeline/detection/evaluate.py",
                 "pipeline/task/classification.py", "pipeline/detection/kind.py"}
READS_TEST_SPLIT = re.compile(
    re.escape(TEST_SPLIT_PATH)                   # the held-out split's path
    + r"|\bTARGET_TEST\b"                        # ... or its constant
    r"|\bstages\.evaluate\b"                     # running the evaluate stage as a module
    r"|[\"']evaluate(?:@[^\"'\s]*)?[\"']"          # ... or naming it to a runner: "evaluate", "evaluate@<v>"
    r"|\bevaluate_(?:variant|detector|classifier)\b"   # calling what scores on the test split
    r"|\bkind\.evaluate\(")                        # ... or the task kind's hook for it


def project_sources(root: Path = REPO) -> list[Path]:
    """Every Python file under ``root``, tracked or not, except the tests (their helpers build held-out
    splits on purpose), hidden folders (.venv, .git, .dvc), any other virtualenv (a pyvenv.cfg) and
    any nested DVC project (a .dvc folder: the scenario workspaces of scripts/scenarios.py, whose code
    is a copy of this one, checked here where it lives)."""
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and not (here / d / "pyvenv.cfg").exists()
                               and not (here / d / ".dvc").is_dir() and not (here == root and d == "tests"))
        found += [here / name for name in sorted(files) if name.endswith(".py")]
    return found


def offenders(pattern: re.Pattern, allowed: set[str], root: Path = REPO) -> list[str]:
    """The project's Python files (relative to ``root``) outside ``allowed`` whose text matches ``pattern``."""
    return sorted(rel for path in project_sources(root)
                  if (rel := path.relative_to(root).as_posix()) not in allowed
                  and pattern.search(path.read_text(errors="replace")))


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
    """Across every Python file of the repository (scripts and benches too, tracked or not), only the
    guards and the evaluate code name the held-out labels, the held-out split or the evaluate stage."""
    sources = {path.relative_to(REPO).as_posix() for path in project_sources()}
    assert {"scripts/ablate_gan.py", "stages/evaluate.py", "pipeline/io.py"} <= sources
    assert not any(name.startswith(("tests/", ".venv/")) for name in sources)

    assert offenders(GUARDED, ALLOWED) == [], f"only {sorted(ALLOWED)} may read the held-out test labels"
    assert all(GUARDED.search((REPO / name).read_text()) for name in ALLOWED)
    assert offenders(READS_TEST_SPLIT, EVALUATE_CODE) == [], \
        f"only {sorted(EVALUATE_CODE)} may read {TEST_SPLIT_PATH} or run the evaluate stage"
    assert all(READS_TEST_SPLIT.search((REPO / name).read_text()) for name in EVALUATE_CODE)


@pytest.mark.parametrize("line", [
    'stage("evaluate", "--variant", "translated", "--models", str(folder / "task"))',   # the old ablate_gan.py
    'subprocess.run([sys.executable, "-m", "stages.evaluate", "--variant", "dann"])',
    'subprocess.run(["dvc", "repro", "evaluate@dann"])',
    'test = Path("data/prepared/target/test")',
    "from pipeline.task.evaluate import TARGET_TEST",
    "metrics = evaluate_variant(params, variant, models, out, tracker)",
])
def test_the_source_scan_catches_a_tool_reading_the_test_split(tmp_path, line):
    """The scan flags a script that runs evaluate or names the split, wherever it sits, and skips tests/."""
    for folder in ("scripts", "tests", ".hidden"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tool.py").write_text(f"def run(folder):\n    {line}\n")
    (tmp_path / "scripts" / "clean.py").write_text('stage("train_task", "--variant", "translated")\n')
    workspace = tmp_path / "runs" / "scenario"          # a nested DVC project (a copy of the code): skipped
    (workspace / ".dvc").mkdir(parents=True)
    (workspace / "tool.py").write_text(f"def run(folder):\n    {line}\n")
    assert offenders(READS_TEST_SPLIT, EVALUATE_CODE, tmp_path) == ["scripts/tool.py"]


def _export_untrained(folder: Path) -> Path:
    from pipeline.task.export import save_task_model
    from pipeline.task.models import build_task_model

    model = build_task_model("small_cnn", 1, len(CLASSES), width=4)
    save_task_model(folder / "model.pt", model, {"classes": list(CLASSES), "image_size": SIZE, "channels": 1,
                                                 "variant": "source_only", "uses_target_labels": False})
    return folder


def test_evaluate_refuses_a_labelled_folder_that_is_not_held_out(tmp_path):
    """Scoring a training split would print a "test accuracy" that is not one: refused, nothing written."""
    from pipeline.cli import UserError
    from pipeline.task.evaluate import evaluate_variant

    prepared = tiny_prepared(tmp_path, n=16)
    out = tmp_path / "eval"
    for labelled in (prepared / "source" / "val", prepared / "target" / "train"):
        with pytest.raises(UserError, match=rf"^{labelled}: not a held-out test split \(it holds no HELDOUT marker\)"):
            evaluate_variant(tiny_params(tmp_path, prepared), "source_only", _export_untrained(tmp_path / "model"),
                             out, RecordingTracker(), test_dir=labelled)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["classification", "detection"])
def test_evaluate_stage_takes_only_a_held_out_folder(tmp_path, default_raw, kind):
    import subprocess
    import sys

    import yaml

    from conftest import tiny_budget

    labelled = write_split(tmp_path / "target" / "train", 4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_budget(default_raw, {"task": {"kind": kind}})))
    res = subprocess.run([sys.executable, "-m", "stages.evaluate", "--variant", "source_only", "--params",
                          str(tmp_path / "params.yaml"), "--models", str(tmp_path / "models"), "--test", str(labelled),
                          "--reports", str(tmp_path / "eval")], cwd=REPO, capture_output=True, text=True,
                         env={"SIM2REAL_TRACKING": "off", "PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    error = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert error == [f"error: {labelled}: not a held-out test split (it holds no HELDOUT marker); the evaluate "
                     f"stage scores only the test split made by the prepare stage (data/prepared/target/test), "
                     f"never a folder used for training or validation"]
    assert "Traceback" not in res.stderr and not (tmp_path / "eval").exists()


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
