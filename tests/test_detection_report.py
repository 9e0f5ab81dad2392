"""The detection report: mAP per variant, gap closed on mAP@.5, and the label-free pick."""

from __future__ import annotations

import json

import pytest

from pipeline.detection.report import DetectionRow, pick_detector, summarize_detection, write_detection_report
from pipeline.io import write_json


def row(variant, confidence, source_map50, oracle=False):
    return DetectionRow(variant, 0.0, 0.0, oracle, source_val_map50=source_map50, target_confidence=confidence)


def test_pick_skips_variants_that_lost_the_source_and_the_oracle():
    rows = [row("source_only", 0.60, 0.99), row("dann", 0.90, 0.70), row("randomized_st", 0.72, 0.92),
            row("target_oracle", 0.95, 0.99, oracle=True)]
    name, reason = pick_detector(rows)
    assert name == "randomized_st"
    assert "dann" in reason and "0.7200" in reason
    assert pick_detector([row("target_oracle", 0.9, 0.9, oracle=True)])[0] is None
    assert pick_detector([row("source_only", None, None)])[0] is None


def test_summary_gap_closed_on_map50_and_files(tmp_path):
    metrics = {"source_only": {"map50": 0.2, "map": 0.1, "uses_target_labels": False},
               "translated": {"map50": 0.3, "map": 0.15, "uses_target_labels": False},
               "target_oracle": {"map50": 0.6, "map": 0.4, "uses_target_labels": True}}
    summary = summarize_detection(metrics, ["source_only", "translated", "target_oracle"])
    assert [r.gap_closed for r in summary.rows] == pytest.approx([0.0, 0.25, 1.0])

    for variant, values in metrics.items():
        write_json(tmp_path / "eval" / variant / "metrics.json", values)
        write_json(tmp_path / "train" / variant / "metrics.json",
                   {"label_free": {"source_val_map50": 0.9, "target_confidence": 0.5 + values["map50"],
                                   "target_detections": 1.0}})
    written = write_detection_report(tmp_path / "eval", tmp_path / "out", order=list(metrics),
                                     train_dir=tmp_path / "train")
    assert written.pick == "translated"                                   # the oracle is never picked
    saved = json.loads((tmp_path / "out/summary.json").read_text())
    assert saved["pick"]["variant"] == "translated" and saved["translated"]["map50"] == 0.3
    assert (tmp_path / "out/scores.csv").read_text().splitlines()[:2] == [
        "variant,score,map50,map", "source_only,0.200000,0.200000,0.100000"]
    assert "| translated | 0.3000 | 0.1500 | 25.0% | no |" in (tmp_path / "out/summary.md").read_text()
