"""Choosing a variant: without real labels (which variants may be chosen, and the rule that chooses),
or by a few labelled real images when the user gives them (:func:`choose_by_labels`).

A user without labelled real images cannot look at test accuracy. Every variant's training record
(``reports/train/<variant>/metrics.json``) holds label-free scores (:mod:`pipeline.metrics.label_free`)
and its predicted classes on a fixed sample of the unlabelled real training images. From those alone:

1. **Who may be chosen.** Variants known not to use real labels, or only the few labelled real images
   the user gave (the oracle is a bound, not a choice; an unknown label origin is left out: the pick
   fails closed) that have label-free scores, less the *unhealthy* ones, which the report marks:

   - *failed to learn the source*: accuracy on the labelled validation images of its own training
     domain below ``chance + FAILED_MARGIN * (1 - chance)`` (chance ``1/K``): a model that never
     fitted its labelled data (an adversarial method on thin glyphs at loss ``ln K``) can still look
     confident on the real images;
   - *collapsed*: more than ``COLLAPSE_SHARE`` of the real images in one class (``K >= 3``), or its
     source-val accuracy collapsed during training (the loop's guard warned and exported an earlier
     round).

2. **The rule** (:data:`RULES`, the shipped one :data:`PICK_RULE_NAME`) scores the healthy candidates.
   Each candidate rule below was measured on the scenario suite with ``scripts/pick_rules.py`` (a
   dev read on the real *training* labels, never the test split); docs/results.md reports every rule's
   hit rate and regret there. IM chose the best variant on 5 of 7 scenarios (mean regret 0.017,
   worst 0.094); entropy, BNM and ClassAMI chose exactly as IM, SND, source-val accuracy and
   agreement did worse (hit rates 0%, 0% and 14%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

BASELINE = "source_only"
FAILED_MARGIN = 0.25         # source-val accuracy within a quarter of the way from chance to 1: not learned
COLLAPSE_SHARE = 0.5
COLLAPSE_MIN_CLASSES = 3


def unknown_label_use(rows: Sequence[Any]) -> str:
    """The pick reason's note on variants left out because their label origin is unknown ('' for none)."""
    unknown = [r.variant for r in rows if r.uses_target_labels is None]
    return (f"; left out, as where their labels come from is unknown (no LABEL_ORIGIN mark on their training "
            f"data): {', '.join(unknown)}") if unknown else ""


def failed_to_learn(source_val_acc: Optional[float], n_classes: Optional[int]) -> bool:
    """True when the accuracy on the variant's own labelled validation images is near chance:
    below ``1/K + FAILED_MARGIN * (1 - 1/K)`` (0.325 for 10 classes, 0.625 for 2)."""
    if source_val_acc is None or not n_classes:
        return False
    chance = 1.0 / n_classes
    return source_val_acc < chance + FAILED_MARGIN * (1.0 - chance)


def health(row: Any, n_classes: Optional[int]) -> str:
    """``""`` for a variant that may be chosen, else why not, for the report (``row``: a report row
    with ``source_val_acc``, ``target_class_share_max`` and ``warnings``)."""
    if failed_to_learn(row.source_val_acc, n_classes):
        chance = 1.0 / n_classes
        return f"failed to learn its labelled data (val acc {row.source_val_acc:.3f}, chance {chance:.3f})"
    if (n_classes is None or n_classes >= COLLAPSE_MIN_CLASSES) and row.target_class_share_max is not None \
            and row.target_class_share_max > COLLAPSE_SHARE:
        return f"collapsed ({row.target_class_share_max:.0%} of real images in one class)"
    if row.warnings:
        return f"collapsed in training ({row.warnings[0]})"
    return ""


def agreement(row: Any, others: Sequence[Any]) -> Optional[float]:
    """Mean share of the real sample on which ``row`` predicts the same class as each of ``others``."""
    mine = row.target_predicted
    shared = [o.target_predicted for o in others if o is not row and o.target_predicted is not None
              and mine is not None and len(o.target_predicted) == len(mine)]
    if not shared:
        return None
    return sum(sum(a == b for a, b in zip(mine, theirs)) / len(mine) for theirs in shared) / len(shared)


@dataclass(frozen=True)
class Rule:
    name: str
    text: str                                        # one line for summary.md
    score: Callable[[Any, Sequence[Any]], Optional[float]]   # (candidate, all healthy candidates) -> higher is better


RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("im", "max target IM", lambda r, _: r.target_im),
    Rule("snd", "max target SND", lambda r, _: r.target_snd),
    Rule("entropy", "min target entropy", lambda r, _: None if r.target_entropy is None else -r.target_entropy),
    Rule("bnm", "max target BNM", lambda r, _: r.target_bnm),
    Rule("class_ami", "max target ClassAMI", lambda r, _: r.target_class_ami),
    Rule("source_val", "max source-val accuracy (on the variant's own training domain)", lambda r, _: r.source_val_acc),
    Rule("agreement", "max mean agreement with the other healthy candidates' predictions on the real images",
         agreement),
)}
PICK_RULE_NAME = "im"


