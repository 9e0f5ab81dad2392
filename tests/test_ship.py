"""``sim2real export`` and ``sim2real predict``: exports that match PyTorch, a preprocessing JSON that says
the truth, predictions equal to the evaluate stage's, one-line refusals that leave nothing behind."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config.schema import DetectorParams
from pipeline.data.images import load_image
from pipeline.data.manifest import read_manifest, to_tensor
from pipeline.detection.models import build_detector, predict as detect
from pipeline.gan.export import export_generator
from pipeline.gan.networks import ResnetGenerator
from pipeline.ship import export as ship_export
from pipeline.ship.cli import main
from pipeline.ship.formats import FORMATS, Format
from pipeline.task.evaluate import evaluate_variant
from pipeline.task.export import load_task_model, save_task_model
from test_evaluate_report import export_untrained
from tinydata import CLASSES, SIZE, RecordingTracker, tiny_params, tiny_prepared, train_tiny_variant

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")   # TorchScript's deprecation notice


def sim2real(capsys, *argv) -> tuple[int, str, str]:
    """The ``sim2real`` command in-process: ``(exit status, stdout, stderr)``."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_one_line_refusal(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def decoded_images(folder: Path, channels: int, size: int) -> tuple[list[Path], torch.Tensor]:
    """The images a manifest lists (labels unread), decoded and scaled as the pipeline does."""
    files = [e.path for e in read_manifest(folder / "manifest.csv", CLASSES, labels=False)]
    return files, torch.stack([to_tensor(load_image(f, channels, size)) for f in files])


def onnx_run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------


def test_classifier_exports_match_pytorch_and_say_their_preprocessing(tmp_path, capsys):
    prepared = tiny_prepared(tmp_path)
    model_file = export_untrained(tmp_path / "model") / "model.pt"
    out = tmp_path / "exported"
    code, _, err = sim2real(capsys, "export", "--model", model_file, "--out", out,
                            "--check-images", prepared / "target" / "train")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.json", "model.torchscript.pt",
                                                     "model.torchscript.pt.json"]

    model, meta = load_task_model(model_file)
    _, x = decoded_images(prepared / "target" / "test", 1, SIZE)   # other images, another batch size (20, not 16)
    with torch.no_grad():
        want = model(x).numpy()
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    with torch.no_grad():
        assert np.abs(scripted(x).numpy() - want).max() <= TOLERANCE
    assert np.abs(onnx_run(out / "model.onnx", x.numpy())[0] - want).max() <= TOLERANCE

    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        contract = json.loads((out / f"{name}.json").read_text())
        assert contract["file"] == name and contract["format"] == fmt and contract["what"] == "classification"
        assert contract["classes"] == list(CLASSES) == meta["classes"]
        spec = contract["input"]
        assert (spec["image_size"], spec["channels"], spec["layout"], spec["dtype"]) == (SIZE, 1, "NCHW", "float32")
        assert spec["shape"] == ["batch", 1, SIZE, SIZE] and spec["value_range"] == [-1.0, 1.0]
        assert spec["formula"] == "x = p / 127.5 - 1"
        pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)   # the recipe is what to_tensor does
        assert np.allclose(pixels[:, :, 0] / spec["divisor"] + spec["offset"], to_tensor(pixels)[0].numpy(), atol=1e-6)
        assert [o["name"] for o in contract["outputs"]] == ["logits"]
        assert contract["outputs"][0]["shape"] == ["batch", 2] and "softmax" in contract["outputs"][0]["meaning"]
        assert contract["check"]["images"] == 16 and contract["check"]["max_abs_diff"] <= TOLERANCE


def test_generator_exports_match_pytorch(tmp_path, capsys):
    prepared = tiny_prepared(tmp_path)
    torch.manual_seed(0)
    generator = ResnetGenerator(1, 1, width=4, blocks=1)
    export_generator(tmp_path / "generator.pt", generator,
                     {"image_size": SIZE, "channels": 1, "classes": list(CLASSES), "source_inverted": True})
    out = tmp_path / "exported"
    code, _, err = sim2real(capsys, "export", "--generator", tmp_path / "generator.pt", "--out", out,
                            "--check-images", prepared / "target" / "train", "--check-count", 4)
    assert code == 0, err

    _, x = decoded_images(prepared / "source" / "val", 1, SIZE)
    with torch.no_grad():
        want = generator.eval()(x).numpy()
        assert np.abs(torch.jit.load(str(out / "generator.torchscript.pt"))(x).numpy() - want).max() <= TOLERANCE
    assert np.abs(onnx_run(out / "generator.onnx", x.numpy())[0] - want).max() <= TOLERANCE
    contract = json.loads((out / "generator.onnx.json").read_text())
    assert contract["what"] == "generator" and contract["input"]["value_range"] == [-1.0, 1.0]
    assert contract["outputs"][0]["name"] == "images" and "[-1, 1]" in contract["outputs"][0]["meaning"]
    assert "invert raw renders" in contract["input"]["invert_raw_renders"] and contract["check"]["images"] == 4


