"""Tracking writes one parent run per pipeline execution and one child run per stage."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import parse_params
from pipeline.gan.networks import ResnetGenerator
from pipeline.task.mlflow_model import ModelInputError
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
    assert all(k.startswith(("variant.", "effective.")) for k in child.data.params)
    assert child.data.params["effective.steps"] == "1000" and child.data.params["effective.budget"] in ("1", "1.0")
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
    """The generator logs from its exported file like a task model; the report registers both under
    stable names once, and the registered generator loads back with the same outputs."""
    import mlflow.pyfunc
    import torch

    from pipeline.gan.export import export_generator, load_generator
    from pipeline.task.mlflow_model import generator_spec, task_model_spec

    params = parse_params(default_raw)
    export_generator(store / "generator.pt", ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=1),
                     {"image_size": 16, "channels": 1, "classes": ["a", "b"]})
    path, meta = _exported_classifier(store)
    with stage_run("train_gan", params) as t:
        t.log_model(generator_spec(store / "generator.pt"), "generator")
    with stage_run("train_task", params, variant="dann") as t:
        t.log_model(task_model_spec(path, meta), "task_dann")
    with stage_run("report", params) as t:
        versions = t.register_pipeline_models()
        again = t.register_pipeline_models()
    assert versions == again == {"sim2real-test-exp-generator": "1", "sim2real-test-exp-dann": "1"}

    loaded = mlflow.pyfunc.load_model("models:/sim2real-test-exp-generator/1")
    x = _batch(3, 1, 16)
    translated = loaded.predict(x)
    generator = load_generator(store / "generator.pt")[0]
    with torch.no_grad():
        assert np.array_equal(translated, generator(torch.from_numpy(x)).numpy()) and translated.shape == (3, 1, 16, 16)
    _assert_no_pickled_code(_model_dir("models:/sim2real-test-exp-generator/1"))
    with pytest.raises(ModelInputError, match=r"got values in \[0, 255\]"):
        loaded.predict(((x + 1) * 127.5).astype(np.float32))
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


def test_logged_model_holds_no_pickle_and_predicts_like_the_export(store, default_raw):
    """The logged model is the exported weights file + the pyfunc loader's code: nothing pickled,
    pinned requirements, a signature and an input example in [-1, 1], same logits as the export."""
    import json
    import types

    import mlflow
    import mlflow.pyfunc
    import torch
    import torchvision

    from pipeline.task.export import load_task_model
    from pipeline.task.train import export_task_model

    model, meta = load_task_model(_exported_classifier(store / "trained", num_classes=3)[0])
    with stage_run("train_task", parse_params(default_raw), variant="dann") as t:
        path = export_task_model(types.SimpleNamespace(model=model, meta=meta), store / "export", t)
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    [logged] = mlflow.search_logged_models(filter_string=f"source_run_id = '{t.run_id}'", output_format="list")
    assert logged.name == "task_dann"
    uri = logged.model_uri
    folder = _model_dir(uri)
    _assert_no_pickled_code(folder)
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert f"torchvision=={torchvision.__version__.split('+')[0]}" in requirements
    assert any(r.startswith("sim2real==") for r in requirements) and all("==" in r for r in requirements)

    loaded = mlflow.pyfunc.load_model(uri)
    assert loaded.metadata.get_input_schema().inputs[0].shape == (-1, 1, 16, 16)
    assert loaded.metadata.get_output_schema().inputs[0].shape == (-1, 3)
    example = np.asarray(json.loads((folder / "input_example.json").read_text()), dtype=np.float32)
    assert example.shape[1:] == (1, 16, 16) and -1 <= example.min() and example.max() <= 1

    x = _batch(5, 1, 16)
    with torch.no_grad():
        assert np.array_equal(loaded.predict(x), load_task_model(path)[0](torch.from_numpy(x)).numpy())


def test_logged_model_refuses_a_wrong_shape_or_value_range(store, default_raw):
    """A batch of another shape, dtype or range is an error, never logits: MLflow's signature check
    refuses shape and dtype, the loader the range (uint8 pixels as floats, NaN)."""
    import mlflow.exceptions
    import mlflow.pyfunc

    from pipeline.task.mlflow_model import task_model_spec

    path, meta = _exported_classifier(store)
    with stage_run("train_task", parse_params(default_raw), variant="source_only") as t:
        loaded = mlflow.pyfunc.load_model(t.log_model(task_model_spec(path, meta), "task_source_only"))
    x = _batch(2, 1, 16)
    refused = {"channels": np.repeat(x, 3, axis=1), "size": x[:, :, :8, :8], "ndim": x[0],
               "dtype": x.astype(np.float64)}
    for batch in refused.values():
        with pytest.raises(mlflow.exceptions.MlflowException, match="(Shape|dtype) of input"):
            loaded.predict(batch)
    with pytest.raises(ModelInputError, match=r"in \[-1, 1\].*got values in \[0, 255\]"):
        loaded.predict(((x + 1) * 127.5).astype(np.float32))
    with pytest.raises(ModelInputError, match="got values in .*1.5"):
        loaded.predict(x * 1.5)
    with pytest.raises(ModelInputError, match="NaN"):
        loaded.predict(np.full_like(x, np.nan))


def test_detection_model_logs_and_predicts_a_table_of_detections(store, default_raw):
    """A detector (task.kind detection) logs the same way; its pyfunc gives one row per detection,
    equal to what pipeline.detection.models.predict gives for the exported model."""
    import mlflow.pyfunc
    import torch

    from pipeline.config import DetectorParams
    from pipeline.detection.models import build_detector, predict
    from pipeline.task.export import load_task_model, save_task_model
    from pipeline.task.mlflow_model import DETECTION_COLUMNS, task_model_spec

    torch.manual_seed(0)
    model = build_detector(DetectorParams(width=4, score_threshold=0.0), 1, 2, 32)
    model.sim2real_config = {**model.sim2real_config, "kind": "detection"}
    meta = {"kind": "detection", "classes": ["a", "b"], "image_size": 32, "channels": 1, "variant": "dann"}
    save_task_model(store / "model.pt", model, meta)
    with stage_run("train_task", parse_params(default_raw), variant="dann") as t:
        uri = t.log_model(task_model_spec(store / "model.pt", meta), "task_dann")
    _assert_no_pickled_code(_model_dir(uri))
    loaded = mlflow.pyfunc.load_model(uri)
    assert [c.name for c in loaded.metadata.get_output_schema().inputs] == [n for n, _ in DETECTION_COLUMNS]

    x = _batch(2, 1, 32)
    table = loaded.predict(x)
    expected = predict(load_task_model(store / "model.pt")[0], torch.from_numpy(x))
    assert len(table) == sum(len(d["scores"]) for d in expected) > 0
    for i, found in enumerate(expected):
        rows = table[table["image"] == i]
        assert np.allclose(rows[["x1", "y1", "x2", "y2"]].to_numpy(), found["boxes"].numpy())
        assert np.allclose(rows["score"].to_numpy(), found["scores"].numpy())
        assert rows["label"].tolist() == found["labels"].tolist()
        assert rows["class"].tolist() == [meta["classes"][k] for k in found["labels"].tolist()]
    with pytest.raises(ModelInputError, match=r"got values in \[0, 255\]"):
        loaded.predict(((x + 1) * 127.5).astype(np.float32))


def _exported_classifier(folder, num_classes: int = 2, size: int = 16):
    """``(path, meta)`` of an untrained small_cnn exported to ``<folder>/model.pt`` as train_task does."""
    import torch

    from pipeline.task.export import save_task_model
    from pipeline.task.models import build_task_model

    torch.manual_seed(0)
    model = build_task_model("small_cnn", 1, num_classes, width=4).eval()
    meta = {"kind": "classification", "classes": [f"c{i}" for i in range(num_classes)], "image_size": size,
            "channels": 1, "variant": "dann", "method": "dann", "uses_target_labels": False}
    save_task_model(folder / "model.pt", model, meta)
    return folder / "model.pt", meta


def _batch(n: int, channels: int, size: int) -> np.ndarray:
    """``n`` float32 images in [-1, 1], as pipeline.data.manifest.to_tensor makes them from pixels; the
    ends of the range included (pixels 0 and 255)."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(n, channels, size, size))
    pixels.reshape(-1)[:2] = (0, 255)
    return (pixels / 127.5 - 1).astype(np.float32)


