"""A tiny full ``dvc repro`` of every stage in a temporary git repository, then what a user does next:
import the package (bytecode), rerun a stage, change one variant's params, read metrics and plots."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import dvc_env, make_project_copy, tiny_budget

DVC = str(Path(sys.executable).parent / "dvc")

TINY = {
    "data": {"image_size": 16, "render": {"train_count": 60, "val_count": 30}},
    "gan": {"generator": {"width": 4, "blocks": 1}, "discriminator": {"width": 4, "layers": 2},
            "batch_size": 4, "epochs": 1, "decay_epochs": 1, "steps_per_epoch": 2, "pool_size": 4,
            "diagnostics_samples": 24},
    "task": {"width": 4, "steps": 4, "eval_every": 2, "batch_size": 32},
}


def _bytecode_env() -> dict:
    """dvc_env() as an ordinary shell has it: Python writes ``__pycache__`` (this machine's CI image
    sets PYTHONDONTWRITEBYTECODE, which hid bytecode from the stages' dependencies)."""
    env = dvc_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *args], cwd=repo, env=_bytecode_env(), capture_output=True, text=True)


@pytest.mark.slow
def test_tiny_dvc_repro_of_all_stages(tmp_path, default_raw):
    repo = make_project_copy(tmp_path / "repo", tiny_budget(default_raw, TINY))
    run = _dvc(repo, "repro")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for stage in ("prepare", "train_task@source_only", "train_gan", "translate", "train_task@translated",
                  "train_task@dann", "train_task@target_oracle", "evaluate@translated", "report"):
        assert f"Running stage '{stage}'" in run.stdout
    # report ran last, after every evaluate stage
    assert run.stdout.rindex("Running stage 'report'") > max(
        run.stdout.rindex(f"Running stage 'evaluate@{v}'") for v in default_raw["variants"])

    summary = json.loads((repo / "reports/summary.json").read_text())
    pick = summary.pop("pick")                  # the variant to choose without real labels
    assert set(summary) >= set(default_raw["variants"])
    for row in summary.values():
        assert 0.0 <= row["accuracy"] <= 1.0
    assert pick["variant"] is None or pick["variant"] in summary
    assert summary["source_only"]["gap_closed"] == 0.0 and summary["target_oracle"]["gap_closed"] == 1.0
    assert (repo / "models/gan/generator.pt").exists() and (repo / "reports/summary.png").exists()
    assert len((repo / "data/translated/source/train/manifest.csv").read_text().splitlines()) == 61

    again = _dvc(repo, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]

    # Importing the package writes bytecode next to the sources: not a change DVC may see.
    subprocess.run([sys.executable, "-c", "import stages.train_task, stages.train_gan, pipeline.report"],
                   cwd=repo, env=_bytecode_env(), check=True)
    assert list((repo / "pipeline").rglob("*.pyc"))
    status = _dvc(repo, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout

    # Outputs that feed other stages are a function of their inputs: rerunning source_only (same
    # params, same code) leaves train_gan, which reads its model, up to date.
    forced = _dvc(repo, "repro", "--force", "--single-item", "train_task@source_only")
    assert forced.returncode == 0 and "Running stage 'train_task@source_only'" in forced.stdout, forced.stderr[-2000:]
    status = _dvc(repo, "status")
    assert "up to date" in status.stdout, status.stdout

    # A variant's own params make only its stages (and the report) stale.
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["variants"]["dann"].setdefault("params", {})["trade_off"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    stale = {line.rstrip(":").strip() for line in _dvc(repo, "status").stdout.splitlines()
             if line and not line.startswith(("\t", " "))}
    assert stale == {"train_task@dann", "evaluate@dann", "report"}, stale

    # `dvc metrics show` lists the headline file only: accuracy and gap closed per variant and the pick,
    # one row readable in a terminal.
    metrics = _dvc(repo, "metrics", "show", "--json")
    assert metrics.returncode == 0, metrics.stderr
    files = json.loads(metrics.stdout)[""]["data"]
    assert list(files) == ["reports/headline.json"], list(files)
    values = files["reports/headline.json"]["data"]
    assert set(values) == {"pick", *default_raw["variants"]} and values["pick"] == (pick["variant"] or "none")
    assert all(set(values[v]) == {"accuracy", "gap_closed"} for v in default_raw["variants"])
    table = _dvc(repo, "metrics", "show")
    assert table.returncode == 0 and max(map(len, table.stdout.splitlines())) < 500, table.stdout
    # The README's line that compares experiments runs as written and prints a narrow table.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(l for l in readme.splitlines() if l.startswith("dvc exp show --drop"))
    shown = subprocess.run(line.split("#")[0], shell=True, cwd=repo, env=_bytecode_env(), capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    header = shown.stdout.splitlines()[0]
    assert "source_only.accuracy" in header and "seed" in header and "gan." not in header, header
    # Every plot is declared with its axes, and the images are plots too (shown offline).
    plots = _dvc(repo, "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr[-2000:]
    shown = json.loads(plots.stdout)["data"]
    for name in ("reports/curves.png", "reports/summary.png", "reports/scores.csv", "gan_losses",
                 "reports/train/dann/history.csv"):
        assert any(name in key for key in shown), (name, list(shown))