def in_box_order(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """Detections sorted by their boxes: detections whose scores tie may come in either order."""
    order = np.lexsort(np.round(outputs[0], 2).T[::-1]) if len(outputs[0]) else np.arange(0)
    return [o[order] for o in outputs]


def test_detections_whose_scores_tie_may_come_in_either_order():
    boxes = np.array([[1, 1, 5, 5], [8, 8, 12, 12]], np.float32)
    scores, labels = np.array([0.5, 0.5], np.float32), np.array([0, 1])
    swapped = (boxes[::-1], scores[::-1], labels[::-1])
    assert ship_export.matched_diff((boxes, scores, labels), swapped) == 0.0
    assert ship_export.matched_diff((boxes, scores, labels), (boxes + 0.5, scores, labels)) == 0.5


def detector_file(folder: Path, architecture: str) -> Path:
    """An untrained tiny detector for 32 px images, its meta as train_task writes it."""
    torch.manual_seed(0)
    params = DetectorParams(architecture=architecture, width=4, score_threshold=0.005)   # untrained: scores ~0.01
    model = build_detector(params, 1, len(CLASSES), 32)
    model.sim2real_config = {**model.sim2real_config, "kind": "detection"}
    save_task_model(folder / "model.pt", model, {"kind": "detection", "classes": list(CLASSES), "image_size": 32,
                                                 "channels": 1, "variant": "source_only"})
    return folder / "model.pt"


@pytest.mark.parametrize("architecture", ["fcos", "retinanet"])
def test_detector_exports_per_image_and_predicts_boxes_in_original_pixels(tmp_path, capsys, architecture):
    prepared = tiny_prepared(tmp_path)
    model_file = detector_file(tmp_path / "model", architecture)
    out = tmp_path / "exported"
    code, _, err = sim2real(capsys, "export", "--model", model_file, "--out", out,
                            "--check-images", prepared / "target" / "train", "--check-count", 6)
    assert code == 0, err
    contract = json.loads((out / "model.onnx.json").read_text())
    assert contract["input"]["shape"] == [1, 32, 32] and contract["input"]["layout"] == "CHW"
    assert [o["name"] for o in contract["outputs"]] == ["boxes", "scores", "labels"]

    model, _ = load_task_model(model_file)
    files, x = decoded_images(prepared / "target" / "test", 1, 32)   # the 16 px test images, stretched to 32
    found = detect(model, x)
    scripted = torch.jit.load(str(out / "model.torchscript.pt"))
    for image, want in zip(x[:4], found):
        with torch.no_grad():
            from_script = [t.numpy() for t in scripted(image)]
        expected = in_box_order([want[name].numpy() for name in ("boxes", "scores", "labels")])
        for got in (from_script, onnx_run(out / "model.onnx", image.numpy())):
            for array, reference in zip(in_box_order(got), expected):
                assert array.shape == reference.shape
                assert np.abs(array.astype(np.float64) - reference).max(initial=0) <= TOLERANCE

    code, _, err = sim2real(capsys, "predict", "--model", model_file, "--images", prepared / "target" / "test",
                            "--out", tmp_path / "detections.json", "--device", "cpu")
    assert code == 0, err
    results = json.loads((tmp_path / "detections.json").read_text())
    assert len(results) == sum(len(d["boxes"]) for d in found) > 0
    expected = [(i + 1, f.relative_to(prepared / "target" / "test").as_posix(), int(label) + 1,
                 [round(v, 3) for v in (x1 / 2, y1 / 2, (x2 - x1) / 2, (y2 - y1) / 2)])   # 16 px originals
                for i, (f, d) in enumerate(zip(files, found))
                for (x1, y1, x2, y2), label in zip(d["boxes"].tolist(), d["labels"].tolist())]
    assert [(r["image_id"], r["file_name"], r["category_id"], r["bbox"]) for r in results] == expected
    assert all(r["category"] == CLASSES[r["category_id"] - 1] for r in results)

    code, _, err = sim2real(capsys, "predict", "--model", model_file, "--images", prepared / "target" / "test",
                            "--out", tmp_path / "detections.csv")
    assert_one_line_refusal(code, err, "detections.csv", ".json")
    assert not (tmp_path / "detections.csv").exists()


# ------------------------------------------------------------------------------------------------
# Predict
# ------------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_on_the_heldout_split_gives_the_classes_the_evaluate_stage_scored(tmp_path, capsys):
    result, prepared = train_tiny_variant(tmp_path, "target_oracle", steps=48)
    save_task_model(tmp_path / "model" / "model.pt", result.model, result.meta)
    test_dir = prepared / "target" / "test"
    evaluate_variant(tiny_params(tmp_path, prepared), "target_oracle", tmp_path / "model", tmp_path / "eval",
                     RecordingTracker(), test_dir=test_dir)
    scored = [row["predicted"] for row in read_csv(tmp_path / "eval" / "predictions.csv")]
    assert len(set(scored)) == 2   # a model that tells the classes apart: the comparison means something

    code, _, err = sim2real(capsys, "predict", "--model", tmp_path / "model" / "model.pt", "--images", test_dir,
                            "--out", tmp_path / "predictions.csv", "--batch-size", 7)
    assert code == 0, err
    rows = read_csv(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["path", "predicted", "confidence", "prob_a", "prob_b"]
    assert [row["predicted"] for row in rows] == scored
    manifest = [e.path.relative_to(test_dir).as_posix() for e in read_manifest(test_dir / "manifest.csv", CLASSES,
                                                                                 labels=False)]
    assert [row["path"] for row in rows] == manifest
    for row in rows:
        probabilities = [float(row["prob_a"]), float(row["prob_b"])]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert float(row["confidence"]) == max(probabilities)

    # the manifest CSV itself, and the same images in a folder of any layout, give the same classes
    code, _, err = sim2real(capsys, "predict", "--model", tmp_path / "model" / "model.pt",
                            "--images", test_dir / "manifest.csv", "--out", tmp_path / "from_csv.csv")
    assert code == 0, err
    assert read_csv(tmp_path / "from_csv.csv") == rows
    loose = tmp_path / "loose"
    for i, name in enumerate(manifest):
        (loose / f"part{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(test_dir / name, loose / f"part{i % 3}" / f"img{i:02d}.png")
    code, _, err = sim2real(capsys, "predict", "--model", tmp_path / "model" / "model.pt", "--images", loose,
                            "--out", tmp_path / "loose.csv")
    assert code == 0, err
    by_path = {row["path"]: row["predicted"] for row in read_csv(tmp_path / "loose.csv")}
    assert [by_path[f"part{i % 3}/img{i:02d}.png"] for i in range(len(manifest))] == scored


# ------------------------------------------------------------------------------------------------
# The command line and its refusals
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["export", "--help"], ["translate", "--help"]])
def test_help_runs_as_a_subprocess_in_plain_text(argv):
    script = Path(sys.executable).parent / "sim2real"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.ship.cli"]
    done = subprocess.run(command + argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: sim2real") and "``" not in done.stdout and ":func:" not in done.stdout
    if argv == ["--help"]:
        assert all(name in done.stdout for name in ("export", "predict", "translate"))


def test_translate_subcommand_translates_like_sim2real_translate(tmp_path, capsys):
    prepared = tiny_prepared(tmp_path)
    torch.manual_seed(0)
    export_generator(tmp_path / "generator.pt", ResnetGenerator(1, 1, width=4, blocks=1),
                     {"image_size": SIZE, "channels": 1, "classes": list(CLASSES)})
    code, _, err = sim2real(capsys, "translate", "--generator", tmp_path / "generator.pt",
                            "--input", prepared / "source" / "val", "--output", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "out" / "translation.json").is_file() and len(read_csv(tmp_path / "out" / "manifest.csv")) == 16


def test_a_missing_model_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    prepared = tiny_prepared(tmp_path)
    missing = tmp_path / "models" / "task" / "nope" / "model.pt"
    code, _, err = sim2real(capsys, "predict", "--model", missing, "--images", prepared / "target" / "test",
                            "--out", tmp_path / "predictions.csv")
    assert_one_line_refusal(code, err, str(missing), "file not found", "models/task/<variant>/model.pt")
    code, _, err = sim2real(capsys, "export", "--model", missing, "--out", tmp_path / "exported")
    assert_one_line_refusal(code, err, str(missing), "file not found")
    assert not (tmp_path / "predictions.csv").exists() and not (tmp_path / "exported").exists()


def test_a_generator_passed_as_a_task_model_is_named(tmp_path, capsys):
    export_generator(tmp_path / "generator.pt", ResnetGenerator(1, 1, width=4, blocks=1),
                     {"image_size": SIZE, "channels": 1, "classes": list(CLASSES)})
    code, _, err = sim2real(capsys, "export", "--model", tmp_path / "generator.pt", "--out", tmp_path / "exported")
    assert_one_line_refusal(code, err, "generator.pt", "is an exported generator", "--generator")
    assert not (tmp_path / "exported").exists()


def test_a_folder_without_images_is_one_line_and_writes_nothing(tmp_path, capsys):
    model_file = export_untrained(tmp_path / "model") / "model.pt"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, _, err = sim2real(capsys, "predict", "--model", model_file, "--images", tmp_path / "empty",
                            "--out", tmp_path / "predictions.csv")
    assert_one_line_refusal(code, err, str(tmp_path / "empty"), "no image files")
    code, _, err = sim2real(capsys, "export", "--model", model_file, "--out", tmp_path / "exported",
                            "--check-images", tmp_path / "empty")
    assert_one_line_refusal(code, err, str(tmp_path / "empty"), "no image files")
    code, _, err = sim2real(capsys, "export", "--model", model_file, "--out", tmp_path / "exported",
                            "--check-images", tmp_path / "absent")
    assert_one_line_refusal(code, err, str(tmp_path / "absent"), "not found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]


def test_a_corrupt_image_stops_predict_and_keeps_the_previous_file(tmp_path, capsys):
    prepared = tiny_prepared(tmp_path)
    model_file = export_untrained(tmp_path / "model") / "model.pt"
    images = tmp_path / "images"
    shutil.copytree(prepared / "target" / "train" / "images", images)
    (images / "0009.png").write_bytes(b"not a png")
    (tmp_path / "predictions.csv").write_text("earlier predictions\n")
    code, _, err = sim2real(capsys, "predict", "--model", model_file, "--images", images,
                            "--out", tmp_path / "predictions.csv", "--batch-size", 4)
    assert_one_line_refusal(code, err, "0009.png")
    assert (tmp_path / "predictions.csv").read_text() == "earlier predictions\n"
    assert not list(tmp_path.glob(".predictions.csv*"))


def test_an_export_that_does_not_match_pytorch_is_refused_and_writes_nothing(tmp_path, capsys, monkeypatch):
    prepared = tiny_prepared(tmp_path)
    model_file = export_untrained(tmp_path / "model") / "model.pt"
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier export")
    (out / "generator.onnx").write_bytes(b"the generator's export")
    before = snapshot(out)

    onnx = FORMATS["onnx"]

    def off_by_a_little(*args):
        data, run = onnx.build(*args)
        return data, lambda x: tuple(a + 2e-3 for a in run(x))

    monkeypatch.setitem(ship_export.FORMATS, "onnx", Format(onnx.name, onnx.label, onnx.suffix, off_by_a_little))
    code, _, err = sim2real(capsys, "export", "--model", model_file, "--out", out,
                            "--check-images", prepared / "target" / "train")
    assert_one_line_refusal(code, err, str(model_file), "ONNX export differs from the PyTorch model by up to 0.002",
                            "tolerance 0.0001", "nothing was written")
    assert snapshot(out) == before   # not even the TorchScript file, which matched


def test_an_export_that_cannot_be_made_is_one_line(tmp_path, capsys, monkeypatch):
    prepared = tiny_prepared(tmp_path)
    model_file = export_untrained(tmp_path / "model") / "model.pt"
    script = FORMATS["torchscript"]

    def unsupported(*args):
        raise RuntimeError("Unsupported operator\nwith a long explanation")

    monkeypatch.setitem(ship_export.FORMATS, "torchscript", Format(script.name, script.label, script.suffix,
                                                                   unsupported))
    code, _, err = sim2real(capsys, "export", "--model", model_file, "--out", tmp_path / "exported",
                            "--check-images", prepared / "target" / "train", "--format", "torchscript")
    assert_one_line_refusal(code, err, str(model_file), "cannot export this classification model to TorchScript",
                            "Unsupported operator")
    assert not (tmp_path / "exported").exists()
