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
from pipeline.report import summarize, write_report
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
                               test_dir=prepared / "target" / "test", pad_samples=30)

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
    assert [r.variant for r in summary.rows] == ["source_only", "translated", "dann", "target_oracle"]
    assert set(saved) == {r.variant for r in summary.rows}
    assert saved["dann"]["gap_closed"] == pytest.approx((0.7 - 0.6) / (0.9 - 0.6))
    assert saved["translated"]["gap_closed"] == pytest.approx(-1 / 3)
    assert saved["source_only"]["gap_closed"] == 0.0 and saved["target_oracle"]["gap_closed"] == 1.0
    assert saved["dann"]["macro_f1"] == pytest.approx(0.65)
    md = (tmp_path / "summary.md").read_text()
    assert "| dann | 0.7000 | 0.6500 | 33.3% | no |" in md
    assert "| target_oracle | 0.9000 | 0.8500 | 100.0% | yes |" in md
    assert (tmp_path / "summary.png").read_bytes().startswith(PNG)


def test_report_without_oracle_has_no_gap_and_says_why(tmp_path):
    summary = summarize({"source_only": {"accuracy": 0.6, "macro_f1": 0.5},
                         "dann": {"accuracy": 0.7, "macro_f1": 0.6}})
    assert all(r.gap_closed is None for r in summary.rows)
    assert any("target_oracle" in note for note in summary.notes)
    write_report(write_eval(tmp_path / "eval", {"dann": 0.7}), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == \
        {"dann": {"accuracy": 0.7, "macro_f1": pytest.approx(0.65), "gap_closed": None}}
    assert "Note: gap closed needs the source_only and target_oracle" in (tmp_path / "summary.md").read_text()


def test_report_stage_logs_every_variant_on_the_parent_run(tmp_path, monkeypatch):
    import mlflow

    from stages import report

    prepared = tiny_prepared(tmp_path, n=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_task_raw(tmp_path, prepared)))
    eval_dir = write_eval(tmp_path / "eval", {"source_only": 0.6, "dann": 0.7, "target_oracle": 0.9})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "report-test")
    monkeypatch.setenv("SIM2REAL_TRACKING", "on")
    monkeypatch.setenv("DVC_EXP_NAME", "report-test")
    monkeypatch.chdir(tmp_path)
    report.main(["--params", "params.yaml", "--eval", str(eval_dir), "--out", str(tmp_path / "out")])

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["report-test"])
    parent = runs[runs["tags.sim2real.role"] == "pipeline"].iloc[0]
    assert parent["metrics.dann.accuracy"] == pytest.approx(0.7)
    assert parent["metrics.dann.gap_closed"] == pytest.approx(1 / 3)
    assert parent["metrics.target_oracle.accuracy"] == pytest.approx(0.9)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"], "report")}
    assert artifacts == {"report/summary.json", "report/summary.md", "report/summary.png"}


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
            "dann": {"accuracy": 0.8, "macro_f1": 0.7, "gap_closed": 0.5}},
    }
    table = seeds.aggregate(summaries)
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
