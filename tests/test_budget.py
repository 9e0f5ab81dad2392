"""``budget``: one multiplier of every step count, resolved once (:meth:`pipeline.config.Params.effective`).

Budget 1 must give exactly the settings as written; other budgets scale each variant's steps,
``task.eval_every`` and ``gan.steps_per_epoch`` and nothing else, and change the fingerprints of the
runs they shape (so a checkpoint of another budget is never resumed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re

import pytest
import yaml

from conftest import REPO, deep_update
from test_gan_training import project  # noqa: F401  (fixture)
from pipeline.config import ConfigError, parse_params, scale_steps
from pipeline.gan import trainer as gan_trainer
from pipeline.task.variant import FINGERPRINT_SECTIONS as TASK_SECTIONS
from pipeline.task.variant import Variant

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def at_budget(budget, raw: dict = SHIPPED):
    return parse_params({**raw, "budget": budget})


def test_params_yaml_ships_budget_one():
    assert SHIPPED["budget"] == 1 and parse_params(SHIPPED).budget == 1.0


def test_budget_one_resolves_to_the_settings_as_written():
    params = parse_params(SHIPPED)
    assert params.effective() is params
    for name, entry in params.variants.items():
        written = entry.steps or params.task.steps
        assert params.effective_task(name) == {"budget": 1.0, "steps": written, "eval_every": params.task.eval_every,
                                               "rounds": math.ceil(written / params.task.eval_every)}, name
        variant = Variant.resolve(params, name)
        assert (variant.steps, variant.eval_every) == (written, params.task.eval_every), name
    gan = params.gan
    assert params.effective_gan() == {"budget": 1.0, "gan": {
        "steps_per_epoch": gan.steps_per_epoch, "epochs": gan.epochs, "decay_epochs": gan.decay_epochs,
        "iterations": (gan.epochs + gan.decay_epochs) * gan.steps_per_epoch}}


@pytest.mark.parametrize("budget", [1, 2, 8])
def test_budget_scales_every_shipped_variant_and_the_gan(budget):
    written, params = parse_params(SHIPPED), at_budget(budget)
    for name, entry in written.variants.items():
        steps = (entry.steps or written.task.steps) * budget
        eval_every = written.task.eval_every * budget
        effective = params.effective_task(name)
        assert effective == {"budget": float(budget), "steps": steps, "eval_every": eval_every,
                             "rounds": written.effective_task(name)["rounds"]}, name   # rounds do not change
        variant = Variant.resolve(params, name)
        assert (variant.steps, variant.eval_every, variant.rounds) == (steps, eval_every, effective["rounds"])
    gan = params.effective().gan
    assert gan.steps_per_epoch == written.gan.steps_per_epoch * budget
    assert (gan.epochs, gan.decay_epochs) == (written.gan.epochs, written.gan.decay_epochs)  # the lr schedule's shape
    assert params.effective_gan()["gan"]["iterations"] == (gan.epochs + gan.decay_epochs) * gan.steps_per_epoch


def test_the_shipped_defaults_at_budget_eight():
    """The numbers the README's GPU recipe runs (params.yaml as shipped)."""
    params = at_budget(8)
    steps = {name: params.effective_task(name)["steps"] for name in params.variants}
    assert steps["dann"] == 8 * SHIPPED["variants"]["dann"]["steps"]
    assert steps["randomized_st"] == 8 * SHIPPED["variants"]["randomized_st"]["steps"]
    assert steps["source_only"] == 8 * SHIPPED["task"]["steps"]      # no steps of its own: task.steps
    assert params.effective_task("source_only")["eval_every"] == 8 * SHIPPED["task"]["eval_every"]


