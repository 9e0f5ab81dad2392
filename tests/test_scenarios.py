"""The scenario suite's pieces: scenario builders, the runner's workspace and scorecard, the pick-rule dev read."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.io import write_json

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def scripts(monkeypatch):
    """The suite's scripts as modules (scripts/ on the path, as when they run from there)."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def test_the_suite_has_every_kind_of_shift_the_issue_names(scripts):
    make = scripts("make_scenario")
    assert {"builtin", "grey", "photo", "fonts", "camera", "imbalanced", "small"} <= set(make.SCENARIOS)
    assert set(scripts("scenarios").ORDER) == set(make.SCENARIOS)


def test_long_tail_keeps_the_first_class_whole_and_thins_the_last(scripts):
    make = scripts("make_scenario")
    labels = np.repeat(np.arange(10), 200)
    kept = make.long_tail(labels, 12.0, seed=0)
    counts = np.bincount(labels[kept], minlength=10)
    assert counts.max() == 200 and 8 <= counts.min() <= 30            # about 200 / 12
    assert np.array_equal(kept, make.long_tail(labels, 12.0, seed=0))   # seeded


def test_camera_degradation_and_truetype_renders(scripts):
    make = scripts("make_scenario")
    rng = np.random.default_rng(0)
    scan = np.zeros((32, 32), np.uint8)
    scan[8:24, 14:18] = 255
    seen = make.degrade(scan, rng)
    assert seen.shape == scan.shape and seen.dtype == np.uint8
    assert seen[:6].mean() > 15 and seen[8:24, 14:18].mean() < 240      # exposure offset and gain, blur
    fonts = make.font_paths()
    glyph = make.render_truetype(7, np.random.default_rng(1), fonts, canvas=40)
    assert glyph.shape == (40, 40) and glyph.max() >= 170 and np.median(glyph) < 50   # light ink on dark paper


def test_small_scenario_leaves_at_most_300_real_images_for_training(scripts, tmp_path):
    make = scripts("make_scenario")
    data = make.small(tmp_path, seed=0)["data"]
    real = list((tmp_path / "real").rglob("*.png"))
    test_fraction = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["target"]["test_fraction"]
    assert len(real) == 400 and round(len(real) * (1 - test_fraction)) <= 300
    assert data["source"] == {"format": "imagefolder", "root": str(tmp_path / "sim")}


def test_workspace_params_and_code_sync(scripts, tmp_path):
    suite = scripts("scenarios")
    params = suite.scenario_params({"data": {"image_size": 24, "target": {"format": "imagefolder", "root": "r"}}})
    project = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["data"]["image_size"] == 24 and params["data"]["target"]["root"] == "r"
    assert params["data"]["target"]["test_fraction"] == project["data"]["target"]["test_fraction"]   # merged
    assert params["variants"] == project["variants"]

    suite.sync_code(tmp_path)
    copied = tmp_path / "pipeline" / "report.py"
    assert copied.read_bytes() == (REPO / "pipeline" / "report.py").read_bytes()
    os.utime(copied, (0, 0))
    (tmp_path / "pipeline" / "gone.py").write_text("# a module since removed\n")
    suite.sync_code(tmp_path)
    assert copied.stat().st_mtime == 0                   # unchanged: left alone (DVC sees no change)
    assert not (tmp_path / "pipeline" / "gone.py").exists()


def card(accuracies: dict[str, float], pick: str | None, dev: dict[str, float]) -> dict:
    return {"pick": {"variant": pick, "rule": "r"}, "repro_seconds": 600.0,
            "variants": {v: {"accuracy": a, "macro_f1": a, "uses_target_labels": v == "target_oracle",
                             "dev_accuracy": dev[v]} for v, a in accuracies.items()}}


