"""Evaluate an exported task model on the held-out real test split.

This is the only module that opens ``target/test`` with its labels (through
:func:`~pipeline.data.manifest.heldout_test_set`; a test scans the sources to keep it so). It checks
the folder is the held-out split and the model fits the params, then hands the split to the task
kind's ``evaluate`` (:func:`pipeline.task.classification.evaluate_classifier`: accuracy, macro-F1, the
proxy A-distance; :func:`pipeline.detection.evaluate.evaluate_detector`: COCO mAP). Nothing computed
here feeds back into training or model selection.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Params
from pipeline.data.manifest import HELDOUT_MARKER, heldout_test_set, is_heldout
from pipeline.task.export import MODEL_FILE, check_model_matches, load_task_model
from pipeline.task.kinds import kind_of_meta

log = logging.getLogger(__name__)

TARGET_TEST = Path("data/prepared/target/test")


def check_heldout(test_dir: str | Path) -> Path:
    """``test_dir`` when it is a held-out test split (prepare marked it with ``HELDOUT``), else a one-line
    :class:`~pipeline.cli.UserError` naming it: scoring a training or validation folder would report a
    number that looks like the test result but is not."""
    from pipeline.cli import UserError

    folder = Path(test_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: test folder not found; expected the held-out test split made by the "
                        f"prepare stage ({TARGET_TEST})")
    if not is_heldout(folder):
        raise UserError(f"{folder}: not a held-out test split (it holds no {HELDOUT_MARKER} marker); the evaluate "
                        f"stage scores only the test split made by the prepare stage ({TARGET_TEST}), never a "
                        f"folder used for training or validation")
    return folder


def evaluate_variant(params: Params, variant: str, model_dir: str | Path, out_dir: str | Path, tracker,
                     test_dir: str | Path = TARGET_TEST, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Score ``<model_dir>/model.pt`` on the real test split; write metrics.json, predictions.csv and
    confusion.png to ``out_dir``, mirror them to ``tracker`` and return the metrics. ``test_dir`` must be
    a held-out split (:func:`check_heldout`), for classification and detection alike."""
    check_heldout(test_dir)
    model_path = Path(model_dir) / MODEL_FILE
    model, meta = load_task_model(model_path, device)
    check_model_matches(meta, params, model_path)
    d, kind = params.data, kind_of_meta(meta)
    test_set = heldout_test_set(test_dir, list(d.classes), d.channels, d.image_size, dataset_type=kind.dataset_type)
    return kind.evaluate(model, meta, params, variant, test_set, out_dir, tracker, device)