def _model_dir(uri: str) -> Path:
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(uri))


def _assert_no_pickled_code(folder: Path) -> None:
    """No pickle file (python_model.pkl, mlflow.pytorch's data/model.pth), only the pyfunc flavour with
    its loader as code, and every torch file loads with ``weights_only=True``."""
    import torch
    import yaml

    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".pth"))], names
    assert "python_model.pkl" not in names and "data/model.pth" not in names and "mlflow_pyfunc.py" in names
    torch_files = [folder / n for n in names if n.endswith(".pt")]
    assert torch_files and all(isinstance(torch.load(f, weights_only=True), dict) for f in torch_files)
    flavors = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
    assert set(flavors) == {"python_function"}
    assert flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"


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


def test_store_lock_is_one_per_store(tmp_path, monkeypatch):
    """Stages logging to different servers never wait for each other's lock; the same store still locks."""
    import tempfile
    import threading

    from pipeline.tracking import _store_lock, store_lock_path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    one, two = "http://127.0.0.1:5001", "http://127.0.0.1:5002"
    assert store_lock_path(one) != store_lock_path(two) and store_lock_path(one) == store_lock_path(one + "/")
    assert store_lock_path(one).parent == tmp_path
    assert store_lock_path(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}") == tmp_path / "a" / "mlflow.lock"

    def hold(uri: str, got: threading.Event) -> None:
        with _store_lock(uri):
            got.set()

    with _store_lock(one):
        other, same = threading.Event(), threading.Event()
        for uri, got in ((two, other), (one, same)):
            threading.Thread(target=hold, args=(uri, got), daemon=True).start()
        assert other.wait(10), "the lock of another store waited for this one"
        assert not same.wait(0.5), "the same store was not locked"
    assert same.wait(10)


