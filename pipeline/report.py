"""The comparison of all variants: ``reports/summary.{json,md,png}`` and the MLflow parent run.

Every ``reports/eval/<variant>/metrics.json`` contributes one row. The share of the sim-to-real gap
a variant closes is

    gap_closed = (acc - acc_source_only) / (acc_target_oracle - acc_source_only)

0 for source-only, 1 for the oracle trained on labelled real images; it needs both reference rows
(otherwise it is ``None`` and the markdown says why).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.io import write_json, write_text
from pipeline.metrics.classification import gap_closed

log = logging.getLogger(__name__)

BASELINE, ORACLE = "source_only", "target_oracle"
EVAL_DIR = Path("reports/eval")
OUT_DIR = Path("reports")


@dataclass
class Row:
    variant: str
    accuracy: float
    macro_f1: float
    uses_target_labels: bool
    gap_closed: Optional[float] = None


@dataclass
class Summary:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, dict[str, Any]]:
        """``{variant: {accuracy, macro_f1, gap_closed}}``: the shape ``dvc metrics show`` reads."""
        return {r.variant: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "gap_closed": r.gap_closed}
                for r in self.rows}


def collect(eval_dir: str | Path = EVAL_DIR) -> dict[str, dict[str, Any]]:
    """``{variant: metrics}`` from every ``<eval_dir>/<variant>/metrics.json``."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(eval_dir).glob("*/metrics.json"))}
    if not found:
        raise FileNotFoundError(f"{eval_dir}: no */metrics.json found; run the evaluate stages first")
    return found


def summarize(metrics: dict[str, dict[str, Any]], order: Sequence[str] = ()) -> Summary:
    """Rows in ``order`` (then any other variant alphabetically) with their share of the gap closed."""
    names = [v for v in order if v in metrics] + sorted(v for v in metrics if v not in order)
    rows = [Row(v, metrics[v]["accuracy"], metrics[v]["macro_f1"], bool(metrics[v].get("uses_target_labels")))
            for v in names]
    summary = Summary(rows)
    missing = [v for v in (BASELINE, ORACLE) if v not in metrics]
    if missing:
        summary.notes.append(f"gap closed needs the {' and '.join(missing)} variant(s), which were not evaluated.")
        return summary
    low, high = metrics[BASELINE]["accuracy"], metrics[ORACLE]["accuracy"]
    for row in rows:
        row.gap_closed = gap_closed(row.accuracy, low, high)
    if high == low:
        summary.notes.append(f"{ORACLE} and {BASELINE} have the same accuracy: there is no gap to close.")
    elif high < low:
        summary.notes.append(f"{ORACLE} is below {BASELINE}: the gap is negative and gap closed is hard to read.")
    return summary


def _fmt(value: Optional[float], pattern: str = "{:.4f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def to_markdown(summary: Summary) -> str:
    lines = [
        "# Sim-to-real: accuracy on the held-out real test set",
        "",
        f"Gap closed = (acc - {BASELINE}) / ({ORACLE} - {BASELINE}). Variants that use target labels are "
        "upper bounds, not adaptation methods.",
        "",
        "| variant | accuracy | macro-F1 | gap closed | uses target labels |",
        "|---|---:|---:|---:|:---:|",
    ]
    lines += [f"| {r.variant} | {_fmt(r.accuracy)} | {_fmt(r.macro_f1)} | {_fmt(r.gap_closed, '{:.1%}')} | "
              f"{'yes' if r.uses_target_labels else 'no'} |" for r in summary.rows]
    if summary.notes:
        lines += [""] + [f"Note: {n}" for n in summary.notes]
    return "\n".join(lines) + "\n"


def plot_summary(summary: Summary, path: str | Path) -> Path:
    """Grouped bars of accuracy and macro-F1 per variant (hatched: uses target labels)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [r.variant for r in summary.rows]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(5.0, 1.4 * len(names) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for offset, key, label in ((-0.2, "accuracy", "accuracy"), (0.2, "macro_f1", "macro-F1")):
        values = [getattr(r, key) or 0.0 for r in summary.rows]
        bars = ax.bar(x + offset, values, width=0.4, label=label)
        for bar, row in zip(bars, summary.rows):
            if row.uses_target_labels:
                bar.set_hatch("//")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, labels=names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title("real test set per variant (hatched: trained on target labels)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_report(eval_dir: str | Path = EVAL_DIR, out_dir: str | Path = OUT_DIR, tracker=None,
                 order: Sequence[str] = ()) -> Summary:
    """Write ``summary.json``, ``summary.md`` and ``summary.png`` and log them to the parent run."""
    summary = summarize(collect(eval_dir), order)
    out = Path(out_dir)
    write_json(out / "summary.json", summary.as_metrics())
    write_text(out / "summary.md", to_markdown(summary))
    plot_summary(summary, out / "summary.png")
    if tracker is not None:
        log_to_runs(tracker, summary, out)
    for note in summary.notes:
        log.warning(note)
    return summary


def log_to_runs(tracker, summary: Summary, out: Path) -> None:
    """``<variant>.<metric>`` metrics and the summary files, on the report run and on the parent run
    (so ``mlflow.search_runs`` lists every variant side by side)."""
    flat = {f"{variant}.{key}": value for variant, values in summary.as_metrics().items()
            for key, value in values.items()}
    for run_id in dict.fromkeys([tracker.run_id, tracker.parent_run_id]):
        if run_id is None:
            continue
        tracker.log_metrics(flat, run_id=run_id)
        for name in ("summary.json", "summary.md", "summary.png"):
            tracker.log_artifact(out / name, artifact_path="report", run_id=run_id)