def test_scorecard_gap_closed_by_the_pick(scripts):
    suite = scripts("scenarios")
    c = card({"source_only": 0.4, "dann": 0.6, "target_oracle": 0.9}, "dann", {"source_only": 0, "dann": 0,
                                                                              "target_oracle": 0})
    assert suite.gap(c) == pytest.approx(0.4)
    assert suite.gap({**c, "pick": {"variant": None}}) == 0.0          # no pick: the user keeps source_only
    partial = card({"dann": 0.6}, "dann", {"dann": 0})                  # a workspace where only dann ran
    assert suite.gap(partial) is None and "| n/a |" in suite.scorecard_markdown({"b": partial})
    text = suite.scorecard_markdown({"a": c})
    assert "| a | 0.400 | 0.600 | 0.900 | dann | 40% | 10.0 min |" in text and "mean 40%, worst 40%" in text


def test_other_pipeline_seeds_get_their_own_workspace_and_a_mean_of_the_pick(scripts):
    suite = scripts("scenarios")
    assert suite.workspace_name("builtin", 0) == "builtin" and suite.workspace_name("builtin", 2) == "builtin-seed2"
    accs = {"source_only": 0.3, "dann": 0.5, "target_oracle": 0.9}
    zero = {"dann": 0, "source_only": 0, "target_oracle": 0}
    text = suite.seeds_markdown({"builtin": card(accs, "dann", zero)},
                                {"builtin-seed1": card({**accs, "dann": 0.8}, "dann", zero),
                                 "builtin-seed2": card(accs, None, zero)})
    assert "| builtin | 0 | dann | 0.500 | 0.300 | 0.900 | 33% |" in text
    assert "| builtin | 2 | source_only | 0.300 |" in text                   # no pick: the user keeps source_only
    assert "| builtin | mean of 3 | | 0.533 |" in text
    assert suite.seeds_markdown({"builtin": card(accs, "dann", zero)}, {}) == ""


def test_pick_rules_scores_each_rule_on_the_dev_labels(scripts, tmp_path):
    """Two scenarios: IM picks the variant with the best dev accuracy on one and a worse one on the other."""
    rules = scripts("pick_rules")
    for name, (im_dann, dev_dann) in {"one": (1.5, 0.7), "two": (1.5, 0.3)}.items():
        ws = tmp_path / name
        write_json(ws / "scorecard.json", card({"source_only": 0.5, "dann": 0.6, "target_oracle": 0.9}, "dann",
                                               {"source_only": 0.5, "dann": dev_dann, "target_oracle": 1.0}))
        for variant, im in (("source_only", 0.8), ("dann", im_dann), ("target_oracle", 2.0)):
            write_json(ws / "reports" / "train" / variant / "metrics.json", {
                "warnings": [], "target_predicted": [0, 1, 2],
                "label_free": {"source_val_acc": 0.9, "target_entropy": 0.5, "target_im": im, "target_snd": 4.0,
                               "target_class_share_max": 0.2, "target_bnm": 0.5, "target_class_ami": 0.5}})
        (ws / "params.yaml").write_text(yaml.safe_dump({"data": {"classes": [str(k) for k in range(10)]}}))
    scenarios = {p.parent.name: rules.rows_of(p.parent) for p in sorted(tmp_path.glob("*/scorecard.json"))}
    result = rules.evaluate(scenarios, "im")
    assert result["scenarios"]["one"]["chosen"] == "dann" and result["scenarios"]["two"]["chosen"] == "dann"
    assert result["hit_rate"] == 0.5 and result["mean_regret"] == pytest.approx(0.1)
    assert result["below_source_only"] == ["two"]
    assert json.loads((tmp_path / "one" / "scorecard.json").read_text())["pick"]["variant"] == "dann"


def test_rerun_runs_each_named_stage_alone(scripts, tmp_path, monkeypatch):
    suite = scripts("scenarios")
    calls = []
    monkeypatch.setattr(suite.subprocess, "run", lambda command, **kw: calls.append(command[3:]))
    suite.repro(tmp_path, None, ["train_task@randomized_st", "report"])
    assert calls == [["repro", "--single-item", "train_task@randomized_st"], ["repro", "--single-item", "report"]]
    calls.clear()
    suite.repro(tmp_path, "prepare")
    assert calls == [["repro", "prepare"]]


