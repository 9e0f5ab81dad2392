"""Choosing without real labels: the health checks (failed to learn, collapsed) and the candidate rules."""

from __future__ import annotations

import json

import pytest

from pipeline.data.manifest import write_manifest
from pipeline.io import write_json
from pipeline.report import Row, pick_variant, write_report
from pipeline.selection import RULES, agreement, choose, failed_to_learn, health
from tinydata import CLASSES, train_tiny_variant, write_split


def row(variant: str, val: float = 0.9, im: float = 1.0, share: float = 0.2, oracle: bool = False,
        warnings: tuple[str, ...] = (), predicted: list[int] | None = None, **scores) -> Row:
    defaults = {"target_entropy": 0.5, "target_snd": 4.0, "target_bnm": 0.5, "target_class_ami": 0.5}
    return Row(variant, 0.5, 0.5, oracle, source_val_acc=val, target_im=im, target_class_share_max=share,
               warnings=list(warnings), target_predicted=predicted, **{**defaults, **scores})


@pytest.mark.parametrize("acc, k, failed", [(0.12, 10, True), (0.32, 10, True), (0.33, 10, False),
                                            (0.6, 2, True), (0.63, 2, False), (None, 10, False)])
def test_failed_to_learn_is_near_chance_for_the_number_of_classes(acc, k, failed):
    assert failed_to_learn(acc, k) is failed


def test_a_variant_that_failed_to_learn_its_source_is_never_picked_by_any_rule():
    """dann never fitted its renders (val acc 0.12 of 10 classes) yet scores best on every label-free
    score: every rule leaves it out and says why."""
    best = dict(im=2.2, target_entropy=0.01, target_snd=9.0, target_bnm=0.99, target_class_ami=0.99)
    rows = [row("source_only", val=0.95, im=0.8, predicted=[0, 1, 2, 3]),
            row("dann", val=0.12, predicted=[0, 1, 2, 3], **best),
            row("randomized", val=0.93, im=1.0, predicted=[0, 1, 2, 0])]
    for rule in RULES:
        name, reason = choose(rows, 10, rule)
        assert name in ("source_only", "randomized"), rule
        assert "dann: failed to learn its labelled data (val acc 0.120, chance 0.100)" in reason


def test_collapse_in_one_class_or_during_training_is_never_picked():
    rows = [row("source_only", im=0.8), row("dann", im=1.5, share=0.7),
            row("randomized_st", im=1.9, warnings=("source-val accuracy collapsed from 0.900 (round 2) to 0.300",))]
    name, reason = pick_variant(rows, n_classes=10)
    assert name == "source_only"
    assert rows[1].health.startswith("collapsed (70% of real images") and "collapsed in training" in rows[2].health
    assert pick_variant([row("a", im=0.8), row("b", im=1.5, share=0.7)], n_classes=2)[0] == "b"   # 2 classes: balanced
    assert pick_variant([row("a", share=0.9), row("b", share=0.7)], n_classes=3) == \
        (None, "every candidate is unhealthy; left out: a: collapsed (90% of real images in one class); "
               "b: collapsed (70% of real images in one class)")


def test_agreement_is_the_mean_share_of_equal_predictions():
    a, b, c = row("a", predicted=[0, 1, 2, 3]), row("b", predicted=[0, 1, 2, 0]), row("c", predicted=[1, 1, 2, 0])
    assert agreement(a, [a, b, c]) == pytest.approx((0.75 + 0.5) / 2)
    assert agreement(b, [a, b, c]) == pytest.approx((0.75 + 0.75) / 2)
    assert choose([a, b, c], 4, "agreement")[0] == "b"                    # the consensus
    assert agreement(a, [a]) is None


def test_tiny_run_that_failed_to_learn_is_marked_in_the_summary_and_not_picked(tmp_path):
    """A real training run whose labelled data teaches nothing (every render labelled ``a``): its
    source-val accuracy is chance, the report marks it and picks the variant that learned."""
    learned, _ = train_tiny_variant(tmp_path / "ok")
    one_class = write_split(tmp_path / "one_class", 48, seed=1)
    write_manifest(one_class, [(f"images/{i:04d}.png", CLASSES[0]) for i in range(48)])   # every render "a"
    stuck, _ = train_tiny_variant(tmp_path / "stuck", train=str(one_class))
    assert stuck.metrics["label_free"]["source_val_acc"] == pytest.approx(0.5)             # chance: 2 classes
    assert failed_to_learn(stuck.metrics["label_free"]["source_val_acc"], len(CLASSES))
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    for name, result in (("source_only", learned), ("stuck", stuck)):
        write_json(train_dir / name / "metrics.json", result.metrics)
        write_json(eval_dir / name / "metrics.json", {"accuracy": 0.5, "macro_f1": 0.5, "uses_target_labels": False})
    summary = write_report(eval_dir, tmp_path / "out", order=["source_only", "stuck"], train_dir=train_dir,
                           n_classes=len(CLASSES))
    assert summary.pick == "source_only"
    text = (tmp_path / "out" / "summary.md").read_text()
    stuck_line = next(line for line in text.splitlines() if line.startswith("| stuck |") and "status" not in line
                      and "failed" in line)
    assert "**not picked: failed to learn its labelled data (val acc 0.500, chance 0.500)**" in stuck_line
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["pick"]["variant"] == "source_only"


def test_health_is_empty_for_a_sound_variant():
    assert health(row("a"), 10) == ""
