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


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{store / 'mlflow.db'}")


def test_parent_and_child_runs_with_params(store, default_raw):
    """The parent holds every param once; a child only its own: its variant, else its sections."""
    params = parse_params(default_raw)
    with stage_run("prepare", params) as t1:
        t1.log_metrics({"count": 3.0}, step=1)
    with stage_run("train_task", params, variant="dann") as t2:
        pass
    with stage_run("report", params) as t3:
        pass
    assert t1.parent_run_id == t2.parent_run_id == t3.parent_run_id

    client = _client(store)
    exp = client.get_experiment_by_name("test-exp")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"prepare", "train_task@dann", "report", "pipeline dvc-exp:exp-one"}
    parent = runs["pipeline dvc-exp:exp-one"].data
    assert parent.params["gan.weights.cycle"] == "10.0" and parent.params["variants.dann.method"] == "dann"
    assert parent.params["data.image_size"] == "32" and parent.params["seed"] == "0"

    child = runs["train_task@dann"]
    assert child.data.tags["mlflow.parentRunId"] == t1.parent_run_id
    assert child.data.tags["variant"] == "dann" and child.data.tags["stage"] == "train_task"
    assert child.data.params["variant.method"] == "dann"
    assert child.data.params["variant.params.trade_off"] == "1.0"
    assert child.data.params["variant.target_bn"] == "True"
    assert all(k.startswith("variant.") for k in child.data.params)
    assert "git_commit" in child.data.tags
    assert child.info.status == "FINISHED"

    prepare = runs["prepare"].data
    assert prepare.params["seed"] == "0" and prepare.params["data.image_size"] == "32"
    assert not any(k.startswith(("gan.", "variants.", "task.")) for k in prepare.params)
    assert prepare.metrics["count"] == 3.0
    assert runs["report"].data.params == {}


def test_stage_params_follow_the_stage_mapping(default_raw):
    from pipeline.tracking import stage_params

    params = parse_params(default_raw)
    assert set(stage_params("translate", params)) == {"translate.batch_size"}
    gan = stage_params("train_gan", params)
    assert gan["seed"] == 0 and gan["gan.weights.cycle"] == 10.0 and not any(k.startswith("data.") for k in gan)
    assert stage_params("evaluate", params, "source_only")["variant.train"] == "data/prepared/source/train"
    assert stage_params("report", params) == {}


def test_experiment_opens_in_the_classic_ml_view(store, default_raw, monkeypatch):
    """MLflow 3's UI opens an experiment without ``mlflow.experimentKind`` in its GenAI view."""
    client = _client(store)
    params = parse_params(default_raw)
    with stage_run("prepare", params):
        pass
    assert client.get_experiment_by_name("test-exp").tags["mlflow.experimentKind"] == "custom_model_development"

    client.create_experiment("older-exp")      # as an earlier version of the pipeline created it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "older-exp")
    with stage_run("prepare", params):
        pass
    assert client.get_experiment_by_name("older-exp").tags["mlflow.experimentKind"] == "custom_model_development"


def test_end_pipeline_run_finishes_the_parent(store, default_raw):
    from pipeline.tracking import end_pipeline_run

    params = parse_params(default_raw)
    with stage_run("prepare", params) as t:
        pass
    assert _client(store).get_run(t.parent_run_id).info.status == "RUNNING"
    assert end_pipeline_run(params) == t.parent_run_id
    info = _client(store).get_run(t.parent_run_id).info
    assert info.status == "FINISHED" and info.end_time >= info.start_time


def test_end_pipeline_run_without_tracking_or_parent_does_nothing(store, default_raw, monkeypatch):
    from pipeline.tracking import end_pipeline_run

    params = parse_params(default_raw)
    monkeypatch.setenv("SIM2REAL_TRACKING", "off")
    assert end_pipeline_run(params) is None
    assert not (store / "mlflow.db").exists()
    monkeypatch.setenv("SIM2REAL_TRACKING", "on")
    assert end_pipeline_run(params) is None


def test_failed_stage_marks_its_run_and_the_parent_failed(store, default_raw):
    params = parse_params(default_raw)
    with pytest.raises(RuntimeError):
        with stage_run("translate", params) as t:
            raise RuntimeError("boom")
    client = _client(store)
    assert client.get_run(t.run_id).info.status == "FAILED"
    assert client.get_run(t.parent_run_id).info.status == "FAILED"


def test_rerun_sets_a_terminated_parent_back_to_running(store, default_raw):
    """A rerun with the same pipeline key reuses the parent; its status follows the last execution."""
    from pipeline.tracking import end_pipeline_run

    params = parse_params(default_raw)
    client = _client(store)
    with pytest.raises(RuntimeError):
        with stage_run("prepare", params) as failed:
            raise RuntimeError("boom")
    with stage_run("prepare", params) as t:
        assert t.parent_run_id == failed.parent_run_id
        assert client.get_run(t.parent_run_id).info.status == "RUNNING"
    end_pipeline_run(params)
    with stage_run("report", params):
        assert client.get_run(t.parent_run_id).info.status == "RUNNING"
    end_pipeline_run(params)
    assert client.get_run(t.parent_run_id).info.status == "FINISHED"


