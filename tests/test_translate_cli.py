"""``sim2real-translate`` as a demanding user meets it: every refusal is one line and exit 2, and
nothing the tool did not write (the renders, a folder of the user's) is ever replaced or deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.gan.export import export_generator
from pipeline.gan.networks import ResnetGenerator
from pipeline.gan.translate import main
from pipeline.task.export import save_task_model
from pipeline.task.models import build_task_model
from test_translate import CLASSES, SIZE, generator_file, labelled_folder, read_rows, save_rgb, snapshot  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ("expected a generator exported by train_gan (models/gan/generator.pt): a torch file with keys "
            "config, state_dict, meta, its meta holding image_size, channels, classes")


@pytest.fixture
def renders(tmp_path) -> Path:
    """A user's folder of new simulator renders (no manifest)."""
    for i in range(3):
        save_rgb(tmp_path / "renders" / f"r{i}.png", i)
    return tmp_path / "renders"


def translate(capsys, generator: Path, source: Path | str, output: Path | str) -> tuple[int, str]:
    """Run the CLI in-process; ``(exit status, stderr)`` (0 when it returned)."""
    try:
        main(["--generator", str(generator), "--input", str(source), "--output", str(output), "--device", "cpu"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip()


def assert_one_line_refusal(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


# ------------------------------------------------------------------------------------------------
# Output and input that overlap
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output, relation", [
    ("renders", "is the --input folder"),
    ("renders/", "is the --input folder"),
    ("renders/translated", "lies inside the --input folder"),
    (".", "holds the --input folder"),
])
def test_output_overlapping_the_input_is_refused_and_the_renders_kept(tmp_path, renders, generator_file, capsys,
                                                                      monkeypatch, output, relation):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, err = translate(capsys, generator_file, "renders", output)
    assert_one_line_refusal(code, err, f"--output {Path(output)} {relation} renders", "choose an output folder")
    assert snapshot(tmp_path) == before


def test_overlap_is_found_through_symbolic_links(tmp_path, renders, generator_file, capsys):
    (tmp_path / "link").symlink_to(renders, target_is_directory=True)
    before = snapshot(renders)
    code, err = translate(capsys, generator_file, tmp_path / "link", renders)
    assert_one_line_refusal(code, err, f"--output {renders} is the --input folder {tmp_path / 'link'}",
                            f"resolved: {renders.resolve()}")
    code, err = translate(capsys, generator_file, renders, tmp_path / "link" / "out")
    assert_one_line_refusal(code, err, "lies inside the --input folder")
    assert snapshot(renders) == before


# ------------------------------------------------------------------------------------------------
# An existing output folder
# ------------------------------------------------------------------------------------------------


def test_a_folder_the_tool_did_not_write_is_not_replaced(tmp_path, renders, generator_file, capsys):
    mine = tmp_path / "results"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "todo.txt").write_text("my work")
    code, err = translate(capsys, generator_file, renders, mine)
    assert_one_line_refusal(code, err, f"--output {mine} already exists and was not written by sim2real-translate",
                            "1 file, e.g. notes/todo.txt", "refusing to replace it")
    assert snapshot(mine) == {"notes/todo.txt": b"my work"}


def test_a_prepared_split_is_not_mistaken_for_an_earlier_translation(tmp_path, renders, generator_file, capsys):
    split = labelled_folder(tmp_path / "split", ["0", "1"])  # manifest.csv with path,label
    before = snapshot(split)
    code, err = translate(capsys, generator_file, renders, split)
    assert_one_line_refusal(code, err, "was not written by sim2real-translate")
    assert snapshot(split) == before


def test_an_earlier_translation_holding_user_files_is_not_replaced(tmp_path, renders, generator_file, capsys):
    out = tmp_path / "out"
    assert translate(capsys, generator_file, renders, out)[0] == 0
    (out / "my_notes.txt").write_text("keep me")
    before = snapshot(out)
    code, err = translate(capsys, generator_file, renders, out)
    assert_one_line_refusal(code, err, "is an earlier translation but also holds files sim2real-translate did not "
                                       "write (1 file, e.g. my_notes.txt)")
    assert snapshot(out) == before


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_an_output_that_is_not_a_real_folder_is_refused(tmp_path, renders, generator_file, capsys, kind):
    out, target = tmp_path / "out", tmp_path / "elsewhere"
    target.mkdir()
    if kind == "file":
        out.write_text("a file of mine")
    else:
        out.symlink_to(target, target_is_directory=True)
    code, err = translate(capsys, generator_file, renders, out)
    assert_one_line_refusal(code, err, f"--output {out}", "refusing to replace it")
    assert out.is_symlink() if kind == "symlink" else out.read_text() == "a file of mine"
    assert list(target.iterdir()) == []


