"""Task training on a tiny two-class problem: augmentation, supervised and DANN runs, export, resume.

Shared tiny data, params and the recording tracker live in tests/tinydata.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import AugmentStep, ConfigError, parse_params
from pipeline.data.augment import build_augment
from pipeline.distributed import Runtime
from pipeline.task.export import load_task_model
from pipeline.task.train import export_task_model, train_task_model
from pipeline.task.variant import Variant
from tinydata import CLASSES, SIZE, RecordingTracker, tiny_params, tiny_prepared, tiny_task_raw, write_split  # noqa: F401

CPU = Runtime(torch.device("cpu"))


@pytest.fixture
def project(tmp_path):
    return tmp_path, tiny_prepared(tmp_path)


def train(params, variant, root: Path, tag: str = "run", tracker=None, **kwargs):
    return train_task_model(params, variant, CPU, tracker or RecordingTracker(), root / "ckpt" / tag,
                            root / "reports" / tag, prepared=root / "data" / "prepared", **kwargs)


# ------------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------------


def test_augment_keeps_single_channel_uint8_and_reseeds():
    augment = build_augment((AugmentStep("Affine", {"rotate": [-20, 20], "p": 1.0}),
                             AugmentStep("GaussianBlur", {"p": 1.0})))
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 1), dtype=np.uint8)
    augment.reseed(7)
    first = augment(image)
    augment.reseed(7)
    assert first.shape == (SIZE, SIZE, 1) and first.dtype == np.uint8
    assert np.array_equal(first, augment(image))
    assert build_augment(()) is None


@pytest.mark.parametrize("step, key", [
    (AugmentStep("NoSuchTransform", {}), "augment[1].name"),
    (AugmentStep("Compose", {}), "augment[1].name"),
    (AugmentStep("Affine", {"rotat": 3}), "augment[1].params"),
    (AugmentStep("Affine", {"rotate": "much"}), "augment[1].params"),
])
def test_augment_errors_name_the_step(step, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        build_augment((AugmentStep("HorizontalFlip", {}), step))


# ------------------------------------------------------------------------------------------------
# Supervised and DANN
# ------------------------------------------------------------------------------------------------


def test_supervised_run_learns_and_exports_a_loadable_model(project):
    root, prepared = project
    params = tiny_params(root, prepared, steps=18)
    tracker = RecordingTracker()
    result = train(params, "source_only", root, tracker=tracker)

    assert result.history[-1]["train_acc"] > 0.75          # chance is 0.5
    assert max(row["source_val_acc"] for row in result.history) > 0.75
    rounds = [(m, step) for m, step in tracker.metrics if "source_val_acc" in m]
    assert [step for _, step in rounds] == [6, 12, 18]                   # logged per round, by step
    assert any("label_free.target_im" in m for m, _ in tracker.metrics)  # and the label-free scores once
    with open(root / "reports" / "run" / "history.csv") as fh:
        header = next(csv.reader(fh))
    assert header[:2] == ["epoch", "step"] and {"loss/task", "train_acc", "source_val_acc", "lr"} <= set(header)
    with open(root / "reports" / "run" / "steps.csv") as fh:          # the training curve: a row per 25 steps
        steps = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in steps] == [18] and float(steps[0]["loss"]) > 0
    assert 0.0 <= float(steps[0]["train_acc"]) <= 1.0
    metrics = json.loads((root / "reports" / "run" / "metrics.json").read_text())
    assert metrics["selected_round"] in (1, 2, 3) and metrics["images_per_second"] > 0 and metrics["steps"] == 18
    assert {"source_val_acc", "target_im", "target_entropy", "target_snd"} <= set(metrics["label_free"])

    path = export_task_model(result, root / "models", tracker)
    model, meta = load_task_model(path)
    x = torch.randn(5, 1, SIZE, SIZE)
    assert torch.equal(model(x), result.model(x))
    assert meta["classes"] == list(CLASSES) and meta["uses_target_labels"] is False
    assert meta["selected_epoch"] == metrics["selected_round"] and tracker.models == ["task_source_only"]
    assert tracker.tags["uses_target_labels"] is False


def test_only_target_trained_variants_use_target_labels(project):
    root, prepared = project
    params = tiny_params(root, prepared)
    assert [Variant.resolve(params, v, prepared).uses_target_labels() for v in ("source_only", "dann", "target_oracle")] == \
        [False, False, True]


def test_real_labels_are_known_by_their_mark_wherever_the_folder_lies(project, tmp_path):
    """A copy of the labelled real images outside data/prepared/target, or a translation of them (labels
    kept), still counts as using target labels; a folder without the prepare's mark is unknown (None),
    never assumed synthetic; a real val folder counts too (selection on real labels)."""
    import shutil

    from pipeline.gan.translate import carry_label_origin

    root, prepared = project
    copy = tmp_path / "elsewhere" / "copy_of_target_train"
    shutil.copytree(prepared / "target" / "train", copy)
    translated = tmp_path / "translated_target"
    translated.mkdir()
    assert carry_label_origin(prepared / "target" / "train", True, translated) == "real"
    unmarked = tmp_path / "unmarked"
    shutil.copytree(prepared / "source" / "train", unmarked)
    (unmarked / "LABEL_ORIGIN").unlink()
    raw = tiny_task_raw(root, prepared)
    raw["variants"] = {
        "copied": {"method": "supervised", "train": str(copy)},
        "translated_real": {"method": "supervised", "train": str(translated)},
        "unmarked": {"method": "supervised", "train": str(unmarked)},
        "real_val": {"method": "supervised", "train": str(prepared / "source" / "train"),
                     "val": str(prepared / "target" / "train")},
        "source_only": {"method": "supervised", "train": str(prepared / "source" / "train")}}
    params = parse_params(raw)
    assert {v: Variant.resolve(params, v, prepared).uses_target_labels() for v in raw["variants"]} == {
        "copied": True, "translated_real": True, "unmarked": None, "real_val": True, "source_only": False}


def test_dann_logs_rising_lambda_and_domain_accuracy(project):
    root, prepared = project
    tracker = RecordingTracker()
    result = train(tiny_params(root, prepared, steps=18), "dann", root, tracker=tracker)

    logged = [m for m, _ in tracker.metrics if "source_val_acc" in m]
    lambdas = [m["lambda"] for m in logged]
    assert len(logged) == 3 and all(b > a for a, b in zip(lambdas, lambdas[1:])) and 0 < lambdas[0] < 1
    assert all(0.0 <= m["domain_acc"] <= 1.0 and m["loss/domain"] > 0 for m in logged)
    assert all({"loss/task", "train_acc", "source_val_acc", "lr"} <= set(m) for m in logged)
    lrs = [m["lr"] for m in logged]
    assert all(b < a for a, b in zip(lrs, lrs[1:]))           # annealed lr0 / (1 + alpha p) ** beta
    assert result.meta["method"] == "dann"


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


def interrupt_after(epoch: int):
    def hook(done: int, row: dict) -> None:
        if done == epoch:
            raise Interrupted
    return hook


def test_interrupted_run_resumes_to_the_same_weights(project):
    root, prepared = project
    params = tiny_params(root, prepared, steps=18, select="last")
    straight = train(params, "dann", root, tag="straight")

    with pytest.raises(Interrupted):
        train(params, "dann", root, tag="resumed", on_epoch_end=interrupt_after(2))
    seen = []
    resumed = train(params, "dann", root, tag="resumed", on_epoch_end=lambda e, row: seen.append(e))

    assert seen == [3]                                          # only the missing epoch ran
    assert resumed.history == straight.history
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    a = torch.load(root / "ckpt" / "straight" / "last.pt", weights_only=True)
    b = torch.load(root / "ckpt" / "resumed" / "last.pt", weights_only=True)
    for key, value in a["modules"]["discriminator"].items():
        assert torch.equal(value, b["modules"]["discriminator"][key]), key


def test_training_curve_rows_survive_an_interruption_mid_row(project, monkeypatch):
    import pipeline.task.train as train_module

    monkeypatch.setattr(train_module, "STEP_LOG_EVERY", 4)         # rows at 4, 8, 12, 16 and the last, 18
    root, prepared = project
    params = tiny_params(root, prepared, steps=18, select="last")   # rounds of 6 steps: row 5-8 spans a checkpoint
    straight = train(params, "source_only", root, tag="straight")
    with pytest.raises(Interrupted):
        train(params, "source_only", root, tag="resumed", on_epoch_end=interrupt_after(1))
    train(params, "source_only", root, tag="resumed")
    read = lambda tag: (root / "reports" / tag / "steps.csv").read_text()   # noqa: E731
    assert read("resumed") == read("straight")
    rows = list(csv.DictReader(read("straight").splitlines()))
    assert [int(r["step"]) for r in rows] == [4, 8, 12, 16, 18] and straight.history[-1]["step"] == 18
    assert all(float(r["loss"]) > 0 and 0 <= float(r["train_acc"]) <= 1 for r in rows)


def test_checkpoint_from_other_params_is_moved_aside(project):
    root, prepared = project
    train(tiny_params(root, prepared, steps=6), "source_only", root)
    seen = []
    train(tiny_params(root, prepared, seed=1, steps=6), "source_only", root,
          on_epoch_end=lambda e, row: seen.append(e))

    assert seen == [1]                                          # trained afresh
    assert len(list((root / "ckpt" / "run").glob("stale-*.pt"))) == 1
    assert (root / "ckpt" / "run" / "last.pt").exists()


def test_checkpoint_from_other_training_data_is_not_resumed(project):
    root, prepared = project
    params = tiny_params(root, prepared, steps=6)
    train(params, "source_only", root)
    write_split(prepared / "source" / "train", 48, seed=99)     # same names, other images
    seen = []
    train(params, "source_only", root, on_epoch_end=lambda e, row: seen.append(e))

    assert seen == [1] and len(list((root / "ckpt" / "run").glob("stale-*.pt"))) == 1


def test_stage_rejects_an_unknown_variant(project, monkeypatch):
    from stages import train_task

    root, prepared = project
    monkeypatch.setenv("SIM2REAL_TRACKING", "off")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_task_raw(root, prepared)))
    with pytest.raises(ConfigError, match=r"variants\.nope"):
        train_task.main(["--variant", "nope", "--params", str(root / "params.yaml")])


# ------------------------------------------------------------------------------------------------
# Methods are plug-ins
# ------------------------------------------------------------------------------------------------


def test_a_new_method_is_one_registered_class(project):
    """A throw-away method trains through the loop without any edit to the loop or the config."""
    from dataclasses import dataclass

    import torch.nn.functional as F
    from torch import nn

    from pipeline import methods
    from pipeline.methods.base import Method, StepOutput

    @dataclass(frozen=True)
    class CenteredParams:
        weight: float = 0.5

    calls = []

    @methods.register
    class FeatureCentering(Method):
        """CE on the labelled batch plus ``weight * ||mean f(x_t)||^2`` on a real batch."""
        name = "feature_centering_test"
        Params = CenteredParams

        def __init__(self, params, ctx):
            super().__init__(params, ctx)
            self.scale = nn.Linear(1, 1)          # an extra trainable module, checkpointed by the loop

        @classmethod
        def target_views_of(cls, params):
            return {"real": None}

        def modules(self):
            return {"scale": self.scale}

        def loss(self, net, batch, progress):
            n = len(batch.x)
            features, logits = net(torch.cat([batch.x, batch.target["real"]]))
            ce = F.cross_entropy(logits[:n], batch.y)
            centre = features[n:].mean(0).pow(2).sum() * self.scale.weight.squeeze()
            calls.append((len(batch.x), len(batch.target["real"])))
            return StepOutput(ce + self.params.weight * centre, logits[:n], {"task": ce, "centre": centre})

    try:
        root, prepared = project
        raw = tiny_task_raw(root, prepared, steps=6)
        raw["variants"]["centered"] = {"method": "feature_centering_test", "train": str(prepared / "source" / "train"),
                                       "params": {"weight": 0.25}}
        params = parse_params(raw)
        assert params.variant("centered").params == {"weight": 0.25}
        result = train(params, "centered", root, tracker=RecordingTracker())
        assert calls == [(8, 8)] * 6 and "loss/centre" in result.history[-1]
        assert set(result.modules) == {"scale"}
        saved = torch.load(root / "ckpt" / "run" / "last.pt", weights_only=True)
        assert set(saved["modules"]) == {"scale"}
        with pytest.raises(ConfigError, match=r"variants\.centered\.params\.wieght: unknown key"):
            parse_params({**raw, "variants": {**raw["variants"], "centered": {
                "method": "feature_centering_test", "train": "x", "params": {"wieght": 1}}}})
    finally:
        methods.unregister("feature_centering_test")
    with pytest.raises(ConfigError, match="variants.centered.method: unknown method"):
        parse_params(raw)


def test_collapse_guard_exports_the_best_round_and_says_so():
    from pipeline.task.train import RunState, collapse_guard

    run = RunState(best_epoch=4, best_val_acc=0.2, best_state={"w": torch.zeros(1)},
                   top_epoch=2, top_val_acc=0.9, top_state={"w": torch.ones(1)})
    warning = collapse_guard(run)
    assert "collapsed from 0.900 (round 2) to 0.200 (round 4); exported round 2" in warning
    assert run.best_epoch == 2 and torch.equal(run.best_state["w"], torch.ones(1))
    healthy = RunState(best_epoch=4, best_val_acc=0.8, top_epoch=2, top_val_acc=0.9, top_state={"w": torch.ones(1)})
    assert collapse_guard(healthy) is None and healthy.best_epoch == 4


def test_preload_decodes_once_within_the_budget_and_streams_beyond(project):
    from pipeline.data.manifest import ImageSet, preload_within

    root, prepared = project
    small = ImageSet(prepared / "source" / "val", CLASSES, 1, SIZE)        # 16 images of 16x16: 4096 bytes
    large = ImageSet(prepared / "source" / "train", CLASSES, 1, SIZE)      # 48 images: 12288 bytes
    before = [small[i][0] for i in range(len(small))]
    preload_within([small, None, large], max_bytes=10_000)
    assert small._decoded is not None and large._decoded is None           # the second did not fit what was left
    assert all(torch.equal(a, small[i][0]) for i, a in enumerate(before))  # same images from memory
    (prepared / "source" / "val" / "images" / "0000.png").unlink()          # memory, not disk, serves them now
    assert small[0][0].shape == (1, SIZE, SIZE)


def test_source_val_is_measured_on_the_variants_own_val_folder(project):
    """A variant trained on another domain (translated renders) is validated on labelled images of that
    domain (its ``val``), for selection and for the label-free source-val score."""
    from pipeline.data.manifest import ImageSet
    from pipeline.task.classification import accuracy

    root, prepared = project
    own_val = write_split(root / "translated" / "val", 12, seed=9, real=True)
    raw = tiny_task_raw(root, prepared)
    raw["variants"]["source_only"]["val"] = str(own_val)
    result = train(parse_params(raw), "source_only", root)
    assert result.metrics["val"] == own_val.as_posix()
    expected = accuracy(result.model, ImageSet(own_val, CLASSES, 1, SIZE), torch.device("cpu"))
    assert result.metrics["label_free"]["source_val_acc"] == pytest.approx(expected)
    assert max(row["source_val_acc"] for row in result.history) == pytest.approx(expected)   # select: source_val