def _report_inputs(root: Path, scores: dict[str, float] | None) -> tuple[Path, Path]:
    """``(eval dir, train dir)`` for source_only and dann; ``scores``: each variant's label-free IM (the
    pick is the highest), None: no label-free scores, so no pick."""
    from pipeline.io import write_json

    for variant in ("source_only", "dann"):
        write_json(root / "eval" / variant / "metrics.json",
                   {"accuracy": 0.6, "macro_f1": 0.55, "uses_target_labels": False})
        train = {"variant": variant, "selected_epoch": 1}
        if scores is not None:
            train["label_free"] = {"source_val_acc": 0.9, "target_entropy": 0.3, "target_im": scores[variant],
                                   "target_snd": 4.0, "target_class_share_max": 0.5}
        write_json(root / "train" / variant / "metrics.json", train)
    return root / "eval", root / "train"


def test_report_gives_the_champion_alias_to_the_picks_version_only(store):
    """The report's pick carries the registry alias ``champion``; a new pick takes it over, and
    without a pick no version keeps a stale one."""
    import mlflow.pyfunc
    import yaml

    from pipeline.config import load_params
    from pipeline.task.mlflow_model import task_model_spec
    from stages import report
    from tinydata import tiny_prepared, tiny_task_raw

    (store / "params.yaml").write_text(yaml.safe_dump(tiny_task_raw(store, tiny_prepared(store, n=4))))
    params = load_params(store / "params.yaml")
    for variant in ("source_only", "dann"):
        path, meta = _exported_classifier(store / variant)
        with stage_run("train_task", params, variant=variant) as t:
            t.log_model(task_model_spec(path, meta), f"task_{variant}")
    client, names = _client(store), {v: f"sim2real-test-exp-{v}" for v in ("source_only", "dann")}

    def champions(scores):
        eval_dir, train_dir = _report_inputs(store / "reports", scores)
        report.main(["--params", "params.yaml", "--eval", str(eval_dir), "--train", str(train_dir),
                     "--out", str(store / "out")])
        aliases = {v: client.get_registered_model(name).aliases for v, name in names.items()}
        return {v: str(found["champion"]) if "champion" in found else None for v, found in aliases.items()}

    assert champions({"source_only": 0.9, "dann": 0.4}) == {"source_only": "1", "dann": None}
    assert champions({"source_only": 0.4, "dann": 0.9}) == {"source_only": None, "dann": "1"}
    assert client.get_model_version_by_alias(names["dann"], "champion").tags["variant"] == "dann"
    assert mlflow.pyfunc.load_model(f"models:/{names['dann']}@champion").predict(_batch(3, 1, 16)).shape == (3, 2)
    assert champions(None) == {"source_only": None, "dann": None}
