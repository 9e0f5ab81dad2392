"""Tracking writes one parent run per pipeline execution and one child run per stage."""

import pytest

from pipeline.config import parse_params
from pipeline.tracking import NullTracker, stage_run


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SIM2REAL_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-exp")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-one")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_parent_and_child_runs_with_params(store, default_raw):
    from mlflow.tracking import MlflowClient

    params = parse_params(default_raw)
    with stage_run("prepare", params) as t1:
        t1.log_metrics({"count": 3.0}, step=1)
    with stage_run("train_task", params, variant="dann") as t2:
        pass
    assert t1.parent_run_id == t2.parent_run_id

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("test-exp")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"prepare", "train_task@dann", "pipeline dvc-exp:exp-one"}
    child = runs["train_task@dann"]
    assert child.data.tags["mlflow.parentRunId"] == t1.parent_run_id
    assert child.data.tags["variant"] == "dann" and child.data.tags["stage"] == "train_task"
    assert child.data.params["gan.weights.cycle"] == "10.0"
    assert child.data.params["data.image_size"] == "32"
    assert "git_commit" in child.data.params and "git_commit" in child.data.tags
    assert runs["prepare"].data.metrics["count"] == 3.0
    assert child.info.status == "FINISHED"


def test_failed_stage_marks_its_run_failed(store, default_raw):
    from mlflow.tracking import MlflowClient

    params = parse_params(default_raw)
    with pytest.raises(RuntimeError):
        with stage_run("translate", params) as t:
            raise RuntimeError("boom")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    assert client.get_run(t.run_id).info.status == "FAILED"


def test_other_ranks_do_not_log(store, default_raw, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with stage_run("prepare", parse_params(default_raw)) as t:
        assert isinstance(t, NullTracker)
        t.log_metrics({"x": 1.0})
    assert not (store / "mlflow.db").exists()


_CONCURRENT = """
import sys
from pipeline.config import load_params
from pipeline.tracking import stage_run
with stage_run(sys.argv[1], load_params(sys.argv[2])) as t:
    t.log_metrics({"ok": 1.0})
print(t.parent_run_id)
"""


def test_fresh_store_created_by_two_processes_at_once(store, default_raw):
    """A fresh SQLite store races when created concurrently; the lock makes both stages succeed."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO

    (store / "params.yaml").write_text(yaml.safe_dump(default_raw))
    os = __import__("os")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", _CONCURRENT, f"stage{i}", str(store / "params.yaml")],
                              cwd=store, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    parents = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(parents) == 1


def test_logged_model_loads_back_with_the_same_outputs(store, default_raw):
    import mlflow.pytorch
    import torch

    from pipeline.task.models import build_task_model

    model = build_task_model("small_cnn", 1, 10, width=4).eval()
    with stage_run("train_task", parse_params(default_raw), variant="source_only") as t:
        uri = t.log_model(model, "task_source_only")
    loaded = mlflow.pytorch.load_model(uri).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("name, key", [
    ("target.train.per_class.<unlabelled>", "target.train.per_class._unlabelled_"),
    ("class_acc.stop sign?", "class_acc.stop sign_"),
    ("a//b/./c", "a/b/c"),
    ("../x", "__/x"),
    ("/lead", "lead"),
    ("", "_"),
])
def test_mlflow_key_turns_any_name_into_a_key_mlflow_accepts(name, key):
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name, _validate_tag_name

    from pipeline.tracking import mlflow_key

    assert mlflow_key(name) == key
    for validate in (_validate_metric_name, _validate_param_name, _validate_tag_name):
        validate(mlflow_key(name))
    assert len(mlflow_key("x" * 400)) == 250


def test_user_class_names_and_unlabelled_counts_log_to_a_real_store(store, default_raw):
    from mlflow.tracking import MlflowClient

    params = parse_params(default_raw)
    with stage_run("prepare", params) as t:
        t.log_metrics({"target.train.per_class.<unlabelled>": 12, "class_acc.stop sign?": 0.5}, step=1)
        t.log_params({"odd key <x>": 1})
        t.set_tags({"tag with <bad> chars": "v"})
    run = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_run(t.run_id)
    assert run.data.metrics["target.train.per_class._unlabelled_"] == 12
    assert run.data.metrics["class_acc.stop sign_"] == 0.5
    assert run.data.params["odd key _x_"] == "1" and run.data.tags["tag with _bad_ chars"] == "v"
