"""A few labelled real images: prepared as their own splits, trained on by the variants that ask for
them, used by the report to choose, and never mixed with the held-out test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import deep_update
from pipeline.config import ConfigError, parse_params
from pipeline.data.manifest import label_origin, manifest_rows, read_manifest
from pipeline.data.prepare import PrepareError, prepare
from pipeline.distributed import Runtime
from pipeline.io import save_png
from pipeline.report import Row, summarize, to_markdown, write_report
from pipeline.selection import choose, choose_by_labels, wilson
from pipeline.task.clustering import cluster_labels
from pipeline.task.train import train_task_model
from tinydata import CLASSES, RecordingTracker, tiny_image, tiny_task_raw, write_split

CPU = Runtime(torch.device("cpu"))


# ------------------------------------------------------------------------------------------------
# prepare: target/labelled and target/pick
# ------------------------------------------------------------------------------------------------


def _imagefolder(root: Path, per_class: int, seed: int, real: bool) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(per_class * len(CLASSES)):
        label = i % len(CLASSES)
        save_png(tiny_image(label, rng, real), root / CLASSES[label] / f"{seed}_{i:04d}.png")
    return root


def _raw(tmp_path: Path, target: dict) -> dict:
    src = _imagefolder(tmp_path / "sim", 12, 1, real=False)
    real = _imagefolder(tmp_path / "real", 20, 2, real=True)
    raw = tiny_task_raw(tmp_path, tmp_path / "data" / "prepared")
    raw["data"]["source"] = {"format": "imagefolder", "root": str(src)}
    raw["data"]["target"] = {"format": "imagefolder", "root": str(real), **target}
    return raw


def _names(folder: Path) -> list[str]:
    return sorted(Path(p).name for p in (folder / "images").iterdir())


def _pixels(folder: Path) -> set[bytes]:
    from PIL import Image

    return {np.asarray(Image.open(p)).tobytes() for p in (folder / "images").iterdir()}


def test_labelled_per_class_draws_k_per_class_from_the_training_split_and_keeps_some_to_choose(tmp_path):
    params = parse_params(_raw(tmp_path, {"labelled_per_class": 5, "pick_fraction": 0.4}))
    stats, _ = prepare(params, tmp_path / "out")
    out = tmp_path / "out" / "target"
    assert stats["splits"]["target/labelled"]["per_class"] == {"a": 3, "b": 3}
    assert stats["splits"]["target/pick"]["per_class"] == {"a": 2, "b": 2}
    assert label_origin(out / "labelled") == label_origin(out / "pick") == "real"
    fit, pick, train, test = (_pixels(out / s) for s in ("labelled", "pick", "train", "test"))
    assert not fit & pick and fit | pick <= train and not (fit | pick) & test
    again = tmp_path / "again"
    prepare(params, again)
    assert _pixels(again / "target" / "labelled") == fit              # seeded: the same draw


def test_without_labelled_real_images_the_optional_splits_are_empty(tmp_path):
    stats, _ = prepare(parse_params(_raw(tmp_path, {})), tmp_path / "out")
    for split in ("labelled", "pick"):
        assert manifest_rows(tmp_path / "out" / "target" / split) == 0
        assert label_origin(tmp_path / "out" / "target" / split) == "none"
    assert stats["splits"]["target/labelled"]["count"] == 0


def test_more_labels_per_class_than_real_images_is_refused_naming_the_class(tmp_path):
    with pytest.raises(PrepareError, match="labelled_per_class.*class 'a' has 14 real training image"):
        prepare(parse_params(_raw(tmp_path, {"labelled_per_class": 15})), tmp_path / "out")


def test_a_labelled_folder_is_split_into_labelled_and_pick(tmp_path):
    few = _imagefolder(tmp_path / "few", 5, 7, real=True)
    stats, _ = prepare(parse_params(_raw(tmp_path, {"labelled_root": str(few)})), tmp_path / "out")
    assert stats["splits"]["target/labelled"]["count"] == 6 and stats["splits"]["target/pick"]["count"] == 4


@pytest.mark.parametrize("rename", [False, True])
def test_a_labelled_image_that_copies_a_test_image_is_refused(tmp_path, rename):
    raw = _raw(tmp_path, {})
    test = _imagefolder(tmp_path / "test", 6, 9, real=True)
    raw["data"]["target"]["test_root"] = str(test)
    few = _imagefolder(tmp_path / "few", 4, 7, real=True)
    victim = sorted((test / "b").iterdir())[0]
    shutil.copyfile(victim, few / "b" / ("holiday.png" if rename else victim.name))
    raw["data"]["target"]["labelled_root"] = str(few)
    with pytest.raises(PrepareError, match="pixel-identical to held-out test images.*target/(labelled|pick)"):
        prepare(parse_params(raw), tmp_path / "out")
    assert not (tmp_path / "out").exists()                          # nothing half-written


# ------------------------------------------------------------------------------------------------
# params.yaml checks
# ------------------------------------------------------------------------------------------------


def _with(tmp_path: Path, overrides: dict) -> dict:
    return deep_update(_raw(tmp_path, {}), overrides)


@pytest.mark.parametrize("overrides, match", [
    ({"variants": {"source_only": {"labelled_batch": 4}}}, "variants.source_only.labelled_batch: 4 labelled real"),
    ({"data": {"target": {"labelled_per_class": 2}}, "variants": {"dann": {"labelled_batch": 4}}},
     "variants.dann.labelled_batch: method 'dann' does not train on labelled real images"),
    ({"data": {"target": {"labelled_per_class": 2, "labelled_root": "."}}}, "one way"),
    ({"data": {"source": {"labelled_per_class": 2}}}, "data.source.labelled_per_class: labelled real images belong"),
    ({"data": {"target": {"labelled_per_class": -1}}}, "data.target.labelled_per_class: expected a non-negative"),
    ({"data": {"target": {"pick_fraction": 1.0}}}, r"data.target.pick_fraction: expected a fraction in \[0, 1\)"),
    ({"data": {"target": {"labelled_root": "/no/such/folder"}}}, "data.target.labelled_root: '/no/such/folder' does not"),
])
def test_bad_labelled_settings_name_the_key(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        parse_params(_with(tmp_path, overrides))


def test_a_flat_target_folder_cannot_draw_labels(tmp_path):
    raw = _raw(tmp_path, {})
    raw["data"]["target"] = {"format": "folder", "root": str(tmp_path / "real" / "a"), "test_root": str(tmp_path / "real"),
                             "labelled_per_class": 2}
    raw["variants"].pop("target_oracle")
    with pytest.raises(ConfigError, match="flat target folder has no labels.*labelled_root"):
        parse_params(raw)


# ------------------------------------------------------------------------------------------------
# Training on them, and the record the report reads
# ------------------------------------------------------------------------------------------------


def _prepared_with_few(root: Path) -> Path:
    from tinydata import tiny_prepared

    prepared = tiny_prepared(root)
    write_split(prepared / "target" / "labelled", 6, seed=5, real=True)
    write_split(prepared / "target" / "pick", 4, seed=6, real=True)
    return prepared


def _train(root: Path, prepared: Path, variant: str, **fields):
    raw = tiny_task_raw(root, prepared)
    raw["data"]["target"]["labelled_per_class"] = 5
    raw["variants"][variant].update(fields)
    return train_task_model(parse_params(raw), variant, CPU, RecordingTracker(), root / "ckpt" / variant,
                            root / "reports" / variant, prepared=prepared)


@pytest.mark.parametrize("variant", ["source_only", "self_training"])
def test_a_variant_with_a_labelled_batch_trains_on_them_and_says_so(tmp_path, variant, monkeypatch):
    prepared = _prepared_with_few(tmp_path)
    seen = []
    from pipeline.methods.base import StepBatch
    original = StepBatch.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.labelled_real)
    monkeypatch.setattr(StepBatch, "__init__", spy)
    result = _train(tmp_path, prepared, variant, labelled_batch=4)
    assert all(r is not None and len(r[0]) == 4 and set(r[1].tolist()) <= {0, 1} for r in seen)
    m = result.metrics
    assert m["uses_target_labels"] is True and m["few_target_labels"] is True and m["labelled_real_images"] == 6
    assert m["labelled_pick"]["images"] == 4 and 0 <= m["labelled_pick"]["accuracy"] <= 1
    assert result.meta["uses_target_labels"] is True


def test_a_label_free_variant_is_scored_on_the_pick_images_but_stays_label_free(tmp_path):
    prepared = _prepared_with_few(tmp_path)
    m = _train(tmp_path, prepared, "source_only").metrics
    assert m["uses_target_labels"] is False and m["few_target_labels"] is False and m["labelled_real_images"] == 0
    assert m["labelled_pick"]["images"] == 4
    oracle = _train(tmp_path, prepared, "target_oracle").metrics
    assert oracle["uses_target_labels"] is True and oracle["few_target_labels"] is False


def test_anchors_keep_their_class_and_seed_it():
    # two tight groups; the model's probabilities call every image class 0, the anchors say group 2 is class 1
    f = torch.tensor([[1.0, 0.05], [1.0, -0.05], [0.05, 1.0], [-0.05, 1.0]])
    probs = torch.tensor([[0.9, 0.1]] * 4)
    init = torch.tensor([[0.0, 1.0], [1.0, 0.0]])                    # seeds the wrong way round
    swapped, _ = cluster_labels(f, probs, 2, align=False, init=init)
    assert swapped.tolist() == [1, 1, 0, 0]
    anchors = (torch.tensor([[0.0, 1.0]]), torch.tensor([1]))         # one labelled image of class 1
    labels, centroids = cluster_labels(f, probs, 2, align=False, init=init, anchors=anchors)
    assert labels.tolist() == [0, 0, 1, 1]
    assert torch.allclose(centroids[1], torch.nn.functional.normalize(f[2:].sum(0) + anchors[0][0], dim=0))


# ------------------------------------------------------------------------------------------------
# Choosing with them
# ------------------------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    low, high = wilson(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson(1.0, 20)
    assert high == 1.0 and low == pytest.approx(0.8389, abs=1e-4)


def _row(variant, pick, uses=False, few=False, im=1.0, test=0.5):
    return Row(variant, test, test, uses, source_val_acc=0.9, target_im=im, target_class_share_max=0.2,
               target_entropy=0.1, few_target_labels=few, labelled_real_images=30 if few else 0,
               pick_accuracy=pick, pick_images=20)


def test_the_labelled_pick_takes_the_best_candidate_never_the_oracle():
    rows = [_row("source_only", 0.30), _row("randomized_st", 0.80, im=2.0), _row("few_st", 0.90, uses=True, few=True),
            _row("target_oracle", 1.00, uses=True)]
    variant, reason, estimate = choose_by_labels(rows)
    assert variant == "few_st" and estimate["images"] == 20 and estimate["low"] < 0.9 < estimate["high"]
    assert "next randomized_st 0.800" in reason and "within the pick's interval" in reason
    assert choose(rows, 10)[0] == "randomized_st"                    # without pick images: the label-free rule
    rows[2].target_im, rows[3].target_im = 2.5, 3.0                  # may take a few-label variant, never the oracle
    variant, reason = choose(rows, 10)
    assert variant == "few_st" and "1 trained on the few labelled real images" in reason
    assert choose_by_labels([_row("a", None), _row("b", None)]) is None
    tied = [_row("randomized", 0.225, im=3.0), _row("few_labels", 0.225, uses=True, few=True, im=0.5)]
    assert choose_by_labels(tied)[0] == "few_labels"                 # a tie goes to the one trained on real labels


def test_the_report_picks_by_labels_and_marks_few_label_variants(tmp_path):
    rows = {"source_only": (0.3, 0.25, False, False), "randomized_st": (0.8, 0.75, False, False),
            "few_labels_st": (0.95, 0.9, True, True), "target_oracle": (0.98, 1.0, True, False)}
    for v, (test_acc, pick_acc, uses, few) in rows.items():
        (tmp_path / "eval" / v).mkdir(parents=True)
        (tmp_path / "eval" / v / "metrics.json").write_text(json.dumps(
            {"accuracy": test_acc, "macro_f1": test_acc, "uses_target_labels": uses}))
        (tmp_path / "train" / v).mkdir(parents=True)
        (tmp_path / "train" / v / "metrics.json").write_text(json.dumps(
            {"uses_target_labels": uses, "few_target_labels": few, "labelled_real_images": 30 if few else 0,
             "labelled_pick": {"accuracy": pick_acc, "images": 20},
             "label_free": {"source_val_acc": 0.9, "target_im": 1.5 if v == "randomized_st" else 1.0,
                            "target_class_share_max": 0.2, "target_entropy": 0.2}}))
    summary = write_report(tmp_path / "eval", tmp_path / "out", order=list(rows), train_dir=tmp_path / "train",
                           n_classes=10)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())["pick"]
    assert saved["variant"] == "few_labels_st" and saved["label_free"] == "randomized_st"
    assert saved["estimate"]["accuracy"] == 0.9 and saved["estimate"]["images"] == 20
    assert "labelled real pick images" in saved["rule"]
    md = to_markdown(summary)
    assert "| few_labels_st | 0.9500 | 0.9500 | 95.6% | few |" in md
    assert "## Choosing with a few labelled real images" in md
    assert "The label-free rule alone would pick randomized_st" in md


def test_without_pick_images_the_label_free_rule_decides():
    summary = summarize({"source_only": {"accuracy": 0.3, "macro_f1": 0.3, "uses_target_labels": False},
                         "randomized_st": {"accuracy": 0.8, "macro_f1": 0.8, "uses_target_labels": False}},
                        label_free={"source_only": {"source_val_acc": 0.9, "target_im": 1.0,
                                                    "target_class_share_max": 0.2},
                                    "randomized_st": {"source_val_acc": 0.9, "target_im": 2.0,
                                                      "target_class_share_max": 0.2}}, n_classes=10)
    assert summary.pick == "randomized_st" and summary.pick_estimate is None
    assert "Choosing with a few labelled" not in to_markdown(summary)


def test_read_manifest_of_the_prepared_labelled_split_has_every_label(tmp_path):
    params = parse_params(_raw(tmp_path, {"labelled_per_class": 3}))
    prepare(params, tmp_path / "out")
    entries = read_manifest(tmp_path / "out" / "target" / "labelled" / "manifest.csv", CLASSES, require_labels=True)
    assert len(entries) == 4 and {e.label for e in entries} == {0, 1}


@pytest.mark.slow
def test_dvc_repro_with_a_few_labels_flows_from_prepare_to_the_pick(tmp_path, default_raw):
    """The README's recipe on a tiny built-in scenario: labelled_per_class and a variant that trains on
    them, through prepare, train_task, evaluate and the report's labelled pick."""
    import subprocess
    import sys

    from conftest import dvc_env, make_project_copy, tiny_budget

    raw = tiny_budget(default_raw, {"data": {"image_size": 16, "render": {"train_count": 60, "val_count": 30},
                                             "target": {"labelled_per_class": 3}},
                                    "task": {"width": 4, "steps": 4, "eval_every": 2, "batch_size": 32}})
    raw["variants"] = {"source_only": raw["variants"]["source_only"],
                       "few_labels": {"method": "supervised", "train": "data/prepared/source/train",
                                      "labelled_batch": 8},
                       "target_oracle": raw["variants"]["target_oracle"]}
    repo = make_project_copy(tmp_path / "repo", raw)
    env = {**dvc_env(), "SIM2REAL_TRACKING": "on"}                  # as a user runs it: MLflow on
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo, env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    stats = json.loads((repo / "reports/prepare/stats.json").read_text())["splits"]
    assert stats["target/labelled"]["count"] == 20 and stats["target/pick"]["count"] == 10
    record = json.loads((repo / "reports/train/few_labels/metrics.json").read_text())
    assert record["few_target_labels"] and record["labelled_real_images"] == 20
    pick = json.loads((repo / "reports/summary.json").read_text())["pick"]
    assert pick["variant"] in ("source_only", "few_labels") and pick["estimate"]["images"] == 10
    md = (repo / "reports/summary.md").read_text()
    assert "| few |" in md and "Choosing with a few labelled real images" in md
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = {r.info.run_name: r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}
    tags = runs["train_task@few_labels"].data.tags
    assert tags["uses_target_labels"] == "True" and tags["few_target_labels"] == "True"
    assert runs["train_task@source_only"].data.tags["few_target_labels"] == "False"
    assert runs["report"].data.tags["sim2real.pick"] == pick["variant"]


def test_a_labelled_folder_beside_the_built_in_scenario(tmp_path, tiny_raw):
    few = tmp_path / "few"
    rng = np.random.default_rng(3)
    for k in range(10):
        for i in range(2):
            save_png(rng.integers(0, 255, (16, 16, 1), dtype=np.uint8), few / str(k) / f"{i}.png")
    raw = deep_update(tiny_raw, {"data": {"target": {"labelled_root": str(few), "pick_fraction": 0.5}}})
    stats, _ = prepare(parse_params(raw), tmp_path / "out")
    assert stats["splits"]["target/labelled"]["count"] == 10 and stats["splits"]["target/pick"]["count"] == 10
