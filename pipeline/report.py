"""The comparison of all variants: ``reports/summary.{json,md,png}`` and the MLflow parent run.

Every ``reports/eval/<variant>/metrics.json`` contributes one row. The share of the sim-to-real gap
a variant closes is

    gap_closed = (acc - acc_source_only) / (acc_target_oracle - acc_source_only)

0 for source-only, 1 for the oracle trained on labelled real images; it needs both reference rows
(otherwise it is ``None`` and the markdown says why).

Choosing without real labels: a user with no labelled real images cannot look at the test
accuracy. Every ``reports/train/<variant>/metrics.json`` holds, under ``"label_free"``, scores of the
trained model computed without any real label (:mod:`pipeline.metrics.label_free`): accuracy on the
labelled validation images of the variant's own training domain, and mean entropy, information
maximisation (IM), soft neighbourhood density (SND), BNM, ClassAMI and the largest predicted-class
share on the unlabelled real training images, plus the predicted classes there.
:func:`pick_variant` marks each variant's health and chooses from those alone
(:mod:`pipeline.selection`); the test accuracy of that pick is shown next to the best test accuracy
for information only and never feeds back into the choice.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from pipeline.io import write_json, write_text
from pipeline.metrics.classification import gap_closed
from pipeline.selection import (COLLAPSE_MIN_CLASSES, COLLAPSE_SHARE, FAILED_MARGIN, LABELLED_RULE, PICK_RULE_NAME,
                                RULES, choose, choose_by_labels, health, wilson)

log = logging.getLogger(__name__)

BASELINE, ORACLE = "source_only", "target_oracle"
EVAL_DIR = Path("reports/eval")
TRAIN_DIR = Path("reports/train")
OUT_DIR = Path("reports")
PICK_KEY = "pick"                 # the one top-level entry of summary.json that is not a variant
PICK_TAG = "sim2real.pick"        # MLflow tag on the report run and the parent run
SCORES_FILE = "scores.csv"        # DVC's bar plot of the variants
LABEL_FREE_KEYS = ("source_val_acc", "target_entropy", "target_im", "target_snd", "target_class_share_max",
                   "target_bnm", "target_class_ami")
SUMMARY_LABEL_FREE = LABEL_FREE_KEYS
PICK_RULE = (f"{RULES[PICK_RULE_NAME].text} among the healthy variants known not to use target labels, or only the few "
             f"labelled real images the user gave (not failed "
             f"to learn their labelled data: val acc >= chance + {FAILED_MARGIN:.0%} of the way to 1; not collapsed: "
             f"<= {COLLAPSE_SHARE:.0%} of real images in one class with >= {COLLAPSE_MIN_CLASSES} classes, no collapse "
             f"during training); tie: max source_val_acc")


def label_use(value: Any) -> Optional[bool]:
    """A variant's ``uses_target_labels`` as recorded: True or False, None when missing or not a bool
    (unknown: the variant is never picked, whatever it scores)."""
    return value if isinstance(value, bool) else None


def labels_cell(uses: Optional[bool], few: bool = False) -> str:
    """``no``, ``yes``, ``unknown``, or ``few`` for a variant trained on the few labelled real images."""
    if uses and few:
        return "few"
    return {True: "yes", False: "no"}.get(uses, "unknown")


@dataclass
class Row:
    variant: str
    accuracy: float
    macro_f1: float
    uses_target_labels: Optional[bool]     # None: unknown (never picked)
    gap_closed: Optional[float] = None
    # label-free scores from reports/train/<variant>/metrics.json; None when the run has none
    source_val_acc: Optional[float] = None
    target_entropy: Optional[float] = None
    target_im: Optional[float] = None
    target_snd: Optional[float] = None
    target_class_share_max: Optional[float] = None
    target_bnm: Optional[float] = None
    target_class_ami: Optional[float] = None
    # from the training record: the loop's warnings and the predicted classes on the real sample
    warnings: list[str] = field(default_factory=list)
    target_predicted: Optional[list[int]] = None
    few_target_labels: bool = False          # trained on the few labelled real images only (target/labelled)
    labelled_real_images: int = 0            # how many of them it trained on
    pick_accuracy: Optional[float] = None    # accuracy on the labelled real pick images (target/pick), if any
    pick_images: Optional[int] = None
    health: str = ""               # "" when it may be picked, else why not (pipeline.selection.health)

    @property
    def has_label_free(self) -> bool:
        return self.target_im is not None and self.target_class_share_max is not None


@dataclass
class Summary:
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    pick: Optional[str] = None        # the variant pick_variant chose, None when it could not
    pick_reason: str = ""
    pick_rule: str = PICK_RULE        # the rule that chose: labelled pick images when there are any, else label-free
    pick_estimate: Optional[dict] = None   # with labelled pick images: the pick's accuracy there and its interval
    label_free_pick: Optional[str] = None  # what the label-free rule alone chooses, and why
    label_free_reason: str = ""

    def as_metrics(self) -> dict[str, dict[str, Any]]:
        """``{variant: {accuracy, macro_f1, gap_closed, target_entropy, target_im, target_snd,
        target_class_share_max}}``: the shape ``dvc metrics show`` reads (label-free ones ``None``
        for a run without them)."""
        return {r.variant: {"accuracy": r.accuracy, "macro_f1": r.macro_f1, "gap_closed": r.gap_closed,
                            **{k: getattr(r, k) for k in SUMMARY_LABEL_FREE}}
                for r in self.rows}

    def as_json(self) -> dict[str, Any]:
        """``summary.json``: :meth:`as_metrics` plus ``"pick": {"variant", "rule", "estimate", "label_free"}``
        (``estimate``: with labelled pick images, the pick's accuracy there and its Wilson 95% interval;
        ``label_free``: the label-free rule's choice)."""
        return {**self.as_metrics(), PICK_KEY: {"variant": self.pick, "rule": self.pick_rule,
                                                "estimate": self.pick_estimate, "label_free": self.label_free_pick}}


def collect(eval_dir: str | Path = EVAL_DIR, variants: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``{variant: metrics}`` from every ``<eval_dir>/<variant>/metrics.json``; when ``variants`` (those
    of params.yaml) are given, only theirs: a folder left by a variant since removed is not reported."""
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(eval_dir).glob("*/metrics.json"))}
    if variants:
        for stale in sorted(set(found) - set(variants)):
            log.warning("%s: %r is no longer a variant in params.yaml; left out of the report",
                        Path(eval_dir) / stale, stale)
        found = {k: v for k, v in found.items() if k in variants}
    if not found:
        raise FileNotFoundError(f"{eval_dir}: no */metrics.json found; run the evaluate stages first")
    return found


def _score(value: Any) -> Optional[float]:
    """A finite number as float, anything else (missing, null, NaN, text) as ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def collect_label_free(variants: Sequence[str], train_dir: str | Path = TRAIN_DIR,
                       keys: Sequence[str] = LABEL_FREE_KEYS) -> dict[str, dict[str, Optional[float]]]:
    """``{variant: label-free scores}`` (the ``keys``) from ``<train_dir>/<variant>/metrics.json``'s
    ``"label_free"`` block; a variant whose file or block is missing (a run made before these scores
    existed) is left out."""
    found = {}
    for variant in variants:
        path = Path(train_dir) / variant / "metrics.json"
        if not path.is_file():
            continue
        block = json.loads(path.read_text()).get("label_free")
        if isinstance(block, dict):
            found[variant] = {k: _score(block.get(k)) for k in keys}
    return found


def collect_training_record(variants: Sequence[str], train_dir: str | Path = TRAIN_DIR) -> dict[str, dict[str, Any]]:
    """``{variant: {"warnings", "target_predicted", "few_target_labels", "labelled_real_images",
    "pick_accuracy", "pick_images"}}`` from each ``<train_dir>/<variant>/metrics.json`` (missing files:
    left out)."""
    found = {}
    for variant in variants:
        path = Path(train_dir) / variant / "metrics.json"
        if path.is_file():
            record = json.loads(path.read_text())
            predicted = record.get("target_predicted")
            pick = record.get("labelled_pick") if isinstance(record.get("labelled_pick"), dict) else {}
            found[variant] = {"warnings": [str(w) for w in record.get("warnings") or []],
                              "target_predicted": predicted if isinstance(predicted, list) else None,
                              "few_target_labels": record.get("few_target_labels") is True,
                              "labelled_real_images": int(record.get("labelled_real_images") or 0),
                              "pick_accuracy": _score(pick.get("accuracy")),
                              "pick_images": pick.get("images") if isinstance(pick.get("images"), int) else None}
    return found


def pick_variant(rows: Sequence[Row], n_classes: Optional[int] = None,
                 rule: str = PICK_RULE_NAME) -> tuple[Optional[str], str]:
    """The variant to choose without real labels, and why: ``(name, reason)``, ``(None, reason)`` when none
    qualifies; the candidates, the health checks and the ``rule`` (the shipped one unless a dev read
    compares others) are :mod:`pipeline.selection`'s. Marks each row's ``health`` on the way."""
    for row in rows:
        row.health = health(row, n_classes) if row.has_label_free else ""
    return choose(rows, n_classes, rule)


def summarize(metrics: dict[str, dict[str, Any]], order: Sequence[str] = (),
              label_free: Optional[dict[str, dict[str, Optional[float]]]] = None,
              n_classes: Optional[int] = None, records: Optional[dict[str, dict[str, Any]]] = None) -> Summary:
    """Rows in ``order`` (then any other variant alphabetically) with their share of the gap closed,
    their label-free scores (``label_free``: see :func:`collect_label_free`), their training record
    (``records``: :func:`collect_training_record`) and the label-free pick."""
    names = [v for v in order if v in metrics] + sorted(v for v in metrics if v not in order)
    label_free, records = label_free or {}, records or {}
    rows = [Row(v, metrics[v]["accuracy"], metrics[v]["macro_f1"], label_use(metrics[v].get("uses_target_labels")),
                **{k: label_free.get(v, {}).get(k) for k in LABEL_FREE_KEYS}, **records.get(v, {}))
            for v in names]
    summary = Summary(rows)
    summary.pick, summary.pick_reason = pick_variant(rows, n_classes)
    summary.label_free_pick, summary.label_free_reason = summary.pick, summary.pick_reason
    labelled = choose_by_labels(rows)
    if labelled is not None:
        summary.pick, summary.pick_reason, summary.pick_estimate = labelled
        summary.pick_rule = LABELLED_RULE
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
        "upper bounds, not adaptation methods, except 'few': trained on the few labelled real images the user "
        "gave (data/prepared/target/labelled); 'unknown': the origin of a variant's labels is not recorded.",
        "",
        "| variant | accuracy | macro-F1 | gap closed | uses target labels |",
        "|---|---:|---:|---:|:---:|",
    ]
    lines += [f"| {r.variant} | {_fmt(r.accuracy)} | {_fmt(r.macro_f1)} | {_fmt(r.gap_closed, '{:.1%}')} | "
              f"{labels_cell(r.uses_target_labels, r.few_target_labels)} |" for r in summary.rows]
    lines += ["", *labelled_pick_markdown(summary), *label_free_markdown(summary)]
    if summary.notes:
        lines += [""] + [f"Note: {n}" for n in summary.notes]
    return "\n".join(lines) + "\n"


def labelled_pick_markdown(summary: Summary) -> list[str]:
    """With labelled real pick images: each candidate's accuracy there, its interval, and the pick."""
    scored = [r for r in summary.rows if r.pick_accuracy is not None and r.pick_images]
    if not scored:
        return []
    lines = ["## Choosing with a few labelled real images", "",
             f"Accuracy on the {scored[0].pick_images} labelled real images of data/prepared/target/pick, which "
             "no variant trains on (the test split is never read to choose), with its Wilson 95% interval.", "",
             "| variant | pick accuracy | 95% interval | labelled real images trained on | candidate |",
             "|---|---:|---|---:|:---:|"]
    for r in scored:
        low, high = wilson(r.pick_accuracy, r.pick_images)
        candidate = "yes" if r.uses_target_labels is False or r.few_target_labels else "no (bound)"
        lines.append(f"| {r.variant} | {r.pick_accuracy:.3f} | {low:.3f}-{high:.3f} | "
                     f"{r.labelled_real_images if r.few_target_labels else ('all' if r.uses_target_labels else 0)} | "
                     f"{candidate} |")
    lines += ["", f"Rule: {LABELLED_RULE}.", "",
              f"Pick: {summary.pick or 'none'}: {summary.pick_reason}.", "",
              f"For information only, never used to choose: {pick_versus_best(summary)}", ""]
    return lines


def pick_versus_best(summary: Summary) -> Optional[str]:
    """For information only: the pick's real test accuracy against the best variant it could have been
    (without target labels, or with only the few labelled real images)."""
    if summary.pick is None:
        return None
    by_name = {r.variant: r for r in summary.rows}
    fair = [r for r in summary.rows if r.uses_target_labels is False or r.few_target_labels]
    best = max(fair, key=lambda r: -math.inf if r.accuracy is None else r.accuracy)
    which = "variant without target labels" + (" or with only the few labelled real images"
                                               if any(r.few_target_labels for r in fair) else "")
    text = f"the pick scores {_fmt(by_name[summary.pick].accuracy)} on the real test set; "
    if best.variant == summary.pick:
        return text + f"it is also the best {which} there."
    return text + f"the best {which} there is {best.variant} with {_fmt(best.accuracy)}."


def label_free_markdown(summary: Summary) -> list[str]:
    """The label-free table, the pick and (information only) how the pick fares on the test set."""
    lines = [
        "## Choosing without real labels",
        "",
        "Scores that need no real label: accuracy on labelled validation images of the domain the variant "
        "trains on (its `val`: the translated validation renders for a translated variant, else "
        "data/prepared/source/val), and on the "
        "unlabelled real training images the mean prediction entropy (lower: more confident), information "
        "maximisation IM = H(mean p) - mean H(p) (higher: confident and diverse), soft neighbourhood "
        "density SND (higher: denser clusters), the batch nuclear norm BNM (higher: confident and diverse), "
        "ClassAMI (higher: the predicted classes are the feature clusters) and the largest share of images "
        "predicted as one class (near 1: collapse). Status: whether the variant may be picked.",
        "",
        "| variant | source val acc | target entropy | target IM | target SND | target BNM | ClassAMI | "
        "max class share | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {r.variant} | {_fmt(r.source_val_acc)} | {_fmt(r.target_entropy)} | {_fmt(r.target_im)} | "
              f"{_fmt(r.target_snd)} | {_fmt(r.target_bnm)} | {_fmt(r.target_class_ami)} | "
              f"{_fmt(r.target_class_share_max, '{:.1%}')} | {status(r)} |" for r in summary.rows]
    lines += ["", f"Rule: {PICK_RULE}.", ""]
    labelled = summary.pick_estimate is not None
    said = "The label-free rule alone would pick" if labelled else "Pick without real labels:"
    if summary.label_free_pick is None:
        lines.append(f"{said} none ({summary.label_free_reason}).")
        return lines
    lines.append(f"{said} {summary.label_free_pick}: {summary.label_free_reason}.")
    if not labelled:
        lines += ["", f"For information only, never used to choose: {pick_versus_best(summary)}"]
    return lines


def status(row: Row) -> str:
    """The report's status cell: why a variant may not be picked, else whether it is a candidate at all."""
    if row.uses_target_labels is None:
        return "unknown labels"
    if row.uses_target_labels and not row.few_target_labels:
        return "bound (real labels)"
    if not row.has_label_free:
        return "no label-free scores"
    if row.health:
        return f"**not picked: {row.health}**"
    return "ok (few real labels)" if row.few_target_labels else "ok"


BARS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"))   # (Row attribute, label) of the summary figure


def plot_summary(summary: Summary, path: str | Path, bars: Sequence[tuple[str, str]] = BARS) -> Path:
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
            rows = [r for r in csv.DictReader(fh) if _score(_number(r.get(column))) is not None and r.get("step")]
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


def write_score_table(summary: Summary, path: str | Path, bars: Sequence[tuple[str, str]] = BARS) -> Path:
    """``variant,score,<first>,<second>`` rows (``score`` is the first: accuracy, or mAP@.5 for detection):
    the data of DVC's bar plot comparing the variants, whatever the task kind."""
    keys = [key for key, _ in bars]
    lines = [",".join(["variant", "score", *keys])]
    cell = lambda v: "" if v is None else f"{v:.6f}"  # noqa: E731  (empty, not "n/a": DVC reads numbers)
    lines += [",".join([r.variant, cell(getattr(r, keys[0])), *(cell(getattr(r, k)) for k in keys)])
              for r in summary.rows]
    write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def write_report(eval_dir: str | Path = EVAL_DIR, out_dir: str | Path = OUT_DIR, tracker=None,
                 order: Sequence[str] = (), train_dir: str | Path = TRAIN_DIR,
                 n_classes: Optional[int] = None) -> Summary:
    """Write ``summary.json``, ``summary.md``, ``summary.png``, ``scores.csv`` and ``curves.png`` (the
    variants' source-val accuracy during training) and log them to the report and parent runs.

    Label-free scores come from ``<train_dir>/<variant>/metrics.json``; ``n_classes`` (the number of
    classes of the data) decides whether :func:`pick_variant` checks for collapse.
    """
    metrics = collect(eval_dir, order)
    summary = summarize(metrics, order, collect_label_free(list(metrics), train_dir), n_classes,
                        collect_training_record(list(metrics), train_dir))
    out = Path(out_dir)
    write_json(out / "summary.json", summary.as_json())
    write_text(out / "summary.md", to_markdown(summary))
    plot_summary(summary, out / "summary.png")
    write_score_table(summary, out / SCORES_FILE)
    plot_curves([r.variant for r in summary.rows], train_dir, out / "curves.png")
    if tracker is not None:
        log_to_runs(tracker, summary, out)
    for note in summary.notes:
        log.warning(note)
    log.info("pick without real labels: %s (%s)", summary.pick or "none", summary.pick_reason)
    return summary


def log_to_runs(tracker, summary: Summary, out: Path) -> None:
    """``<variant>.<metric>`` metrics, the ``sim2real.pick`` tag and the summary files, on the report
    run and on the parent run (so ``mlflow.search_runs`` lists every variant side by side)."""
    flat = {f"{variant}.{key}": value for variant, values in summary.as_metrics().items()
            for key, value in values.items()}
    for run_id in dict.fromkeys([tracker.run_id, tracker.parent_run_id]):
        if run_id is None:
            continue
        tracker.log_metrics(flat, run_id=run_id)
        tracker.set_tags({PICK_TAG: summary.pick or "none"}, run_id=run_id)
        for name in ("summary.json", "summary.md", "summary.png", SCORES_FILE, "curves.png"):
            tracker.log_artifact(out / name, artifact_path="report", run_id=run_id)