def test_the_few_label_variants_are_the_readmes_and_the_params_files(scripts, default_raw):
    """The suite's --labels runs use exactly the variants the README tells a user to add (and params.yaml's
    comment shows), and they pass params.yaml's checks."""
    import re

    from pipeline.config import parse_params

    runner = scripts("scenarios")
    made = runner.few_label_params(default_raw, 5, skip=("dann",))
    assert made["data"]["target"]["labelled_per_class"] == 5 and "dann" not in made["variants"]
    added = {k: v for k, v in made["variants"].items() if k not in default_raw["variants"]}
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### A few labelled real images"):]
    shown = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["variants"]
    assert added == shown
    commented = "\n".join(line.strip()[2:] for line in (REPO / "params.yaml").read_text().splitlines()
                          if line.strip().startswith(("# few_labels", "#   ")))
    assert yaml.safe_load(commented) == shown
    assert set(parse_params(made).variants) >= {"few_labels", "few_labels_st"}
    assert runner.workspace_name("photo", 1, 5) == "photo-seed1-labels5" and runner.workspace_name("photo", 0) == "photo"


def test_labelled_runs_get_a_table_and_a_curve_of_the_pick_against_labels(scripts, tmp_path):
    suite = scripts("scenarios")
    zero = {"source_only": 0, "few_st": 0, "target_oracle": 0, "randomized": 0}
    free = card({"source_only": 0.3, "randomized": 0.5, "target_oracle": 0.9}, "randomized", zero)
    few = {**card({"source_only": 0.3, "few_st": 0.8, "target_oracle": 0.9}, "few_st", zero),
           "scenario": "builtin", "seed": 0, "labels": 5}
    few["variants"]["few_st"].update(uses_target_labels=True, few_target_labels=True)
    few["variants"]["source_only"]["uses_target_labels"] = False
    text = suite.labels_markdown([few], {"builtin": free})
    assert "| builtin | 0 | 0 | randomized | 0.500 |" in text                 # the label-free run first
    assert "| builtin | 0 | 5 | few_st | 0.800 | few_st | 0.800 | 0.300 | 0.900 | 83% |" in text
    assert suite.labels_markdown([], {"builtin": free}) == ""
    path = suite.plot_labels_curve([few], {"builtin": free}, tmp_path / "curve.png")
    assert path.stat().st_size > 1000
    assert suite.plot_labels_curve([], {"builtin": free}, tmp_path / "none.png") is None


def test_every_gan_ablation_is_a_valid_params_file_and_the_family_covers_issue_23(scripts):
    """Each ablation of scripts/ablate_gan.py applied to params.yaml parses (a typo in a key would
    only show after minutes of training), and the family set has the four translators."""
    from pipeline.config import parse_params

    ablate = scripts("ablate_gan")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, overrides in ablate.ABLATIONS.items():
        changed = raw
        for key, value in overrides.items():
            changed = ablate.with_override(changed, key, value)
        parse_params(changed)
    family = {name: ablate.ABLATIONS[name] for name in ablate.FAMILY}
    assert family["full"] == {} and family["simgan"]["gan.structure"] == "one_sided"
    assert {"gan.weights.constancy", "gan.weights.perceptual", "gan.weights.distance"} <= \
        {key for overrides in family.values() for key in overrides}


def test_gan_ablation_dev_table_has_mean_and_worst(scripts):
    ablate = scripts("ablate_gan")
    row = {"gan/images_per_second": 10.0}
    results = {"/w/a": {"full": {**row, ablate.DEV: 0.5}, "simgan": {**row, ablate.DEV: 0.7}},
               "/w/b": {"full": {**row, ablate.DEV: 0.9}, "simgan": {**row, ablate.DEV: 0.6}}}
    lines = ablate.dev_table(results).splitlines()
    assert lines[0].startswith("| ablation | a | b | mean | worst |")
    assert lines[2] == "| full | 0.500 | 0.900 | 0.700 | 0.500 | 10.0 |"
    assert lines[3] == "| simgan | 0.700 | 0.600 | 0.650 | 0.600 | 10.0 |"
