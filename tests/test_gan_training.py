"""The CycleGAN training stage on a tiny prepared layout: outputs, exact resume, skipped terms."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import deep_update
from pipeline.config import parse_params
from pipeline.data.manifest import write_manifest
from pipeline.gan import cycle_gan as cycle_gan_module
from pipeline.gan.export import load_generator
from pipeline.gan.cycle_gan import lr_factor
from pipeline.gan.trainer import GanPaths, train_gan
from pipeline.io import save_png
from pipeline.task.export import save_task_model
from pipeline.task.kinds import KINDS
from pipeline.task.models import build_task_model

SIZE = 16
TINY_GAN = {
    "generator": {"width": 4, "blocks": 1, "downsamplings": 2},
    "discriminator": {"width": 4, "layers": 2},
    "pool_size": 3, "batch_size": 4, "epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2,
    "diagnostics_samples": 12, "device": "cpu",
}
DIAGNOSTIC_KEYS = [
    "d_real/acc_real", "d_real/acc_fake", "d_source/acc_real", "d_source/acc_fake",
    "d_real/grad_norm_mean", "d_real/grad_norm_max", "d_real/grad_norm_frac_gt1",
    "d_source/grad_norm_mean", "d_source/grad_norm_max", "d_source/grad_norm_frac_gt1",
    "task/acc_source_val", "task/acc_translated_val", "copy/l1_source_translated",
    "gap/fd_translated_real", "gap/pad_translated_real", "gap/fd_source_real", "gap/pad_source_real",
]
LOSS_KEYS = ["loss/adv_g", "loss/adv_f", "loss/cycle_source", "loss/cycle_real", "loss/identity_real",
             "loss/identity_source", "loss/similarity", "loss/task", "loss/g_total", "loss/d_real",
             "loss/d_source", "loss/lp_real", "loss/lp_source", "loss/d_total"]


def make_split(folder: Path, count: int, seed: int, labelled: bool = True) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        save_png(rng.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8), folder / "images" / f"{i:04d}.png")
        rows.append((f"images/{i:04d}.png", str(i % 10) if labelled else ""))
    write_manifest(folder, rows)


@pytest.fixture
def project(tmp_path, tiny_raw, monkeypatch):
    """A working directory with data/prepared, a tiny frozen task model and a tiny params.yaml."""
    prepared = tmp_path / "data" / "prepared"
    make_split(prepared / "source" / "train", 24, 0)
    make_split(prepared / "source" / "val", 12, 1)
    make_split(prepared / "target" / "train", 10, 2, labelled=False)
    task = build_task_model("small_cnn", 1, 10, width=4)
    meta = {"classes": [str(i) for i in range(10)], "channels": 1, "image_size": SIZE}
    save_task_model(tmp_path / "models" / "task" / "source_only" / "model.pt", task.eval(), meta)
    write_params(tmp_path, tiny_raw)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(folder: Path, raw: dict, **gan) -> Path:
    raw = deep_update(raw, {"gan": deep_update(TINY_GAN, gan),
                            "task": {"width": 4, "steps": 3, "eval_every": 3, "batch_size": 8}})
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_stage(folder: Path) -> None:
    from stages.train_gan import main

    main(["--params", str(folder / "params.yaml")])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def read_history(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_lr_is_constant_then_decays_linearly_to_zero():
    factors = [lr_factor(step, 4, 4) for step in range(8)]
    assert factors == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert lr_factor(3, 4, 0) == 1.0


def test_tiny_run_writes_generator_reports_and_diagnostics(project):
    run_stage(project)

    generator, meta = load_generator(project / "models/gan/generator.pt")
    assert meta["image_size"] == SIZE and meta["channels"] == 1 and meta["classes"][0] == "0"
    assert generator(torch.zeros(2, 1, SIZE, SIZE)).shape == (2, 1, SIZE, SIZE)
    assert set(weights(project / "models/gan/generator.pt")) == set(generator.state_dict())
    assert json.loads((project / "models/gan/provenance.json").read_text())["stage"] == "train_gan"

    metrics = json.loads((project / "reports/gan/metrics.json").read_text())
    for key in DIAGNOSTIC_KEYS + LOSS_KEYS:
        assert np.isfinite(metrics[key]), key
    assert metrics["epoch"] == 2 and metrics["finished"] is True
    assert 0 <= metrics["task/acc_translated_val"] <= 1 and 0 <= metrics["gap/pad_source_real"] <= 2

    header = (project / "reports/gan/history.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and set(DIAGNOSTIC_KEYS + LOSS_KEYS) <= set(header)
    assert [row["epoch"] for row in read_history(project / "reports/gan/history.csv")] == ["1", "2"]
    assert (project / "reports/gan/samples.png").stat().st_size > 0


def test_resume_after_interruption_matches_uninterrupted_run(project, tmp_path_factory, monkeypatch):
    # Reference: the same project, uninterrupted, in another folder.
    reference = tmp_path_factory.mktemp("reference")
    for rel in ("data", "models", "params.yaml"):
        src = project / rel
        if src.is_dir():
            shutil.copytree(src, reference / rel)
        else:
            (reference / rel).write_text(src.read_text())
    monkeypatch.chdir(reference)
    run_stage(reference)

    # Interrupted in the middle of the second epoch (third iteration), then rerun.
    monkeypatch.chdir(project)
    original, calls = cycle_gan_module.CycleGan.train_step, []

    def crash_on_third(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(cycle_gan_module.CycleGan, "train_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_stage(project)
    assert not (project / "models/gan/generator.pt").exists()
    assert torch.load(project / "checkpoints/gan/last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(cycle_gan_module.CycleGan, "train_step", original)
    run_stage(project)

    resumed = torch.load(project / "checkpoints/gan/last.pt", weights_only=True)
    expected = torch.load(reference / "checkpoints/gan/last.pt", weights_only=True)
    assert resumed["epoch"] == expected["epoch"] == 2 and resumed["step"] == expected["step"] == 4
    for name, state in expected["networks"].items():
        for key, tensor in state.items():
            assert torch.equal(resumed["networks"][name][key], tensor), f"{name}.{key}"
    ours, theirs = weights(project / "models/gan/generator.pt"), weights(reference / "models/gan/generator.pt")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    rows, ref_rows = read_history(project / "reports/gan/history.csv"), read_history(reference / "reports/gan/history.csv")
    assert [r["loss/g_total"] for r in rows] == [r["loss/g_total"] for r in ref_rows]
    assert [r["gap/fd_translated_real"] for r in rows] == [r["gap/fd_translated_real"] for r in ref_rows]


def test_zero_weights_skip_their_compute(project, tiny_raw, monkeypatch):
    write_params(project, tiny_raw, weights={"task": 0.0, "lipschitz": 0.0, "identity": 0.0})

    def must_not_run(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    for name in ("lipschitz_penalty", "identity_loss"):
        monkeypatch.setattr(cycle_gan_module, name, must_not_run)
    monkeypatch.setattr(KINDS["classification"], "gan_task_loss", must_not_run)   # the task kind computes it
    run_stage(project)
    metrics = json.loads((project / "reports/gan/metrics.json").read_text())
    assert "loss/task" not in metrics and "loss/lp_real" not in metrics and "loss/identity_real" not in metrics
    assert "loss/cycle_source" in metrics and "d_real/grad_norm_mean" in metrics  # diagnostics still measured


@pytest.mark.parametrize("change", ["params", "data"])
def test_checkpoint_from_other_inputs_is_moved_aside(project, tiny_raw, change):
    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    first = train_gan(params, max_epochs=1)
    assert not first["finished"] and first["generator"] is None
    assert torch.load(project / "checkpoints/gan/last.pt", weights_only=True)["epoch"] == 1

    if change == "params":
        write_params(project, tiny_raw, lr=0.001)
    else:  # same params, one real image changed (DVC reruns the stage; the checkpoint is stale)
        save_png(np.zeros((SIZE, SIZE, 1), np.uint8), project / "data/prepared/target/train/images/0000.png")
    params = parse_params(yaml.safe_load((project / "params.yaml").read_text()))
    second = train_gan(params, paths=GanPaths())
    assert second["finished"] and second["resumed_from_epoch"] == 0
    assert second["fingerprint"] != first["fingerprint"]
    assert list((project / "checkpoints/gan").glob("stale-*.pt"))
    assert [row["epoch"] for row in read_history(project / "reports/gan/history.csv")] == ["1", "2"]


def test_missing_task_model_is_trained_as_a_fallback(project):
    (project / "models/task/source_only/model.pt").unlink()
    run_stage(project)
    fallback = project / "checkpoints/gan/source_only_task/model.pt"
    assert fallback.is_file()
    checkpoint = project / "checkpoints/gan/last.pt"
    before = fallback.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns
    run_stage(project)  # a rerun reuses the fallback model (same file, so the GAN checkpoint stays valid)
    assert (fallback.stat().st_mtime_ns, checkpoint.stat().st_mtime_ns) == before
    assert json.loads((project / "reports/gan/metrics.json").read_text())["finished"]
    provenance = json.loads((project / "models/gan/provenance.json").read_text())
    assert provenance["task_model"] == str(Path("checkpoints/gan/source_only_task/model.pt"))
