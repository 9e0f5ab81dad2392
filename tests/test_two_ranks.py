"""Two CPU ranks (gloo) under ``torchrun --standalone --nproc_per_node 2``, as the README claims.

One torchrun call runs ``tests/two_ranks_driver.py``, which trains on tiny data, in order: the GAN
(``stages.train_gan``), the GAN with adversarial, cycle and identity weights 0 (F's parameters then
get no gradient, which DDP must not trip over) and a DANN task model (``stages.train_task``).
Each rank works in its own empty folder with MLflow tracking on; the test then checks that both
ranks ended with bit-identical weights and that only rank 0 wrote files and MLflow runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import deep_update
from pipeline.config import parse_params
from pipeline.gan.export import load_generator
from pipeline.gan.cycle_gan import Networks
from pipeline.reproducibility import seed_everything
from pipeline.task.export import load_task_model, save_task_model
from pipeline.task.models import build_task_model
from test_gan_training import TINY_GAN
from tinydata import CLASSES, SIZE, tiny_prepared, tiny_task_raw

DRIVER = Path(__file__).with_name("two_ranks_driver.py")
REPO = Path(__file__).resolve().parents[1]
# 2 epochs (1 + 1 decay) of 2 steps; a global batch of 4 is 2 images per rank
GAN = deep_update(TINY_GAN, {"epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2, "batch_size": 4})
ZERO_WEIGHTS = {"adversarial": 0.0, "cycle": 0.0, "identity": 0.0}  # F: no generator-step gradient
GAN_OUTPUTS = ("models/{job}/generator.pt", "models/{job}/provenance.json", "reports/{job}/history.csv",
               "reports/{job}/metrics.json", "reports/{job}/samples.png", "checkpoints/{job}/last.pt")
DANN_OUTPUTS = ("models/dann/dann/model.pt", "models/dann/dann/provenance.json", "reports/dann/dann/history.csv",
                "reports/dann/dann/metrics.json", "checkpoints/dann/dann/last.pt")


def prepare(tmp: Path) -> None:
    """Tiny data, a frozen 2-class source-only task model and one params file per driver job."""
    prepared = tiny_prepared(tmp, n=32)
    task = build_task_model("small_cnn", 1, len(CLASSES), width=4)
    save_task_model(tmp / "task_model.pt", task.eval(),
                    {"classes": list(CLASSES), "channels": 1, "image_size": SIZE})
    # a global batch of 8 (4 per rank), 2 rounds of 2 steps; "last" exports the final weights
    raw = tiny_task_raw(tmp, prepared, steps=4, eval_every=2, select="last")
    for job, gan in {"gan": GAN, "gan_zero": deep_update(GAN, {"weights": ZERO_WEIGHTS}), "dann": GAN}.items():
        (tmp / f"params-{job}.yaml").write_text(yaml.safe_dump({**raw, "gan": gan}, sort_keys=False))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_two_cpu_ranks_train_identically_and_only_rank0_writes(tmp_path):
    prepare(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIM2REAL_TRACKING": "on", "NO_ALBUMENTATIONS_UPDATE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_EXPERIMENT_NAME": "two-ranks",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("DVC_EXP_NAME", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(DRIVER), str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks (a hung collective)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{output[-6000:]}")
    assert proc.returncode == 0, output[-8000:]

    # 1. Bit-identical weights on both ranks: the four GAN networks (both configurations), the DANN
    #    task model and its domain discriminator (BatchNorm buffers included).
    ranks = [torch.load(tmp_path / f"weights-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert set(ranks[0]["gan"]) == set(ranks[0]["gan_zero"]) == {"G", "F", "D_real", "D_source"}
    assert set(ranks[0]["dann"]) == {"model", "discriminator"}
    for job, nets in ranks[0].items():
        for net, state in nets.items():
            other = ranks[1][job][net]
            assert state.keys() == other.keys() and state, f"{job}.{net}"
            for key, tensor in state.items():
                assert torch.equal(tensor, other[key]), f"{job}.{net}.{key} differs between the ranks"

    # 2. Only rank 0 wrote outputs, and they hold the weights the ranks trained.
    rank0, rank1 = tmp_path / "rank0", tmp_path / "rank1"
    assert files_under(rank1) == set()
    expected = {p.format(job=job) for job in ("gan", "gan_zero") for p in GAN_OUTPUTS} | set(DANN_OUTPUTS)
    assert expected <= files_under(rank0)
    for job in ("gan", "gan_zero"):
        generator = load_generator(rank0 / f"models/{job}/generator.pt")[0].state_dict()
        assert all(torch.equal(generator[k], v) for k, v in ranks[0][job]["G"].items()), job
    exported = load_task_model(rank0 / "models/dann/dann/model.pt")[0].state_dict()
    assert all(torch.equal(exported[k], v) for k, v in ranks[0]["dann"]["model"].items())
    # 3. The zero-weight GAN trained (no DDP error) and left F as initialised: it got no gradient.
    seed_everything(0)
    init_F = Networks.build(parse_params(yaml.safe_load((tmp_path / "params-gan_zero.yaml").read_text())).gan, 1).F
    assert all(torch.equal(init_F.state_dict()[k], v) for k, v in ranks[0]["gan_zero"]["F"].items())
    assert not all(torch.equal(init_F.state_dict()[k], v) for k, v in ranks[0]["gan"]["F"].items())

    # MLflow: one finished run per stage call, all logged by rank 0.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("two-ranks").experiment_id
    runs = [run for run in client.search_runs([experiment]) if "stage" in run.data.tags]  # not the parent
    stages = sorted(run.data.tags["stage"] for run in runs)
    assert stages == ["train_gan", "train_gan", "train_task"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert {run.data.tags.get("variant") for run in runs if run.data.tags["stage"] == "train_task"} == {"dann"}
