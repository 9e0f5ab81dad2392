"""Evaluation on the held-out split, the variant comparison report, and the multi-seed aggregation."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.checkpoint import CheckpointError
from pipeline.io import write_json
from pipeline.report import COLLAPSE_SHARE, PICK_RULE, Row, pick_variant, summarize, write_report
from pipeline.task.evaluate import evaluate_variant
from pipeline.task.export import save_task_model
from pipeline.task.models import build_task_model
from tinydata import CLASSES, SIZE, RecordingTracker, tiny_params, tiny_prepared, tiny_task_raw

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------


def export_untrained(folder: Path, classes=CLASSES) -> Path:
    torch.manual_seed(0)
    model = build_task_model("small_cnn", 1, len(classes), width=4)
    meta = {"classes": list(classes), "image_size": SIZE, "channels": 1, "variant": "source_only",
            "method": "supervised", "selected_epoch": 1, "uses_target_labels": False, "params_hash": "x"}
    save_task_model(folder / "model.pt", model, meta)
    return folder


def test_evaluate_writes_metrics_predictions_and_confusion(tmp_path):
    prepared = tiny_prepared(tmp_path)
    params = tiny_params(tmp_path, prepared)
    tracker = RecordingTracker()
    out = tmp_path / "eval" / "source_only"
    metrics = evaluate_variant(params, "source_only", export_untrained(tmp_path / "model"), out, tracker,
                               test_dir=prepared / "target" / "test")

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics and saved["n"] == 20 and saved["uses_target_labels"] is False
    assert set(saved["per_class_accuracy"]) == set(CLASSES) and 0.0 <= saved["proxy_a_distance"] <= 2.0
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and {r["actual"] for r in rows} == set(CLASSES)
    assert sum(r["actual"] == r["predicted"] for r in rows) / 20 == pytest.approx(saved["accuracy"])
    assert (out / "confusion.png").read_bytes().startswith(PNG)
    logged = tracker.metrics[0][0]
    assert logged["accuracy"] == saved["accuracy"] and "class_acc.a" in logged


def test_evaluate_rejects_a_model_with_other_classes(tmp_path):
    prepared = tiny_prepared(tmp_path)
    model_dir = export_untrained(tmp_path / "model", classes=("x", "y"))
    with pytest.raises(CheckpointError, match="classes"):
        evaluate_variant(tiny_params(tmp_path, prepared), "source_only", model_dir, tmp_path / "out",
                         RecordingTracker(), test_dir=prepared / "target" / "test")


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------


def write_eval(folder: Path, accuracies: dict[str, float]) -> Path:
    for variant, acc in accuracies.items():
        write_json(folder / variant / "metrics.json", {"accuracy": acc, "macro_f1": acc - 0.05,
                                                       "uses_target_labels": variant == "target_oracle"})
    return folder


def test_report_gap_closed_and_files(tmp_path):
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "dann": 0.7, "translated": 0.5,
                                              "target_oracle": 0.9})
    summary = write_report(eval_dir, tmp_path, order=["source_only", "translated", "dann", "target_oracle"])

    saved = json.loads((tmp_path / "summary.json").read_text())
    headline = json.loads((tmp_path / "headline.json").read_text())      # what `dvc metrics show` prints
    assert headline == {"pick": saved["pick"]["variant"] or "none",
                        **{v: {"accuracy": saved[v]["accuracy"], "gap_closed": saved[v]["gap_closed"]}
                           for v in saved if v != "pick"}}
    assert [r.variant for r in summary.rows] == ["source_only", "translated", "dann", "target_oracle"]
    assert set(saved) == {r.variant for r in summary.rows} | {"pick"}
    assert saved["dann"]["gap_closed"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))
    assert saved["translated"]["gap_closed"] == pytest.approx(-1 / 3)
    assert saved["source_only"]["gap_closed"] == 0.0 and saved["target_oracle"]["gap_closed"] == 1.0
    assert saved["dann"]["macro_f1"] == pytest.approx(0.65)
    md = (tmp_path / "summary.md").read_text()
    assert "| dann | 0.7000 | 0.6500 | 33.3% | no |" in md
    assert "| target_oracle | 0.9000 | 0.8500 | 100.0% | yes |" in md
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG)
    # DVC's bar chart of the variants and the overlay of their training curves
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == "variant,score,accuracy,macro_f1"
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)


def test_report_leaves_out_a_variant_removed_from_params(tmp_path, caplog):
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "translated_dann": 0.7, "target_oracle": 0.9})
    summary = write_report(eval_dir, tmp_path, order=["source_only", "target_oracle"])
    assert [r.variant for r in summary.rows] == ["source_only", "target_oracle"]
    assert "translated_dann" not in json.loads((tmp_path / "summary.json").read_text())
    assert "'translated_dann' is no longer a variant in params.yaml" in caplog.text


def test_report_without_oracle_has_no_gap_and_says_why(tmp_path):
    summary = summarize({"source_only": {"accuracy": 0.6, "macro_f1": 0.5},
                         "dann": {"accuracy": 0.7, "macro_f1": 0.6}})
    assert all(r.gap_closed is None for r in summary.rows)
    assert any("target_oracle" in note for note in summary.notes)
    write_report(write_eval(tmp_path / "eval", {"dann": 0.7}), tmp_path, train_dir=tmp_path / "no-train")
    assert json.loads((tmp_path / "summary.json").read_text()) == \
        {"dann": {"accuracy": 0.7, "macro_f1": pytest.approx(0.65), "gap_closed": None, "source_val_acc": None,
                  "target_entropy": None,
                  "target_im": None, "target_snd": None, "target_class_share_max": None,
                      "target_bnm": None, "target_class_ami": None},
         "pick": {"variant": None, "rule": PICK_RULE, "estimate": None, "label_free": None}}
    assert "Note: gap closed needs the source_only and target_oracle" in (tmp_path / "summary.md").read_text()


# ------------------------------------------------------------------------------------------------
# choosing without real labels
# ------------------------------------------------------------------------------------------------


def label_free(im: float, share: float, val: float = 0.9) -> dict:
    return {"source_val_acc": val, "target_entropy": 0.3, "target_im": im, "target_snd": 4.0,
            "target_class_share_max": share}


def write_train(folder: Path, blocks: dict[str, dict | None]) -> Path:
    """``<folder>/<variant>/metrics.json`` as the train stage writes it; ``None``: an older run without scores."""
    for variant, block in blocks.items():
        metrics = {"variant": variant, "selected_epoch": 3}
        if block is not None:
            metrics["label_free"] = block
        write_json(folder / variant / "metrics.json", metrics)
    return folder


def row(variant: str, im: float | None, share: float | None, val: float | None = 0.9, oracle: bool = False,
        acc: float = 0.5) -> Row:
    return Row(variant, acc, acc, oracle, source_val_acc=val, target_im=im, target_class_share_max=share)


def test_pick_is_the_highest_im_among_variants_without_target_labels():
    rows = [row("source_only", 0.8, 0.2), row("translated", 1.1, 0.3), row("dann", 0.9, 0.25),
            row("target_oracle", 2.0, 0.1, oracle=True)]
    name, reason = pick_variant(rows, n_classes=10)
    assert name == "translated" and "max target IM: 1.1000" in reason and "3 healthy candidate" in reason


def test_pick_excludes_collapsed_variants():
    """dann puts 70% of the real images in one class: excluded although its IM is the highest."""
    rows = [row("source_only", 0.8, 0.2), row("dann", 1.2, 0.7), row("translated", 0.5, COLLAPSE_SHARE)]
    name, reason = pick_variant(rows, n_classes=10)
    assert name == "source_only" and "dann: collapsed (70% of real images in one class)" in reason
    assert pick_variant(rows) == (name, reason)                          # unknown class count: checked
    # with 2 classes, half the images in one class is the balanced share: no collapse check
    assert pick_variant(rows, n_classes=2)[0] == "dann"
    everything_collapsed = [row("source_only", 0.8, 0.9), row("dann", 1.2, 0.7)]
    name, reason = pick_variant(everything_collapsed, n_classes=3)
    assert name is None and "every candidate is unhealthy" in reason


def test_pick_ties_go_to_the_higher_source_val_accuracy():
    rows = [row("source_only", 1.0, 0.2, val=0.8), row("dann", 1.0, 0.2, val=0.95), row("translated", 1.0, 0.2,
                                                                                          val=None)]
    name, reason = pick_variant(rows, n_classes=10)
    assert name == "dann" and "tie" in reason


def test_no_pick_without_scores_and_older_runs_are_never_picked():
    name, reason = pick_variant([row("source_only", None, None, val=None), row("dann", None, None, val=None)])
    assert name is None and "no variant has label-free scores" in reason
    name, reason = pick_variant([row("source_only", None, None), row("target_oracle", 2.0, 0.1, oracle=True)])
    assert name is None and "no variant known not to use target labels" in reason
    assert pick_variant([row("source_only", None, None), row("dann", 0.1, 0.3)], 10)[0] == "dann"


def test_report_marks_the_pick_and_shows_n_a_for_older_runs(tmp_path):
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "translated": 0.75, "dann": 0.7,
                                              "target_oracle": 0.9})
    train_dir = write_train(tmp_path / "train", {
        "source_only": label_free(0.8, 0.3, val=0.97),
        "translated": None,                                      # made before the scores existed
        "dann": label_free(1.1, 0.35, val=0.93),
        "target_oracle": label_free(2.0, 0.12, val=0.5),         # uses target labels: never the pick
    })
    summary = write_report(eval_dir, tmp_path, order=["source_only", "translated", "dann", "target_oracle"],
                           train_dir=train_dir, n_classes=10)
    assert summary.pick == "dann"

    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["pick"] == {"variant": "dann", "rule": PICK_RULE, "estimate": None, "label_free": "dann"}
    assert set(saved) == {"source_only", "translated", "dann", "target_oracle", "pick"}
    assert set(saved["dann"]) == {"accuracy", "macro_f1", "gap_closed", "source_val_acc", "target_entropy", "target_im",
                                  "target_snd", "target_class_share_max", "target_bnm", "target_class_ami"}
    assert saved["dann"]["target_im"] == 1.1 and saved["dann"]["target_class_share_max"] == 0.35
    assert saved["translated"]["target_im"] is None and saved["translated"]["accuracy"] == 0.75

    md = (tmp_path / "summary.md").read_text()
    assert "| dann | 0.7000 | 0.6500 | 33.3% | no |" in md
    assert "| dann | 0.9300 | 0.3000 | 1.1000 | 4.0000 | n/a | n/a | 35.0% | ok |" in md
    assert "| translated | n/a | n/a | n/a | n/a | n/a | n/a | n/a | no label-free scores |" in md
    assert "| target_oracle | 0.5000 | 0.3000 | 2.0000 | 4.0000 | n/a | n/a | 12.0% | bound (real labels) |" in md
    assert "Pick without real labels: dann: max target IM: 1.1000" in md
    assert ("the pick scores 0.7000 on the real test set; the best variant without target labels there is "
            "translated with 0.7500.") in md


def test_report_collapse_exclusion_changes_the_pick(tmp_path):
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "dann": 0.7})
    train_dir = write_train(tmp_path / "train", {"source_only": label_free(0.8, 0.3),
                                                 "dann": label_free(1.5, 0.8)})
    summary = write_report(eval_dir, tmp_path, train_dir=train_dir, n_classes=10)
    md = (tmp_path / "summary.md").read_text()
    assert summary.pick == "source_only" and "Pick without real labels: source_only: max target IM: 0.8000" in md
    assert "| dann | 0.9000 | 0.3000 | 1.5000 | 4.0000 | n/a | n/a | 80.0% | **not picked: collapsed (80% of real images" in md
    assert "it is also the best" not in md
    assert json.loads((tmp_path / "summary.json").read_text())["pick"]["variant"] == "source_only"


def test_report_without_any_scores_says_so(tmp_path):
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "dann": 0.7})
    train_dir = write_train(tmp_path / "train", {"source_only": None})      # dann: no train metrics at all
    summary = write_report(eval_dir, tmp_path, train_dir=train_dir)
    md = (tmp_path / "summary.md").read_text()
    assert summary.pick is None and "Pick without real labels: none (no variant has label-free scores" in md
    assert "| dann | n/a | n/a | n/a | n/a | n/a | n/a | n/a | no label-free scores |" in md
    assert "For information only" not in md
    assert json.loads((tmp_path / "summary.json").read_text())["pick"]["variant"] is None


def test_report_stage_logs_every_variant_on_the_parent_run(tmp_path, monkeypatch):
    import mlflow

    from stages import report

    prepared = tiny_prepared(tmp_path, n=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_task_raw(tmp_path, prepared)))
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "dann": 0.7, "target_oracle": 0.9})
    train_dir = write_train(tmp_path / "train", {"source_only": label_free(0.9, 0.5), "dann": label_free(0.4, 0.5),
                                                 "target_oracle": label_free(0.6, 0.5)})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "report-test")
    monkeypatch.setenv("SIM2REAL_TRACKING", "on")
    monkeypatch.setenv("DVC_EXP_NAME", "report-test")
    monkeypatch.chdir(tmp_path)
    report.main(["--params", "params.yaml", "--eval", str(eval_dir), "--train", str(train_dir),
                 "--out", str(tmp_path / "out")])

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["report-test"])
    parent = runs[runs["tags.sim2real.role"] == "pipeline"].iloc[0]
    assert parent["metrics.dann.accuracy"] == pytest.approx(0.7)
    assert parent["metrics.dann.gap_closed"] == pytest.approx(1 / 3)
    assert parent["metrics.target_oracle.accuracy"] == pytest.approx(0.9)
    assert parent["metrics.dann.target_im"] == pytest.approx(0.4)
    # 2 classes (tinydata): a 50% class share is balanced, not collapse; source_only has the highest IM
    assert parent["tags.sim2real.pick"] == "source_only"
    report_run = runs[runs["tags.stage"] == "report"].iloc[0]
    assert report_run["tags.sim2real.pick"] == "source_only"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "report")}
    assert artifacts == {f"report/{name}" for name in ("summary.json", "headline.json", "summary.md", "summary.png",
                                                       "scores.csv", "curves.png")}
    assert parent["status"] == "FINISHED"       # the report, the last stage, ends the pipeline's run


# ------------------------------------------------------------------------------------------------
# scripts/seeds.py
# ------------------------------------------------------------------------------------------------


def load_seeds_script():
    spec = importlib.util.spec_from_file_location("seeds", REPO / "scripts" / "seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_aggregation_mean_and_sample_std():
    seeds = load_seeds_script()
    summaries = {
        0: {"source_only": {"accuracy": 0.5, "macro_f1": 0.4, "gap_closed": 0.0},
            "dann": {"accuracy": 0.6, "macro_f1": 0.5, "gap_closed": None}},
        1: {"source_only": {"accuracy": 0.7, "macro_f1": 0.6, "gap_closed": 0.0},
            "dann": {"accuracy": 0.8, "macro_f1": 0.7, "gap_closed": 0.5},
            "pick": {"variant": "dann", "rule": "..."}},               # the label-free pick: not a variant
    }
    table = seeds.aggregate(summaries)
    assert set(table) == {"source_only", "dann"}
    assert table["source_only"]["accuracy"]["mean"] == pytest.approx(0.6)
    assert table["source_only"]["accuracy"]["std"] == pytest.approx(0.1414213, rel=1e-5)   # ddof = 1
    assert table["dann"]["gap_closed"] == {"mean": 0.5, "std": 0.0, "n": 1}
    text = seeds.format_table(table)
    assert "| source_only | 0.6000 ± 0.1414 | 0.5000 ± 0.1414 | 0.0000 ± 0.0000 | 2 |" in text


def test_seeds_collect_only_reads_saved_summaries(tmp_path, capsys):
    seeds = load_seeds_script()
    for seed, acc in ((0, 0.5), (1, 0.7)):
        write_json(tmp_path / f"seed-{seed}.json", {"source_only": {"accuracy": acc, "macro_f1": acc,
                                                                    "gap_closed": 0.0}})
    seeds.main(["--collect-only", "--out", str(tmp_path)])
    assert "| source_only | 0.6000 ± 0.1414 |" in capsys.readouterr().out


def test_pick_fails_closed_on_a_variant_whose_label_use_is_unknown(tmp_path):
    """A variant without a recorded ``uses_target_labels`` (a run made elsewhere, labels of unknown
    origin) is never the pick, whatever its scores, and the tables say 'unknown'."""
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "mystery": 0.95, "target_oracle": 0.9})
    metrics = json.loads((eval_dir / "mystery" / "metrics.json").read_text())
    del metrics["uses_target_labels"]
    write_json(eval_dir / "mystery" / "metrics.json", metrics)
    for variant, im in {"source_only": 0.8, "mystery": 2.0, "target_oracle": 2.1}.items():
        write_json(tmp_path / "train" / variant / "metrics.json",
                   {"label_free": {"source_val_acc": 0.9, "target_im": im, "target_class_share_max": 0.2}})
    summary = write_report(eval_dir, tmp_path / "out", order=["source_only", "mystery", "target_oracle"],
                           train_dir=tmp_path / "train", n_classes=10)
    assert summary.pick == "source_only"
    assert "unknown" in summary.pick_reason and "mystery" in summary.pick_reason
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| mystery | 0.9500 | 0.9000 | " in md and "| unknown |" in md
    rows = [row("a", 1.5, 0.2), row("b", 0.5, 0.2)]
    rows[0].uses_target_labels = None
    assert pick_variant(rows, n_classes=10)[0] == "b"


def test_gan_refuses_a_task_model_of_other_classes_naming_the_key_and_what_to_run(tmp_path):
    from pipeline.task.provision import TASK_MODEL_HINT, load_frozen_task_model

    prepared = tiny_prepared(tmp_path)
    params = tiny_params(tmp_path, prepared)
    path = export_untrained(tmp_path / "model", classes=("a", "b", "c")) / "model.pt"
    with pytest.raises(CheckpointError) as error:
        load_frozen_task_model(path, params, torch.device("cpu"))
    message = str(error.value)
    assert message.startswith(f"{path}: model was trained with classes=") and "data.classes=" in message
    assert message.endswith(TASK_MODEL_HINT) and "train_task@source_only" in message
    model, sha = load_frozen_task_model(export_untrained(tmp_path / "ok") / "model.pt", params, torch.device("cpu"))
    assert len(sha) == 64 and not any(p.requires_grad for p in model.parameters())
