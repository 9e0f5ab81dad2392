"""The comparison of all variants for ``task.kind: detection``: the same files as classification's
report (:mod:`pipeline.report`), by COCO mAP@.5 and mAP@[.5:.95].

    gap_closed = (mAP50 - mAP50_source_only) / (mAP50_target_oracle - mAP50_source_only)

Choosing without real labels (:func:`pick_detector`): among variants that do not use target labels
and have label-free scores, those whose source-val mAP@.5 is below :data:`SOURCE_KEEP` of the best
source-val mAP@.5 are left out (they lost what they learned from the labelled renders); of the rest
the one with the highest mean top detection score on the unlabelled real training images is picked
(``target_confidence``: a detector that finds the objects of the real images is confident on
them). It is a heuristic with less support in the literature than IM for classification; the
report shows how the pick fares on the test set, for information only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.report import (BASELINE, ORACLE, PICK_KEY, close_gap, collect, collect_label_free, fmt, label_use,
                             labels_cell, ordered, write_summary_files)
from pipeline.selection import unknown_label_use

LABEL_FREE_KEYS = ("source_val_map50", "target_confidence", "target_detections")
SOURCE_KEEP = 0.8
PICK_RULE = (f"max target_confidence among variants known not to use target labels whose source_val_map50 is at least "
             f"{SOURCE_KEEP:.0%} of the best")
BARS = (("map50", "mAP@.5"), ("map", "mAP@[.5:.95]"))


@dataclass
class DetectionRow:
    variant: str
    map50: float
    map: float
    uses_target_labels: Optional[bool]     # None: unknown (never picked)
    gap_closed: Optional[float] = None
    source_val_map50: Optional[float] = None
    target_confidence: Optional[float] = None
    target_detections: Optional[float] = None

    @property
    def has_label_free(self) -> bool:
        return self.source_val_map50 is not None and self.target_confidence is not None


@dataclass
class DetectionSummary:
    rows: list[DetectionRow]
    notes: list[str] = field(default_factory=list)
    pick: Optional[str] = None
    pick_reason: str = ""

    def as_metrics(self) -> dict[str, dict[str, Any]]:
        return {r.variant: {"map50": r.map50, "map": r.map, "gap_closed": r.gap_closed,
                            **{k: getattr(r, k) for k in LABEL_FREE_KEYS}} for r in self.rows}

    def as_json(self) -> dict[str, Any]:
        return {**self.as_metrics(), PICK_KEY: {"variant": self.pick, "rule": PICK_RULE}}


def pick_detector(rows: Sequence[DetectionRow]) -> tuple[Optional[str], str]:
    """The variant to choose without real labels and why (the rule is in the module docstring)."""
    candidates = [r for r in rows if r.uses_target_labels is False and r.has_label_free]
    unknown = unknown_label_use(rows)
    if not candidates:
        return None, "no variant known not to use target labels has label-free scores" + unknown
    best_source = max(r.source_val_map50 for r in candidates)
    kept = [r for r in candidates if r.source_val_map50 >= SOURCE_KEEP * best_source]
    dropped = [r.variant for r in candidates if r not in kept]
    best = max(kept, key=lambda r: (r.target_confidence, r.source_val_map50))
    excluded = f"; left out for a source-val mAP@.5 below {SOURCE_KEEP:.0%} of the best: {', '.join(dropped)}" \
        if dropped else ""
    return best.variant, (f"highest mean top score on the real training images ({best.target_confidence:.4f}) "
                          f"among {len(kept)} candidate(s) without target labels{excluded}{unknown}")


def summarize_detection(metrics: dict[str, dict[str, Any]], order: Sequence[str] = (),
                        label_free: Optional[dict[str, dict[str, Optional[float]]]] = None) -> DetectionSummary:
    label_free = label_free or {}
    rows = [DetectionRow(v, metrics[v]["map50"], metrics[v]["map"], label_use(metrics[v].get("uses_target_labels")),
                         **{k: label_free.get(v, {}).get(k) for k in LABEL_FREE_KEYS}) for v in ordered(metrics, order)]
    summary = DetectionSummary(rows)
    summary.pick, summary.pick_reason = pick_detector(rows)
    summary.notes += close_gap(rows, metrics, "map50", "mAP@.5")
    return summary


def to_markdown(summary: DetectionSummary) -> str:
    lines = [
        "# Sim-to-real detection: COCO mAP on the held-out real test set",
        "",
        f"Gap closed = (mAP@.5 - {BASELINE}) / ({ORACLE} - {BASELINE}). Variants that use target labels are "
        "upper bounds, not adaptation methods.",
        "",
        "| variant | mAP@.5 | mAP@[.5:.95] | gap closed | uses target labels |",
        "|---|---:|---:|---:|:---:|",
    ]
    lines += [f"| {r.variant} | {fmt(r.map50)} | {fmt(r.map)} | {fmt(r.gap_closed, '{:.1%}')} | "
              f"{labels_cell(r.uses_target_labels)} |" for r in summary.rows]
    lines += ["", "## Choosing without real labels", "",
              "| variant | source val mAP@.5 | target mean top score | target detections >= 0.5 per image |",
              "|---|---:|---:|---:|"]
    lines += [f"| {r.variant} | {fmt(r.source_val_map50)} | {fmt(r.target_confidence)} | "
              f"{fmt(r.target_detections, '{:.2f}')} |" for r in summary.rows]
    lines += ["", f"Rule: {PICK_RULE}.", "",
              f"Pick without real labels: {summary.pick or 'none'} ({summary.pick_reason})."]
    if summary.pick is not None:
        fair = [r for r in summary.rows if r.uses_target_labels is False]
        best = max(fair, key=lambda r: r.map50)
        picked = next(r for r in summary.rows if r.variant == summary.pick)
        lines += ["", f"For information only, never used to choose: the pick scores mAP@.5 {fmt(picked.map50)} on "
                      f"the real test set; the best variant without target labels there is {best.variant} with "
                      f"{fmt(best.map50)}."]
    lines += [f"Note: {n}" for n in summary.notes]
    return "\n".join(lines) + "\n"


def write_detection_report(eval_dir: str | Path, out_dir: str | Path, tracker=None, order: Sequence[str] = (),
                           train_dir: str | Path = "reports/train") -> DetectionSummary:
    """The files of :func:`pipeline.report.write_report`, for detection variants."""
    metrics = collect(eval_dir, order)
    summary = summarize_detection(metrics, order, collect_label_free(list(metrics), train_dir, LABEL_FREE_KEYS))
    write_summary_files(summary, to_markdown(summary), out_dir, train_dir, tracker, BARS, "source_val_map50")
    return summary


def report_stage(params: Any, eval_dir: str | Path, out_dir: str | Path, tracker, train_dir: str | Path) -> DetectionSummary:
    """The report stage for detection (the task kind's ``report_with``)."""
    return write_detection_report(eval_dir, out_dir, tracker, order=list(params.variants), train_dir=train_dir)