def test_nothing_but_step_counts_changes():
    written, effective = parse_params(SHIPPED), at_budget(8).effective()
    assert effective.budget == 1.0 and effective.effective() is effective      # applying it twice changes nothing
    assert effective.data == written.data and effective.augment == written.augment
    assert effective.gan == dataclasses.replace(written.gan, steps_per_epoch=effective.gan.steps_per_epoch)
    assert effective.task == dataclasses.replace(written.task, steps=effective.task.steps, eval_every=effective.task.eval_every)
    for name, entry in written.variants.items():
        assert effective.variants[name] == dataclasses.replace(entry, steps=effective.variants[name].steps)
        assert (entry.steps is None) == (effective.variants[name].steps is None)


@pytest.mark.parametrize("count, budget, expected", [
    (500, 1, 500), (500, 1.0, 500), (125, 8, 1000), (125, 0.5, 63), (3, 0.5, 2), (250, 1.3, 325),
    (1, 0.01, 1), (4, 0.1, 1),
])
def test_scale_steps_rounds_to_a_whole_number_at_least_one(count, budget, expected):
    assert scale_steps(count, budget) == expected


@pytest.mark.parametrize("value, expected", [
    (0, "a positive number"), (-2, "a positive number"), (float("inf"), "a positive number"),
    ("eight", "expected a number"), (True, "expected a number"), (None, "expected a number"),
])
def test_bad_budgets_are_one_line_errors_naming_budget(value, expected):
    with pytest.raises(ConfigError) as err:
        at_budget(value)
    message = str(err.value)
    assert message.startswith("budget: ") and expected in message and "\n" not in message


def test_a_fractional_budget_keeps_the_rounds():
    params = at_budget(0.5)
    assert params.effective_task("dann") == {"budget": 0.5, "steps": 500, "eval_every": 125, "rounds": 4}
    assert params.effective_gan()["gan"]["steps_per_epoch"] == math.floor(SHIPPED["gan"]["steps_per_epoch"] / 2 + 0.5)


# ------------------------------------------------------------------------------------------------
# Fingerprints: budget 1 keeps today's, another budget changes those of the runs it shapes
# ------------------------------------------------------------------------------------------------


def old_fingerprint(raw: dict, sections: tuple[str, ...]) -> str:
    """``Params.fingerprint`` as it was before ``budget`` existed."""
    chosen = {k: raw.get(k) for k in sections}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:16]


def without_budget(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k != "budget"}


def test_budget_one_keeps_the_fingerprints_made_before_it_existed():
    old = without_budget(SHIPPED)
    params, before = parse_params(SHIPPED), parse_params(old)
    assert params.fingerprint(*TASK_SECTIONS) == old_fingerprint(old, ("seed", "data", "augment", "task"))
    assert params.fingerprint(*gan_trainer.FINGERPRINT_SECTIONS) == old_fingerprint(old, ("seed", "data", "gan"))
    assert params.fingerprint() == before.fingerprint() == old_fingerprint(old, tuple(sorted(old)))
    for name in params.variants:
        assert Variant.resolve(params, name).params_hash(params) == Variant.resolve(before, name).params_hash(before)
    assert at_budget(1.0).fingerprint(*TASK_SECTIONS) == params.fingerprint(*TASK_SECTIONS)


def test_another_budget_changes_the_fingerprints_of_training_only():
    one, two, eight = parse_params(SHIPPED), at_budget(2), at_budget(8)
    for name in one.variants:
        hashes = {Variant.resolve(p, name).params_hash(p) for p in (one, two, eight)}
        assert len(hashes) == 3, name
    assert len({p.fingerprint(*gan_trainer.FINGERPRINT_SECTIONS) for p in (one, two, eight)}) == 3
    for section in ("seed", "data", "augment", "task", "gan", "translate", "variants"):
        assert one.fingerprint(section) == two.fingerprint(section)      # what prepare, translate, ... read


# ------------------------------------------------------------------------------------------------
# Where the effective settings are visible: MLflow params, metrics.json, provenance.json
# ------------------------------------------------------------------------------------------------


