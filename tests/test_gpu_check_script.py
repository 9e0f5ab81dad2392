"""bench/gpu_check.sh cleans up after itself: run with stub commands (nvidia-smi, python3, timeout, dvc,
git) that record their calls, it still runs every check, removes its scratch folder and writes nothing
into the interpreter's folder."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = "bench/gpu_check.sh"
OLD_SCRATCH = (Path("/tmp/site"), Path("/tmp/sim2real-repro"))   # where the script used to leave things

# python3 stub: records its call, and plays the parts of pip (--target gets bin/dvc and bin/mlflow), venv
# (a folder with bin/python3, this stub) and the one-line queries the script makes of the interpreter.
PYTHON3 = r"""#!/bin/bash
echo "python3 $*" >> "$STUB_LOG"
here=$(cd "$(dirname "$0")" && pwd)
case "$*" in
  *"-m pip install"*)
    while [ $# -gt 0 ]; do [ "$1" = --target ] && target=$2; shift; done
    mkdir -p "$target/bin" && touch "$target/bin/dvc" "$target/bin/mlflow" ;;
  *"-m venv"*)
    dir=${@: -1}; mkdir -p "$dir/bin" "$dir/lib/site-packages" && cp "$0" "$dir/bin/python3" ;;
  *sysconfig*) echo "$(dirname "$here")/lib/site-packages" ;;
  *getsitepackages*) echo "import site; site.addsitedir('/nowhere')" ;;
  *sys.executable*) echo "$here/python3" ;;
esac
exit 0
"""
# timeout stub: records what it would run and what python3 and its dvc are at that moment.
TIMEOUT = r"""#!/bin/bash
py=$(command -v python3)
dvc_beside=no; [ -e "$(dirname "$py")/dvc" ] && dvc_beside=yes
echo "timeout $* | python3=$py dvc-beside-python3=$dvc_beside" >> "$STUB_LOG"
exit 0
"""
RECORD = """#!/bin/bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
exit 0
"""


def _stub(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _snapshot(folder: Path) -> dict[str, tuple[bool, int, int]]:
    """Every entry under ``folder`` with whether it is a link, its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.is_symlink(), p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The files the script reads or copies, in a folder of their own, with a fake wheel folder."""
    repo = tmp_path / "repo"
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in (SCRIPT, "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc/config", ".dvcignore", ".gitignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    (repo / ".whl").mkdir()
    (repo / ".whl" / "dvc-0.0-py3-none-any.whl").write_bytes(b"")
    return repo


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_runs_every_check_and_leaves_nothing_behind(tmp_path, repo_copy):
    interpreter = tmp_path / "interpreter" / "bin"
    interpreter.mkdir(parents=True)
    _stub(interpreter, "python3", PYTHON3)
    _stub(interpreter, "timeout", TIMEOUT)
    for name in ("nvidia-smi", "dvc", "git"):
        _stub(interpreter, name, RECORD)
    before = _snapshot(interpreter)
    existed = {path: path.exists() for path in OLD_SCRATCH}
    scratch_root, out, log = tmp_path / "tmp", tmp_path / "out", tmp_path / "calls.log"
    scratch_root.mkdir()

    env = {"PATH": f"{interpreter}:/usr/bin:/bin", "TMPDIR": str(scratch_root), "OUT": str(out),
           "STUB_LOG": str(log), "HOME": str(tmp_path)}
    res = subprocess.run(["bash", SCRIPT], cwd=repo_copy, env=env, capture_output=True, text=True, timeout=120)

    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    calls = log.read_text().splitlines()
    # the same checks: the GPU, the bench (2 sizes x 4 settings, and --compile), the default dvc repro, the tests
    assert "nvidia-smi -L" in calls
    assert sum("bench/bench_gan.py --device cuda" in c for c in calls) == 9
    repro = [c for c in calls if c.startswith("timeout 300 dvc repro")]
    assert len(repro) == 1
    assert sum(c.startswith("timeout ") and "-m pytest" in c for c in calls) == 2
    # the wheels went to the scratch folder, and dvc was found beside the interpreter the tests ran under
    pip = next(c for c in calls if "-m pip install" in c)
    assert f"--target {scratch_root}/sim2real-gpu-check." in pip
    python_used = repro[0].split("python3=")[1].split()[0]
    assert python_used.startswith(f"{scratch_root}/sim2real-gpu-check.") and "dvc-beside-python3=yes" in repro[0]
    # the step-2 copy was made in the scratch folder, with gan.device set to cuda
    assert (out / "repro.log").exists() and "device: cuda" in (out / "repro.log").read_text()

    assert list(scratch_root.iterdir()) == [], "the scratch folder is left behind"
    assert _snapshot(interpreter) == before, "the interpreter's folder was changed"
    assert not Path(python_used).exists()
    assert {path: path.exists() for path in OLD_SCRATCH if not existed[path]} == \
        {path: False for path in OLD_SCRATCH if not existed[path]}
    assert sorted(p.name for p in repo_copy.iterdir()) == sorted(
        [".dvc", ".dvcignore", ".gitignore", ".whl", "bench", "dvc.yaml", "params.yaml", "pipeline", "pyproject.toml",
         "stages"])


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_removes_its_scratch_folder_when_it_fails_early(tmp_path, repo_copy):
    """pip failing stops the script at once: the scratch folder goes all the same."""
    interpreter = tmp_path / "interpreter" / "bin"
    interpreter.mkdir(parents=True)
    _stub(interpreter, "python3", "#!/bin/bash\nexit 1\n")
    scratch_root = tmp_path / "tmp"
    scratch_root.mkdir()
    res = subprocess.run(["bash", SCRIPT], cwd=repo_copy, capture_output=True, text=True, timeout=60,
                         env={"PATH": f"{interpreter}:/usr/bin:/bin", "TMPDIR": str(scratch_root),
                              "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)})
    assert res.returncode == 1
    assert list(scratch_root.iterdir()) == [] and os.listdir(interpreter) == ["python3"]
