"""A NaN or infinite loss stops training at once, names the term and the step, keeps the last good checkpoint."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as TF

from pipeline.gan import cycle_gan as cycle_gan_module
from pipeline.guards import NonFiniteLossError, check_finite, first_non_finite
from pipeline.task import classification as classification_module
from test_gan_training import project, run_stage  # noqa: F401  (fixture: a tiny GAN project)
from test_task_training import train
from tinydata import tiny_params, tiny_prepared


def test_first_non_finite_names_the_first_bad_term():
    assert first_non_finite({"a": torch.tensor(1.0), "b": 2.0}) is None
    name, value = first_non_finite({"a": torch.tensor(1.0), "b": torch.tensor(math.inf), "c": math.nan})
    assert name == "b" and value == math.inf
    with pytest.raises(NonFiniteLossError, match=r"stage-x: loss term 'c' became nan at step 7 \(epoch 2\).*no checkpoint"):
        check_finite({"a": 0.5, "c": math.nan}, "stage-x", 7, 2, None)


def _all_finite(state) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_gan_stops_on_a_nan_term_and_keeps_the_last_good_checkpoint(project, monkeypatch):  # noqa: F811
    # Tiny GAN: 2 epochs x 2 steps, cycle_loss called twice per step. The 5th call is in step 3 (epoch 2).
    calls = []

    def cycle_loss_going_bad(x, x_rec):
        calls.append(1)
        loss = TF.l1_loss(x_rec, x)
        return loss * math.nan if len(calls) == 5 else loss

    monkeypatch.setattr(cycle_gan_module, "cycle_loss", cycle_loss_going_bad)
    with pytest.raises(NonFiniteLossError) as err:
        run_stage(project)
    message = str(err.value)
    assert "train_gan: loss term 'cycle_source' became nan at step 3 (epoch 2)" in message
    assert "checkpoints/gan/last.pt is kept" in message and "\n" not in message

    kept = torch.load(project / "checkpoints/gan/last.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["step"] == 2
    assert all(_all_finite(state) for state in kept["networks"].values())
    assert not (project / "models/gan").exists()                 # nothing exported


def test_task_training_stops_on_a_nan_loss_naming_the_variant_and_step(tmp_path, monkeypatch):
    prepared = tiny_prepared(tmp_path)
    params = tiny_params(tmp_path, prepared, steps=12, select="last")   # 48 images / batch 8 = 6 steps per epoch
    calls = []

    def cross_entropy_going_bad(logits, y):
        calls.append(1)
        loss = TF.cross_entropy(logits, y)
        return loss * math.inf if len(calls) == 8 else loss

    monkeypatch.setattr(classification_module, "F", SimpleNamespace(cross_entropy=cross_entropy_going_bad))
    with pytest.raises(NonFiniteLossError, match=r"train_task@dann: loss term 'task' became (nan|inf) at step 8 "
                                                 r"\(epoch 2\); .*last\.pt is kept"):
        train(params, "dann", tmp_path)
    kept = torch.load(tmp_path / "ckpt" / "run" / "last.pt", weights_only=True)
    assert kept["epoch"] == 1 and kept["step"] == 6 and _all_finite(kept["model"])
    assert not (tmp_path / "reports" / "run" / "metrics.json").exists()


def test_stage_reports_a_nan_loss_in_one_line_with_exit_code_2(project, monkeypatch, capsys):  # noqa: F811
    from pipeline import cli
    from stages.train_gan import main

    monkeypatch.setattr(cycle_gan_module, "similarity_loss", lambda x, g_x: TF.l1_loss(g_x, x) * math.nan)
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, ["--params", str(project / "params.yaml")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: train_gan: loss term 'similarity' became nan at step 1 (epoch 1)")
    assert "no checkpoint had been written yet" in err[-1]