def test_training_stage_runs_log_the_effective_settings():
    from pipeline.tracking import stage_params

    params = at_budget(2)
    task = stage_params("train_task", params, "dann")
    assert task["effective.budget"] == 2.0 and task["effective.steps"] == 2 * SHIPPED["variants"]["dann"]["steps"]
    assert task["effective.eval_every"] == 2 * SHIPPED["task"]["eval_every"] and task["effective.rounds"] == 4
    assert task["variant.steps"] == SHIPPED["variants"]["dann"]["steps"]            # the entry as written
    gan = stage_params("train_gan", params)
    assert gan["effective.gan.steps_per_epoch"] == 2 * SHIPPED["gan"]["steps_per_epoch"]
    assert gan["effective.gan.epochs"] == SHIPPED["gan"]["epochs"] and "effective.gan.iterations" in gan
    assert not any(k.startswith("effective.") for k in stage_params("evaluate", params, "dann"))
    assert not any(k.startswith("effective.") for k in stage_params("prepare", params))


def test_task_training_runs_the_effective_steps(tmp_path):
    import torch

    from pipeline.distributed import Runtime
    from pipeline.task.train import train_task_model
    from tinydata import RecordingTracker, tiny_prepared, tiny_task_raw

    prepared = tiny_prepared(tmp_path)
    params = parse_params({**tiny_task_raw(tmp_path, prepared, steps=4, eval_every=2), "budget": 2})
    result = train_task_model(params, "source_only", Runtime(torch.device("cpu")), RecordingTracker(),
                              tmp_path / "ckpt", tmp_path / "reports", prepared=prepared)
    assert [row["step"] for row in result.history] == [4, 8]       # 2 rounds of 2 x 2 steps
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["rounds"] == 2
    assert metrics["effective"] == {"budget": 2.0, "steps": 8, "eval_every": 4, "rounds": 2}


def test_gan_training_runs_the_effective_iterations(project, tiny_raw):
    from test_gan_training import read_history, run_stage, write_params

    tmp_path = project                                            # data, a frozen task model, tiny params
    write_params(tmp_path, {**tiny_raw, "budget": 2})           # 1 + 1 epochs of 2 steps, x 2
    run_stage(tmp_path)

    metrics = json.loads((tmp_path / "reports/gan/metrics.json").read_text())
    assert metrics["steps"] == 8 and metrics["epochs_total"] == 2
    assert metrics["effective"] == {"budget": 2.0, "gan": {"steps_per_epoch": 4, "epochs": 1, "decay_epochs": 1,
                                                           "iterations": 8}}
    assert [row["epoch"] for row in read_history(tmp_path / "reports/gan/history.csv")] == ["1", "2"]
    provenance = json.loads((tmp_path / "models/gan/provenance.json").read_text())
    assert provenance["effective"] == metrics["effective"] and "budget" in provenance["params_sections"]


# ------------------------------------------------------------------------------------------------
# The README's GPU recipe
# ------------------------------------------------------------------------------------------------


def readme_gpu_settings() -> dict[str, object]:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(dvc exp run -S budget=.*?)```", readme, re.S)
    assert block, "README: the GPU recipe (dvc exp run -S budget=...) is missing"
    words = block.group(1).replace("\\\n", " ").split()
    settings = [words[i + 1] for i, word in enumerate(words) if word == "-S"]
    return {key: yaml.safe_load(value) for key, value in (s.split("=", 1) for s in settings)}


def nested(settings: dict[str, object]) -> dict:
    out: dict = {}
    for dotted, value in settings.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_the_readme_gpu_recipe_scales_by_budget_and_is_valid():
    from pipeline.gan.cycle_gan import check_geometry

    settings = readme_gpu_settings()
    assert settings["budget"] == 8
    assert not {"task.steps", "task.eval_every", "gan.amp", "gan.steps_per_epoch", "gan.epochs",
                "gan.decay_epochs"} & set(settings)                      # budget's job, and amp measured slower
    params = parse_params(deep_update(SHIPPED, nested(settings)))
    check_geometry(params.gan, params.data.image_size)
    assert params.effective_task("randomized_st")["steps"] == 8 * SHIPPED["variants"]["randomized_st"]["steps"]
