"""The report's figures and the table behind DVC's bar plot: one bar pair per variant, one
training curve per variant, whatever the task kind (the kind names the scores: ``bars``, ``column``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.io import write_text


def finite_or_none(value: Any) -> Optional[float]:
    """A finite number as float, anything else as ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


BARS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))   # (Row attribute, label) of the summary figure


def plot_summary(summary: Any, path: str | Path, bars: Sequence[tuple[str, str]] = BARS) -> Path:
    """Grouped bars of two scores per variant (accuracy and macro-F1; hatched: uses target labels)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [r.variant for r in summary.rows]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(5.0, 1.4 * len(names) + 2), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for offset, (key, label) in zip((-0.2, 0.2), bars):
        values = [getattr(r, key) or 0.0 for r in summary.rows]
        bars = ax.bar(x + offset, values, width=0.4, label=label)
        for bar, row in zip(bars, summary.rows):
            if row.uses_target_labels is not False:
                bar.set_hatch("//")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, labels=names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title("real test set per variant (hatched: trained on target labels, or unknown)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_curves(order: Sequence[str], train_dir: str | Path, path: str | Path,
                column: str = "source_val_acc") -> Path:
    """One line per variant: ``column`` of ``<train_dir>/<variant>/history.csv`` against the step.

    The overlay DVC's CSV plots cannot draw when each variant has its own file and budget. Written
    even when no history has the column (the figure then says so), since it is a declared output.
    """
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for variant in order:
        history = Path(train_dir) / variant / "history.csv"
        if not history.is_file():
            continue
        with history.open(newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if finite_or_none(_number(r.get(column))) is not None and r.get("step")]
        if rows:
            ax.plot([int(float(r["step"])) for r in rows], [float(r[column]) for r in rows], marker="o", label=variant)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, f"no {column} in any history.csv", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(column)
    ax.set_title(f"{column} during training, per variant")
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _number(text: Any) -> Any:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def write_score_table(summary: Any, path: str | Path, bars: Sequence[tuple[str, str]] = BARS) -> Path:
    """``variant,score,<first>,<second>`` rows (``score`` is the first: accuracy, or mAP@.5 for detection):
    the data of DVC's bar plot comparing the variants, whatever the task kind."""
    keys = [key for key, _ in bars]
    lines = [",".join(["variant", "score", *keys])]
    cell = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731  (empty, not "n/a": DVC reads numbers)
    lines += [",".join([r.variant, cell(getattr(r, keys[0])), *(cell(getattr(r, k)) for k in keys)])
              for r in summary.rows]
    write_text(path, "\n".join(lines) + "\n")
    return Path(path)
