"""Run by ``tests/test_two_ranks.py`` under ``torchrun``: one ``--standalone --nproc_per_node 2``
launcher, or two ``--nnodes 2 --nproc_per_node 1`` launchers that act as two nodes of one job.

``python tests/two_ranks_driver.py <tmp> [job ...]`` expects what the test prepared in ``<tmp>``:
``data/prepared``, ``task_model.pt`` (a frozen source-only task model) and one params file per job
(``params-<job>.yaml``). Each rank works in its own empty folder ``<tmp>/rank<r>`` (``r``: the global
rank, ``RANK``, whichever launcher started it) and runs the stages' ``main`` with absolute input
paths and relative output paths, so whatever a rank writes lands in its own folder. MLflow
tracking is whatever the environment says (the test turns it on).

Jobs, in order, each one stage call. All share one process group: a stage's ``main`` leaves it
(``shutdown``) when done, and a rank that joins a new group while another still works in the old
one (rank 0 logs to MLflow after training) can hang or fail; so here the stages' ``shutdown`` is
put off until all jobs ended.

* ``gan``       -- ``stages.train_gan`` with the test's tiny GAN params;
* ``gan_zero``  -- the same with adversarial, cycle and identity weights 0 (F gets no gradient);
* ``dann``      -- ``stages.train_task --variant dann``.

Each rank then saves the weights it ended with to ``<tmp>/weights-rank<r>.pt``:
``{"gan": {net: state}, "gan_zero": {net: state}, "dann": {"model": state, "discriminator": state}}``
(the jobs run), and what torchrun told it to ``<tmp>/launch-rank<r>.json``: ``RANK``, ``LOCAL_RANK``,
``GROUP_RANK`` (the node's rank), ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and ``launcher`` (the test's
``TWO_RANKS_LAUNCHER``: which launcher started this rank).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

JOBS = ("gan", "gan_zero", "dann")


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def run_gan(tmp: Path, job: str) -> dict[str, dict[str, torch.Tensor]]:
    import stages.train_gan as stage

    stage.shutdown = lambda runtime: None  # see the module docstring
    captured, stage_train_gan = {}, stage.train_gan

    def train_gan(*args, **kwargs):
        captured.update(stage_train_gan(*args, **kwargs))
        return captured

    stage.train_gan = train_gan
    try:
        stage.main(["--params", str(tmp / f"params-{job}.yaml"), "--prepared", str(tmp / "data" / "prepared"),
                    "--task-model", str(tmp / "task_model.pt"), "--models", f"models/{job}",
                    "--checkpoints", f"checkpoints/{job}", "--reports", f"reports/{job}"])
    finally:
        stage.train_gan = stage_train_gan
    return {name: state(net) for name, net in captured["networks"].items()}


def run_dann(tmp: Path, job: str) -> dict[str, dict[str, torch.Tensor]]:
    import stages.train_task as stage

    stage.shutdown = lambda runtime: None  # see the module docstring
    captured, stage_train = [], stage.train_task_model

    def train_task_model(*args, **kwargs):   # keeps the result (the stage only exports it)
        captured.append(stage_train(*args, **kwargs))
        return captured[-1]

    stage.train_task_model = train_task_model
    try:
        stage.main(["--variant", "dann", "--params", str(tmp / f"params-{job}.yaml"), "--models", f"models/{job}",
                    "--prepared", str(tmp / "data" / "prepared"), "--checkpoints", f"checkpoints/{job}",
                    "--reports", f"reports/{job}"])
    finally:
        stage.train_task_model = stage_train
    result = captured[-1]
    return {"model": state(result.model), "discriminator": state(result.modules["discriminator"])}


def main(tmp: Path, jobs: tuple[str, ...] = JOBS) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    work = tmp / f"rank{rank}"
    work.mkdir(exist_ok=True)
    os.chdir(work)
    runners = {"gan": run_gan, "gan_zero": run_gan, "dann": run_dann}
    weights = {job: runners[job](tmp, job) for job in jobs}
    torch.save(weights, tmp / f"weights-rank{rank}.pt")
    keys = ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")
    launch = {key: int(os.environ[key]) for key in keys}
    launch["launcher"] = int(os.environ.get("TWO_RANKS_LAUNCHER", "0"))
    (tmp / f"launch-rank{rank}.json").write_text(json.dumps(launch))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: pipeline, stages
    main(Path(sys.argv[1]).resolve(), tuple(sys.argv[2:]) or JOBS)
