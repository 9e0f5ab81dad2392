"""The architecture as docs/design.md describes it: no import cycles, no upward imports between layers,
and no module outside the task kinds that compares ``task.kind`` with a kind's name.

The import graph is read statically from the sources (every ``import`` statement, at module level or
inside a function: a function-level import still ties two modules together).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")

# Lowest layer first; a module may import its own layer and the ones before it. First match wins
# (patterns are module names or prefixes ending in a dot). docs/design.md shows the same table.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("pipeline", "pipeline.io", "pipeline.messages", "pipeline.guards", "pipeline.reproducibility",
                    "pipeline.cpu", "pipeline.selection", "pipeline.errors", "pipeline.typed", "pipeline.convert",
                    "pipeline.metrics.", "pipeline.metrics", "pipeline.gan.losses", "pipeline.gan.networks",
                    "pipeline.gan.pool", "pipeline.task", "pipeline.task.models", "pipeline.task.grl",
                    "pipeline.task.dann", "pipeline.task.clustering", "pipeline.task.batchnorm",
                    "pipeline.task.prototypes", "pipeline.detection", "pipeline.detection.draw", "pipeline.gan",
                    "pipeline.data", "pipeline.progress")),
    ("methods", ("pipeline.methods.", "pipeline.methods")),
    ("config", ("pipeline.config.", "pipeline.config")),
    ("infrastructure", ("pipeline.data.", "pipeline.checkpoint", "pipeline.distributed", "pipeline.provenance",
                        "pipeline.tracking", "pipeline.cli", "pipeline.detection.models", "pipeline.detection.evaluate",
                        "pipeline.detection.report", "pipeline.report", "pipeline.report_figures", "pipeline.gan.export",
                        "pipeline.gan.output_folder")),
    ("kinds", ("pipeline.task.kind", "pipeline.task.classification", "pipeline.detection.kind",
               "pipeline.task.kinds")),
    ("engines", ("pipeline.task.", "pipeline.gan.", "pipeline.ship", "pipeline.ship.")),
    ("stages", ("stages.", "stages")),
]
KIND_MODULES = {"pipeline/task/kind.py", "pipeline/task/kinds.py", "pipeline/task/classification.py",
                "pipeline/detection/kind.py"}
KIND_NAMES = r"[\"'](?:classification|detection)[\"']"
KIND_BRANCH = re.compile(
    rf"(?:==|!=)\s*{KIND_NAMES}|{KIND_NAMES}\s*(?:==|!=)"       # x == "detection", "detection" != x
    r"|(?:\.kind|\bkind\.name)\s*(?:==|!=|\bin\b|\bnot in\b)"   # task.kind == ..., kind.name in (...)
    rf"|\.get\(\s*[\"']kind[\"']\s*,\s*{KIND_NAMES}")           # meta.get("kind", "classification")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))
            if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``name`` imports (``from a import b`` counts ``a.b`` when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = sources()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(module == p or (p.endswith(".") and module.startswith(p)) for p in patterns):
            return rank
    raise AssertionError(f"{module}: in no layer of tests/test_architecture.py (add it where docs/design.md puts it)")


def test_the_import_graph_is_read():
    graph = import_graph()
    assert "pipeline.task.train" in graph and "pipeline.task.kinds" in graph["pipeline.task.train"]
    assert "pipeline.config" in graph["stages.prepare"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, targets in sorted(import_graph().items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert upward == []


@pytest.mark.parametrize("line, branch", [
    ('if params.task.kind == "detection":', True),
    ('kind = meta.get("kind", "classification")', True),
    ('if self.ctx.kind.name != "detection":', True),
    ('return "detection" == x', True),
    ("if not kind.prototype_head:", False),
    ("for name, kind in DETECTION_COLUMNS", False),
    ("if p.task.kind not in kinds:", True),
    ('name = "classification"', False),
])
def test_kind_branch_pattern(line, branch):
    assert bool(KIND_BRANCH.search(line)) is branch


def test_no_kind_branch_outside_the_kind_modules():
    found = [f"{path.relative_to(REPO)}:{i}: {line.strip()}"
             for path in sources().values() if path.relative_to(REPO).as_posix() not in KIND_MODULES
             for i, line in enumerate(path.read_text().splitlines(), 1) if KIND_BRANCH.search(line)]
    assert found == []


def test_every_kind_names_prepare_and_report_functions_that_exist():
    import inspect

    from pipeline.task.kind import resolve
    from pipeline.task.kinds import KINDS

    for kind in KINDS.values():
        prepare, report = resolve(kind.prepare_with), resolve(kind.report_with)
        assert list(inspect.signature(prepare).parameters)[:3] == ["params", "out_dir", "provenance"], kind.name
        assert list(inspect.signature(report).parameters) == ["params", "eval_dir", "out_dir", "tracker", "train_dir"]
