"""Two CPU ranks (gloo) under torchrun, as the README claims: one launcher, then two "nodes".

``tests/two_ranks_driver.py`` trains on tiny data, in order: the GAN (``stages.train_gan``), the GAN
with adversarial, cycle and identity weights 0 (F's parameters then get no gradient, which DDP must
not trip over) and a DANN task model (``stages.train_task``). Each rank works in its own empty folder
with MLflow tracking on; the tests check that both ranks ended with bit-identical weights and that
only (global) rank 0 wrote files and MLflow runs.

* one launcher: ``torchrun --standalone --nproc_per_node 2`` runs all three jobs (a module fixture,
  whose weights the second test compares with);
* two launchers on this machine as the two nodes of one job (``--nnodes 2 --nproc_per_node 1``, c10d
  rendezvous on a free localhost port) run the GAN and DANN jobs, and must end with the very weights
  of the one-launcher run: same global world size, seeds and data.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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
TIMEOUT = 600   # seconds for a whole torchrun run (each takes ~25 s on 2 CPU cores), then all are killed


def prepare(tmp: Path) -> None:
    """Tiny data, a frozen 2-class source-only task model and one params file per driver job."""
    prepared = tiny_prepared(tmp, n=32)
    torch.manual_seed(0)   # the same task model in every test's folder (the two-node test compares weights)
    task = build_task_model("small_cnn", 1, len(CLASSES), width=4)
    save_task_model(tmp / "task_model.pt", task.eval(),
                    {"classes": list(CLASSES), "channels": 1, "image_size": SIZE})
    # a global batch of 8 (4 per rank), 2 rounds of 2 steps; "last" exports the final weights
    raw = tiny_task_raw(tmp, prepared, steps=4, eval_every=2, select="last")
    for job, gan in {"gan": GAN, "gan_zero": deep_update(GAN, {"weights": ZERO_WEIGHTS}), "dann": GAN}.items():
        (tmp / f"params-{job}.yaml").write_text(yaml.safe_dump({**raw, "gan": gan}, sort_keys=False))


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def torchrun_env(tmp: Path, experiment: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIM2REAL_TRACKING": "on", "NO_ALBUMENTATIONS_UPDATE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "MLFLOW_EXPERIMENT_NAME": experiment,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("DVC_EXP_NAME", None)
    return env


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (torchrun starts each worker in a session of its own, so
    killing the launcher's process group alone would leave its workers behind)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher's process group and every worker under it; only processes this test started."""
    for pid in _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_launchers(tmp: Path, env: dict[str, str], commands: list[list[str]], timeout: float = TIMEOUT) -> None:
    """Start every torchrun command at once (launcher ``i`` with ``TWO_RANKS_LAUNCHER=i``, its output
    in ``<tmp>/launcher<i>.log``) and wait until all exit 0. One that fails, or ``timeout`` seconds
    passing, kills them all (a hung rendezvous or collective never hangs the suite) and fails the
    test with the tail of each launcher's output."""
    procs, logs = [], [tmp / f"launcher{i}.log" for i in range(len(commands))]
    deadline, problem = time.monotonic() + timeout, None
    try:
        for i, (command, log) in enumerate(zip(commands, logs)):
            with log.open("w") as out:   # a file, not a pipe: nothing to drain, nothing to block on
                procs.append(subprocess.Popen(command, env={**env, "TWO_RANKS_LAUNCHER": str(i)}, cwd=tmp,
                                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        while problem is None and any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                problem = f"launcher {failed[0]} exited with {procs[failed[0]].returncode}"
            elif time.monotonic() > deadline:
                problem = f"timed out after {timeout:.0f} s"
            else:
                time.sleep(0.5)
        if problem is None and any(p.returncode for p in procs):
            problem = "exit codes " + ", ".join(str(p.returncode) for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
    if problem:
        tails = "\n".join(f"--- launcher {i} (exit {p.returncode}): {' '.join(commands[i][2:])}\n"
                          f"{log.read_text(errors='replace')[-6000:]}" for i, (p, log) in enumerate(zip(procs, logs)))
        pytest.fail(f"torchrun: {problem}\n{tails}")


def rank_weights(tmp: Path, jobs: tuple[str, ...]) -> dict:
    """Rank 0's weights, after checking rank 1's are bit-identical (BatchNorm buffers included): the
    four GAN networks of each GAN job, the DANN task model and its domain discriminator."""
    ranks = [torch.load(tmp / f"weights-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) == set(jobs)
    for job, nets in ranks[0].items():
        assert set(nets) == ({"model", "discriminator"} if job == "dann" else {"G", "F", "D_real", "D_source"}), job
        for net, state in nets.items():
            other = ranks[1][job][net]
            assert state.keys() == other.keys() and state, f"{job}.{net}"
            for key, tensor in state.items():
                assert torch.equal(tensor, other[key]), f"{job}.{net}.{key} differs between the ranks"
    return ranks[0]


def check_only_rank0_wrote(tmp: Path, weights: dict) -> None:
    """Rank 1's folder is empty; rank 0's holds every output, exported with the weights trained."""
    rank0, rank1 = tmp / "rank0", tmp / "rank1"
    assert files_under(rank1) == set()
    gan_jobs = [job for job in weights if job != "dann"]
    expected = {p.format(job=job) for job in gan_jobs for p in GAN_OUTPUTS} | set(DANN_OUTPUTS)
    assert expected <= files_under(rank0)
    for job in gan_jobs:
        generator = load_generator(rank0 / f"models/{job}/generator.pt")[0].state_dict()
        assert all(torch.equal(generator[k], v) for k, v in weights[job]["G"].items()), job
    exported = load_task_model(rank0 / "models/dann/dann/model.pt")[0].state_dict()
    assert all(torch.equal(exported[k], v) for k, v in weights["dann"]["model"].items())


def check_mlflow_runs(env: dict[str, str], stages: list[str]) -> None:
    """One finished run per stage call (rank 1 logs nothing: it would add runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"]).experiment_id
    runs = [run for run in client.search_runs([experiment]) if "stage" in run.data.tags]  # not the parent
    assert sorted(run.data.tags["stage"] for run in runs) == sorted(stages)
    assert all(run.info.status == "FINISHED" for run in runs)
    assert {run.data.tags.get("variant") for run in runs if run.data.tags["stage"] == "train_task"} == {"dann"}


def launches(tmp: Path) -> list[dict]:
    """What torchrun told global ranks 0 and 1 (see the driver)."""
    return [json.loads((tmp / f"launch-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_launcher(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """All three jobs under one ``torchrun --standalone --nproc_per_node 2``: (its folder, its env)."""
    tmp = tmp_path_factory.mktemp("one-launcher")
    prepare(tmp)
    env = torchrun_env(tmp, "two-ranks")
    run_launchers(tmp, env, [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              str(DRIVER), str(tmp)]])
    return tmp, env


@pytest.mark.slow
def test_two_cpu_ranks_train_identically_and_only_rank0_writes(one_launcher):
    tmp, env = one_launcher
    assert [(x["RANK"], x["LOCAL_RANK"], x["LOCAL_WORLD_SIZE"], x["WORLD_SIZE"]) for x in launches(tmp)] == \
        [(0, 0, 2, 2), (1, 1, 2, 2)]
    # 1. Bit-identical weights on both ranks; 2. only rank 0 wrote outputs, with the weights trained.
    weights = rank_weights(tmp, ("gan", "gan_zero", "dann"))
    check_only_rank0_wrote(tmp, weights)
    # 3. The zero-weight GAN trained (no DDP error) and left F as initialised: it got no gradient.
    seed_everything(0)
    init_F = Networks.build(parse_params(yaml.safe_load((tmp / "params-gan_zero.yaml").read_text())).gan, 1).F
    assert all(torch.equal(init_F.state_dict()[k], v) for k, v in weights["gan_zero"]["F"].items())
    assert not all(torch.equal(init_F.state_dict()[k], v) for k, v in weights["gan"]["F"].items())
    # MLflow: one finished run per stage call, all logged by rank 0.
    check_mlflow_runs(env, ["train_gan", "train_gan", "train_task"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_like_one_launcher(tmp_path, one_launcher):
    """Two torchrun launchers as two nodes of one job, as README's multi-node line: c10d rendezvous.

    ``--rdzv-endpoint 127.0.0.1:<free port>``: launcher 0 hosts the rendezvous store there
    (``is_host=1``; on real nodes torchrun infers it from the host name), launcher 1 connects to it.
    ``--local-addr 127.0.0.1``: the address each node is known by, and the one rank 0's node serves the
    process group's store on (torchrun would use the host's FQDN). ``join_timeout=120``: a launcher left
    alone gives up after 2 minutes rather than torchrun's 10 (``run_launchers`` kills both anyway
    at ``TIMEOUT``). The c10d rendezvous ignores ``--node_rank`` (it is for ``--rdzv-backend static``)
    and numbers the nodes itself: the driver's folders follow the global rank, whichever node has it.
    """
    prepare(tmp_path)
    env = torchrun_env(tmp_path, "two-nodes")
    endpoint, job = f"127.0.0.1:{free_port()}", f"two-nodes-{os.getpid()}"
    run_launchers(tmp_path, env, [
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", job, "--local-addr", "127.0.0.1",
         "--rdzv_conf", f"is_host={int(node == 0)},join_timeout=120", str(DRIVER), str(tmp_path), "gan", "dann"]
        for node in (0, 1)])

    # Two nodes of one process each: global ranks 0 and 1, one per launcher, each its node's rank.
    info = launches(tmp_path)
    assert [(x["RANK"], x["GROUP_RANK"], x["LOCAL_RANK"], x["LOCAL_WORLD_SIZE"], x["WORLD_SIZE"]) for x in info] == \
        [(0, 0, 0, 1, 2), (1, 1, 0, 1, 2)]
    assert sorted(x["launcher"] for x in info) == [0, 1]
    weights = rank_weights(tmp_path, ("gan", "dann"))
    check_only_rank0_wrote(tmp_path, weights)
    check_mlflow_runs(env, ["train_gan", "train_task"])

    # The very weights of one launcher running both ranks (same global world size, seeds and data).
    one = torch.load(one_launcher[0] / "weights-rank0.pt", weights_only=True)
    for job, nets in weights.items():
        for net, state in nets.items():
            assert state.keys() == one[job][net].keys(), f"{job}.{net}"
            for key, tensor in state.items():
                assert torch.equal(tensor, one[job][net][key]), f"{job}.{net}.{key}: two nodes != one launcher"
