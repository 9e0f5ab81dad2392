"""Classification metrics, the share of the domain gap closed, and confusion-matrix plots."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.io import atomic_file


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """``(classes, classes)`` counts, row: the true class, column: the predicted one (labels outside
    ``[0, classes)`` are not counted)."""
    inside = (y_true >= 0) & (y_true < classes) & (y_pred >= 0) & (y_pred < classes)
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (y_true[inside], y_pred[inside]), 1)
    return cm


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], class_names: Sequence[str]
) -> dict:
    """Accuracy, macro-F1, per-class accuracy (recall) and confusion matrix (rows = true class).

    Labels are indices into ``class_names``. A class with no true samples has per-class accuracy
    ``None``. All values are plain Python types (JSON-ready).
    """
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    from sklearn.metrics import f1_score    # imported here: about a second, and only evaluate needs it

    labels = list(range(len(class_names)))
    cm = confusion_counts(y_true, y_pred, len(class_names))
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] > 0 else None)
        for i, name in enumerate(class_names)
    }
    n = int(y_true.size)
    return {
        "accuracy": float((y_true == y_pred).mean()) if n else None,
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
        if n
        else None,
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "n": n,
    }


def gap_closed(acc: float, source_only_acc: float, oracle_acc: float) -> Optional[float]:
    """Fraction of the sim-to-real gap closed: ``(acc - source_only) / (oracle - source_only)``.

    1 means as good as training on labelled real data, 0 no better than source-only, negative
    worse than source-only. ``None`` when ``oracle_acc == source_only_acc`` (no gap to close,
    the ratio is undefined).
    """
    gap = oracle_acc - source_only_acc
    if gap == 0:
        return None
    return float((acc - source_only_acc) / gap)


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write the confusion matrix (rows = true, columns = predicted), counts annotated, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = len(class_names)
    size = max(4.0, 0.5 * k + 2.0)
    fig = Figure(figsize=(size, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    threshold = cm.max() / 2.0 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                color="white" if cm[i, j] > threshold else "black",
            )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_predictions(path: str | Path, actual: Sequence[int], predicted: Sequence[int],
                      classes: Sequence[str]) -> None:
    """``actual,predicted`` as class names, one row per test image (DVC's confusion template); written
    atomically (:func:`~pipeline.io.atomic_file`)."""
    with atomic_file(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in zip(actual, predicted))
