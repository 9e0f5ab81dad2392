"""Each dvc.yaml stage depends on exactly the project code it can import: no more, no less.

The closure is computed statically from ``stages/<stage>.py`` over every ``import pipeline...`` /
``from pipeline... import`` anywhere in a module (function-level lazy imports included), so a stage
that starts importing a module its dvc.yaml entry does not list fails here, before a user sees a
stale output that DVC thought was up to date.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGES = ("pipeline", "stages")


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _imported_names(file: Path) -> set[str]:
    """Project module names a file imports, with their parent packages (Python runs those too)."""
    names: set[str] = set()
    package = ".".join(file.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found = [base] + [f"{base}.{alias.name}" for alias in node.names]   # `from pkg import module`
        else:
            continue
        for name in found:
            parts = name.split(".")
            if parts[0] in PACKAGES:
                names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


DISCOVERED = {REPO / "pipeline" / "methods" / "registry.py": REPO / "pipeline" / "methods"}   # imports its folder


def import_closure(entry: Path) -> set[Path]:
    """Every project source file that running ``entry`` can load (a registry that discovers the modules
    of its folder, :data:`DISCOVERED`, loads every one of them)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        todo.extend(f for f in map(_module_file, _imported_names(file)) if f is not None)
        if file in DISCOVERED:
            todo.extend(sorted(DISCOVERED[file].glob("*.py")))
    return seen


# A stage that calls a task kind's hook named "module:function" (imported on use) loads that module of
# every kind: pipeline/task/kind.py (prepare_with, report_with).
HOOKS = {"prepare": "prepare_with", "report": "report_with"}


def stage_closure(stage: str) -> set[Path]:
    """:func:`import_closure` of ``stages/<stage>.py`` plus the modules its kind hook names."""
    closure = import_closure(REPO / "stages" / f"{stage}.py")
    if stage in HOOKS:
        from pipeline.task.kinds import KINDS

        for kind in KINDS.values():
            module = getattr(kind, HOOKS[stage]).partition(":")[0]
            closure |= import_closure(_module_file(module))
    return closure


def _stages() -> dict[str, list[str]]:
    """``{stage: [code deps]}`` from dvc.yaml (templated and data deps left out)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        body = stage.get("do", stage)
        deps = [d for d in body.get("deps", []) if "${" not in d and d.split("/")[0] in PACKAGES]
        out[name] = deps
    return out


def _covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(REPO)
    return any(rel == Path(d) or rel.is_relative_to(d) for d in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_lists_every_module_it_imports(stage):
    deps = _stages()[stage]
    closure = stage_closure(stage)
    missing = sorted(str(f.relative_to(REPO)) for f in closure if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports but does not depend on: {missing}"


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_stage_lists_no_code_it_cannot_import(stage):
    deps = _stages()[stage]
    closure = stage_closure(stage)
    unused = [d for d in deps if not any(_covered(f, [d]) for f in closure)]
    assert not unused, f"dvc.yaml stage {stage!r} depends on code it never imports: {unused}"


def test_closure_sees_function_level_imports(tmp_path):
    # The static walk must follow lazy imports inside functions (the runtime module list would not).
    closure = {str(f.relative_to(REPO)) for f in import_closure(REPO / "stages" / "train_task.py")}
    assert "pipeline/task/export.py" in closure or "pipeline/task/train.py" in closure
    assert "stages/train_task.py" in closure and "pipeline/__init__.py" in closure


def test_bytecode_is_not_a_dependency():
    ignored = (REPO / ".dvcignore").read_text().split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored


def test_no_listed_dependency_is_an_empty_file():
    # DVC prints "WARNING: '<file>' is empty." for each such dependency at every run.
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    files = {d for stage in spec.values() for d in stage.get("do", stage).get("deps", [])
             if "${" not in d and (REPO / d).is_file()}
    assert files and not [f for f in sorted(files) if (REPO / f).stat().st_size == 0]


def test_every_shipped_model_is_a_declared_artifact():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    variants = yaml.safe_load((REPO / "params.yaml").read_text())["variants"]
    artifacts = spec["artifacts"]
    paths = {a["path"] for a in artifacts.values()}
    assert {f"models/task/{v}/model.pt" for v in variants} | {"models/gan/generator.pt"} == paths
    assert all(a["type"] == "model" and a["desc"] for a in artifacts.values())
    # DVC's rule for artifact names (dvc/annotations.py): lowercase letters, digits, dashes, slashes
    import re
    assert all(re.fullmatch(r"[a-z0-9]([a-z0-9-/]*[a-z0-9])?", name) for name in artifacts), list(artifacts)
    outs = {out if isinstance(out, str) else next(iter(out)) for stage in spec["stages"].values()
            for out in stage.get("do", stage).get("outs", [])}
    assert {"models/task/${key}", "models/gan"} <= outs       # each artifact lies in a stage's output