def choose(rows: Sequence[Any], n_classes: Optional[int], rule: str = PICK_RULE_NAME) -> tuple[Optional[str], str]:
    """``(variant, reason)`` by ``rule`` among the healthy candidates of ``rows``; ``(None, reason)``
    when none qualifies. Ties go to the higher source-val accuracy, then to the earlier row."""
    unknown = unknown_label_use(rows)
    candidates = [r for r in rows if may_use_few_labels(r) and r.has_label_free]
    if not candidates:
        scored = [r.variant for r in rows if r.has_label_free]
        why = ("no variant known not to use target labels has label-free scores" if scored else
               "no variant has label-free scores (reports/train/<variant>/metrics.json without \"label_free\")")
        return None, why + unknown
    excluded = {r.variant: health(r, n_classes) for r in candidates}
    healthy = [r for r in candidates if not excluded[r.variant]]
    left_out = "; ".join(f"{v}: {why}" for v, why in excluded.items() if why)
    left_out = f"; left out: {left_out}" if left_out else ""
    if not healthy:
        return None, f"every candidate is unhealthy{left_out}{unknown}"
    spec = RULES[rule]
    scored = [(spec.score(r, healthy), r) for r in healthy]
    key = lambda item: (-math.inf if item[0] is None else item[0],   # noqa: E731
                        -math.inf if item[1].source_val_acc is None else item[1].source_val_acc)
    best_score, best = max(scored, key=key)
    if best_score is None:
        return None, f"no healthy candidate has the score the rule needs ({spec.text}){left_out}{unknown}"
    ties = [r for s, r in scored if s == best_score and r is not best]
    tie = f", tie broken by source val accuracy {best.source_val_acc:.4f}" if ties else ""
    few = sum(bool(getattr(r, "few_target_labels", False)) for r in healthy)
    which = f" ({few} trained on the few labelled real images)" if few else " without target labels"
    return best.variant, f"{spec.text}: {best_score:.4f} among {len(healthy)} healthy candidate(s){which}{tie}{left_out}{unknown}"


# ------------------------------------------------------------------------------------------------
# Choosing with a few labelled real images
# ------------------------------------------------------------------------------------------------

Z95 = 1.959964    # two-sided 95% normal quantile (Wilson interval)
LABELLED_RULE = ("max accuracy on the labelled real pick images (data/prepared/target/pick, which no variant trains "
                 "on) among the variants without target labels and those trained on the few labelled real images; "
                 "tie: the variant trained on more labelled real images, then the label-free rule's score, then "
                 "max source_val_acc")
# The first tie-break is a dev read: on the real training labels of eleven --labels workspaces (seven
# scenarios, K = 5 and 10, three seeds) both few-label variants beat every label-free one, while on
# 40 pick images of photo few_labels and randomized tied (9 of 40 each).


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``accuracy`` measured on ``n`` images:

        (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)

    (Wilson 1927); unlike ``p -+ z sqrt(p(1-p)/n)`` it stays inside [0, 1] and is not of width 0 at
    ``p = 1`` on a few images."""
    if n <= 0:
        return 0.0, 1.0
    centre = accuracy + z * z / (2 * n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def may_use_few_labels(row: Any) -> bool:
    """A candidate of the labelled pick: no target labels, or only the few of ``target/labelled``."""
    return row.uses_target_labels is False or bool(getattr(row, "few_target_labels", False))


def choose_by_labels(rows: Sequence[Any], rule: str = PICK_RULE_NAME) -> Optional[tuple[str, str, dict]]:
    """``(variant, reason, estimate)`` by :data:`LABELLED_RULE` when variants were scored on labelled real
    pick images (``row.pick_accuracy``, ``row.pick_images``), else None (the label-free rule decides).
    ``estimate``: the pick's accuracy there with its Wilson 95% interval and the image count."""
    scored = [r for r in rows if may_use_few_labels(r) and r.pick_accuracy is not None and r.pick_images]
    if not scored:
        return None
    spec = RULES[rule]
    tie = lambda r: spec.score(r, scored) if r.has_label_free else None   # noqa: E731
    key = lambda r: (r.pick_accuracy, getattr(r, "labelled_real_images", 0) or 0,   # noqa: E731
                     -math.inf if tie(r) is None else tie(r), -math.inf if r.source_val_acc is None else r.source_val_acc)
    ranked = sorted(scored, key=key, reverse=True)
    best = ranked[0]
    low, high = wilson(best.pick_accuracy, best.pick_images)
    estimate = {"accuracy": best.pick_accuracy, "low": low, "high": high, "images": best.pick_images}
    reason = (f"accuracy {best.pick_accuracy:.3f} on {best.pick_images} labelled real pick images "
              f"(Wilson 95% interval {low:.3f}-{high:.3f}) among {len(scored)} candidate(s)")
    if len(ranked) > 1:
        second = ranked[1]
        s_low, s_high = wilson(second.pick_accuracy, second.pick_images)
        close = "within" if s_high >= low else "outside"
        reason += (f"; next {second.variant} {second.pick_accuracy:.3f} ({s_low:.3f}-{s_high:.3f}), "
                   f"{close} the pick's interval")
    return best.variant, reason, estimate
