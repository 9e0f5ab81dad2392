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
from pipeline.report_figures import BARS, finite_or_none, plot_curves, plot_summary, write_score_table
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
HEADLINE_FILE = "headline.json"   # DVC's metrics file: the headline score and gap closed per variant, the pick
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
            found[variant] = {k: finite_or_none(block.get(k)) for k in keys}
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
                              "pick_accuracy": finite_or_none(pick.get("accuracy")),
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
    names = ordered(metrics, order)
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
    summary.notes += close_gap(rows, metrics, "accuracy", "accuracy")
    return summary


def ordered(metrics: dict[str, Any], order: Sequence[str]) -> list[str]:
    """The variants of ``metrics`` in ``order`` (params.yaml's), then any other alphabetically."""
    return [v for v in order if v in metrics] + sorted(v for v in metrics if v not in order)


def close_gap(rows: Sequence[Any], metrics: dict[str, dict[str, Any]], key: str, label: str) -> list[str]:
    """Set each row's ``gap_closed`` by the score ``key`` (the kind's headline metric: accuracy, mAP@.5);
    returns the notes a reader needs when it cannot be read (a missing reference row, no gap)."""
    missing = [v for v in (BASELINE, ORACLE) if v not in metrics]
    if missing:
        return [f"gap closed needs the {' and '.join(missing)} variant(s), which were not evaluated."]
    low, high = metrics[BASELINE][key], metrics[ORACLE][key]
    for row in rows:
        row.gap_closed = gap_closed(getattr(row, key), low, high)
    if high == low:
        return [f"{ORACLE} and {BASELINE} have the same {label}: there is no gap to close."]
    if high < low:
        return [f"{ORACLE} is below {BASELINE} in {label}: the gap is negative and gap closed is hard to read."]
    return []


def fmt(value: Optional[float], pattern: str = "{:.4f}") -> str:
    """A score as the report prints it: ``n/a`` when missing."""
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
    lines += [f"| {r.variant} | {fmt(r.accuracy)} | {fmt(r.macro_f1)} | {fmt(r.gap_closed, '{:.1%}')} | "
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
    text = f"the pick scores {fmt(by_name[summary.pick].accuracy)} on the real test set; "
    if best.variant == summary.pick:
        return text + f"it is also the best {which} there."
    return text + f"the best {which} there is {best.variant} with {fmt(best.accuracy)}."


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
    lines += [f"| {r.variant} | {fmt(r.source_val_acc)} | {fmt(r.target_entropy)} | {fmt(r.target_im)} | "
              f"{fmt(r.target_snd)} | {fmt(r.target_bnm)} | {fmt(r.target_class_ami)} | "
              f"{fmt(r.target_class_share_max, '{:.1%}')} | {status(r)} |" for r in summary.rows]
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
    write_summary_files(summary, to_markdown(summary), out_dir, train_dir, tracker, BARS, "source_val_acc")
    return summary


def headline(summary: Any, score: str) -> dict[str, Any]:
    """What ``dvc metrics show`` prints, one short row: ``{"pick": name or "none", <variant>: {<score>,
    "gap_closed"}}`` with ``score`` the kind's headline metric (accuracy, map50)."""
    rows = {variant: {score: values[score], "gap_closed": values["gap_closed"]}
            for variant, values in summary.as_metrics().items()}
    return {"pick": summary.pick or "none", **rows}


def report_stage(params: Any, eval_dir: str | Path, out_dir: str | Path, tracker, train_dir: str | Path) -> Summary:
    """The report stage for classification (the task kind's ``report_with``): :func:`write_report` over
    params.yaml's variants, checking for collapse with its number of classes."""
    return write_report(eval_dir, out_dir, tracker, order=list(params.variants), train_dir=train_dir,
                        n_classes=len(params.data.classes))


def write_summary_files(summary: Any, markdown: str, out_dir: str | Path, train_dir: str | Path, tracker,
                        bars: Sequence[tuple[str, str]], curve: str) -> None:
    """The report's files for any task kind: ``summary.json`` (``summary.as_json()``), ``headline.json``
    (:func:`headline`), ``summary.md``, ``summary.png`` and ``scores.csv`` (the ``bars``: the kind's two
    headline metrics), ``curves.png`` (the history column ``curve``: the kind's source-val score);
    logged to the report and parent runs."""
    out = Path(out_dir)
    write_json(out / "summary.json", summary.as_json())
    write_json(out / HEADLINE_FILE, headline(summary, bars[0][0]))
    write_text(out / "summary.md", markdown)
    plot_summary(summary, out / "summary.png", bars)
    write_score_table(summary, out / SCORES_FILE, bars)
    plot_curves([r.variant for r in summary.rows], train_dir, out / "curves.png", column=curve)
    if tracker is not None:
        log_to_runs(tracker, summary, out)
    for note in summary.notes:
        log.warning(note)
    log.info("pick without real labels: %s (%s)", summary.pick or "none", summary.pick_reason)


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
        for name in ("summary.json", HEADLINE_FILE, "summary.md", "summary.png", SCORES_FILE, "curves.png"):
            tracker.log_artifact(out / name, artifact_path="report", run_id=run_id)