def test_empty_folder_and_own_output_are_written(tmp_path, renders, generator_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert translate(capsys, generator_file, renders, out)[0] == 0
    (out / ".DS_Store").write_bytes(b"finder")  # a file browser looked at the output
    assert translate(capsys, generator_file, renders, out)[0] == 0  # a rerun replaces its own output
    assert [r["source"] for r in read_rows(out)] == ["r0.png", "r1.png", "r2.png"]


# ------------------------------------------------------------------------------------------------
# A wrong --generator
# ------------------------------------------------------------------------------------------------


def task_model(path: Path) -> Path:
    meta = {"classes": CLASSES, "image_size": SIZE, "channels": 1, "variant": "source_only", "method": "source_only"}
    save_task_model(path, build_task_model("small_cnn", 1, len(CLASSES), width=4), meta)
    return path


def mismatched_generator(path: Path) -> Path:
    """A generator file whose weights belong to another architecture than its config."""
    export_generator(path, ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=2),
                     {"image_size": SIZE, "channels": 1, "classes": CLASSES})
    blob = torch.load(path, weights_only=True)
    blob["config"]["width"] = 8
    torch.save(blob, path)
    return path


WRONG_GENERATORS = {
    "task model": (lambda p: task_model(p),
                   "looks like a task model checkpoint (keys: config, state_dict, meta; config keys: name, "
                   "in_channels, num_classes, width; meta variant: source_only)"),
    "training checkpoint": (lambda p: torch.save({"G": {}, "epoch": 3, "fingerprint": "abc", "rng": {}}, p),
                            "looks like a training checkpoint to resume from, not an exported model (keys: G, epoch"),
    "bare state_dict": (lambda p: torch.save(ResnetGenerator(1, 1, width=4, blocks=1).state_dict(), p),
                        "looks like a bare state_dict ("),
    "list": (lambda p: torch.save([1, 2], p), "holds a list, not a dict"),
    "text file": (lambda p: p.write_text("hello, not a model\n" * 5),
                  "not a readable sim2real checkpoint: the file is truncated, corrupt or not written by torch.save"),
    "missing file": (lambda p: None, "file not found"),
    "folder": (lambda p: p.mkdir(), "is a folder, not a file"),
    "mismatched weights": (lambda p: mismatched_generator(p),
                           "its config and weights do not rebuild a ResnetGenerator (RuntimeError: Error(s) in "
                           "loading state_dict"),
}


@pytest.mark.parametrize("case", list(WRONG_GENERATORS))
def test_a_wrong_generator_file_is_one_line_saying_what_it_is(tmp_path, renders, capsys, case):
    make, what = WRONG_GENERATORS[case]
    path = tmp_path / "model.pt"
    make(path)
    before = snapshot(renders)
    code, err = translate(capsys, path, renders, tmp_path / "out")
    assert_one_line_refusal(code, err, f"error: {path}: {what}", EXPECTED)
    assert not (tmp_path / "out").exists() and snapshot(renders) == before


def test_the_installed_command_reports_a_task_model_without_a_traceback(tmp_path, renders):
    path = task_model(tmp_path / "model.pt")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1", "SIM2REAL_TRACKING": "off"}
    done = subprocess.run([sys.executable, "-m", "pipeline.gan.translate", "--generator", str(path),
                           "--input", str(renders), "--output", str(tmp_path / "out"), "--device", "cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {path}: looks like a task model checkpoint (keys: config, "
                                        f"state_dict, meta; config keys: name, in_channels, num_classes, width; "
                                        f"meta variant: source_only); {EXPECTED}"]


# ------------------------------------------------------------------------------------------------
# A wrong --input
# ------------------------------------------------------------------------------------------------


def test_a_file_given_as_input_is_called_a_file(tmp_path, renders, generator_file, capsys):
    code, err = translate(capsys, generator_file, renders / "r0.png", tmp_path / "out")
    assert_one_line_refusal(code, err, f"--input {renders / 'r0.png'} exists but is a file, not a folder")
    assert "not found" not in err and not (tmp_path / "out").exists()


def test_a_manifest_given_as_input_names_its_folder(tmp_path, generator_file, capsys):
    split = labelled_folder(tmp_path / "split", ["0", "1"])
    code, err = translate(capsys, generator_file, split / "manifest.csv", tmp_path / "out")
    assert_one_line_refusal(code, err, "exists but is a file, not a folder", f"pass the folder that holds it: {split}")


def test_a_missing_input_is_still_not_found(tmp_path, generator_file, capsys):
    code, err = translate(capsys, generator_file, tmp_path / "nowhere", tmp_path / "out")
    assert_one_line_refusal(code, err, f"error: {tmp_path / 'nowhere'}: input folder not found")
