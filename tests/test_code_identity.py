"""A resumable checkpoint is keyed by all the code its stage imports, so a code change never resumes a stale state."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from pipeline.reproducibility import code_files

DIGEST = "from pipeline.reproducibility import code_digest; print(code_digest())"


def _python(cwd: Path, code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
                              "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip()


@pytest.mark.parametrize("stage", ["train_gan", "train_task"])
def test_every_project_module_a_training_stage_loads_is_hashed(stage):
    # Run the stage's imports and a full training call path's lazy imports in a fresh interpreter.
    loaded = json.loads(_python(REPO, (
        f"import json, sys, stages.{stage}, pipeline.task.export, pipeline.tracking, pipeline.provenance; "
        "print(json.dumps([m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)]))")))
    ours = {Path(f).resolve() for f in loaded
            if Path(f).resolve().is_relative_to(REPO / "pipeline") or Path(f).resolve().is_relative_to(REPO / "stages")}
    hashed = {p.resolve() for p in code_files()}
    assert ours and ours <= hashed, sorted(str(p) for p in ours - hashed)
    # Modules the old per-stage hash (pipeline/{gan|task,data}) missed are covered now.
    for rel in ("pipeline/config/schema.py", "pipeline/checkpoint.py", "pipeline/metrics/domain_gap.py",
                "pipeline/task/models.py", "pipeline/gan/networks.py", f"stages/{stage}.py"):
        assert (REPO / rel).resolve() in hashed, rel


def test_code_digest_changes_with_any_imported_file(tmp_path):
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    before = _python(tmp_path, DIGEST)
    assert _python(tmp_path, DIGEST) == before                   # stable
    seen = {before}
    for rel in ("pipeline/metrics/domain_gap.py", "pipeline/config/schema.py", "pipeline/checkpoint.py",
                "stages/train_gan.py"):
        with (tmp_path / rel).open("a") as fh:
            fh.write("\n# changed\n")
        digest = _python(tmp_path, DIGEST)
        assert digest not in seen, rel
        seen.add(digest)