def test_runs_carry_source_user_and_commit_tags(store, default_raw, monkeypatch):
    """The UI's "Source" and "User" columns read these standard tags."""
    import getpass

    from pipeline import tracking

    monkeypatch.setattr(tracking, "git_commit", lambda root=None: "0123abc-dirty")
    with stage_run("prepare", parse_params(default_raw)) as t:
        pass
    client = _client(store)
    for run in (client.get_run(t.run_id), client.get_run(t.parent_run_id)):
        tags = run.data.tags
        assert tags["mlflow.source.name"] == tracking.entry_point()
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == "0123abc" and tags["git_commit"] == "0123abc-dirty"
        assert tags["mlflow.user"] == getpass.getuser() == run.info.user_id


def test_entry_point_names_the_stage_module(monkeypatch):
    import importlib.machinery
    import sys
    import types

    from pipeline.tracking import entry_point

    main = types.ModuleType("__main__")
    main.__spec__ = importlib.machinery.ModuleSpec("stages.train_task", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert entry_point() == "stages.train_task"
    main.__spec__ = None
    monkeypatch.setattr(sys, "argv", ["/somewhere/script.py", "--x"])
    assert entry_point() == "/somewhere/script.py"


def _write_folder(root, files):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_folder_digest_sees_names_and_bytes_in_any_creation_order(tmp_path):
    from pipeline.tracking import folder_digest

    a = _write_folder(tmp_path / "a", {"0/x.png": b"one", "1/y.png": b"two"})
    b = _write_folder(tmp_path / "b", {"1/y.png": b"two", "0/x.png": b"one"})
    renamed = _write_folder(tmp_path / "c", {"0/z.png": b"one", "1/y.png": b"two"})
    changed = _write_folder(tmp_path / "d", {"0/x.png": b"one", "1/y.png": b"2"})
    assert folder_digest(a) == folder_digest(b)
    assert len({folder_digest(a), folder_digest(renamed), folder_digest(changed)}) == 3
    with pytest.raises(FileNotFoundError):
        folder_digest(tmp_path / "missing")


def test_log_dataset_shows_as_a_run_input(store, default_raw):
    """The UI's "Datasets" column: name, content digest and context of each input folder."""
    from pipeline.tracking import folder_digest

    folder = _write_folder(store / "data" / "prepared" / "source" / "train", {"0/a.png": b"x", "manifest.csv": b"y"})
    with stage_run("train_task", parse_params(default_raw), variant="dann") as t:
        t.log_dataset(folder, context="train")
        t.log_dataset(folder, name="custom", digest="feedbeef", context="validation")
    inputs = _client(store).get_run(t.run_id).inputs.dataset_inputs
    by_name = {i.dataset.name: i for i in inputs}
    train = by_name["data/prepared/source/train"]
    assert train.dataset.digest == folder_digest(folder) and train.dataset.source_type == "local"
    assert str(folder) in train.dataset.source
    assert {(tag.key, tag.value) for tag in train.tags} == {("mlflow.data.context", "train")}
    assert by_name["custom"].dataset.digest == "feedbeef"
    assert [tag.value for tag in by_name["custom"].tags] == ["validation"]


def test_finished_pipeline_registers_its_generator_and_task_models(store, default_raw):
    """The generator (a plain nn.Module) logs like a task model; the report registers both under
    stable names once, and the registered generator loads back with the same outputs."""
    import mlflow.pytorch
    import torch

    from pipeline.gan.networks import ResnetGenerator
    from pipeline.task.models import build_task_model

    params = parse_params(default_raw)
    generator = ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=1).eval()
    with stage_run("train_gan", params) as t:
        t.log_model(generator, "generator")
    with stage_run("train_task", params, variant="dann") as t:
        t.log_model(build_task_model("small_cnn", 1, 10, width=4), "task_dann")
    with stage_run("report", params) as t:
        versions = t.register_pipeline_models()
        again = t.register_pipeline_models()
    assert versions == again == {"sim2real-test-exp-generator": "1", "sim2real-test-exp-dann": "1"}

    loaded = mlflow.pytorch.load_model("models:/sim2real-test-exp-generator/1").eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), generator(x))
    version = _client(store).get_model_version("sim2real-test-exp-dann", "1")
    assert version.tags["variant"] == "dann" and version.tags["sim2real.pipeline_key"] == "dvc-exp:exp-one"


def test_registered_model_names_are_stable_and_valid():
    from pipeline.tracking import registered_model_name

    assert registered_model_name("sim2real-digits", "dann") == "sim2real-digits-dann"
    assert registered_model_name("test-exp", "generator") == "sim2real-test-exp-generator"
    assert registered_model_name("team/exp", "a:b") == "sim2real-team_exp-a_b"


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
    import logging

    import mlflow.pytorch
    import torch

    from pipeline.task.models import build_task_model

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("mlflow.pytorch").addHandler(handler)
    model = build_task_model("small_cnn", 1, 10, width=4).eval()
    try:
        with stage_run("train_task", parse_params(default_raw), variant="source_only") as t:
            uri = t.log_model(model, "task_source_only")
    finally:
        logging.getLogger("mlflow.pytorch").removeHandler(handler)
    # the pickle format is chosen on purpose: mlflow's long warning about it is not printed per model
    assert not any("Pickle or CloudPickle" in m for m in seen), seen
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


def test_default_store_is_the_workspace_one_inside_a_dvc_temp_experiment(tmp_path, monkeypatch):
    """``dvc exp run --temp``/``--queue`` run stages in a copy under .dvc/tmp/exps and set DVC_ROOT to
    the workspace: runs must land in the workspace's store, not in the copy DVC deletes."""
    from pipeline.tracking import tracking_uri

    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking_uri() == f"sqlite:///{copy / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert tracking_uri() == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
