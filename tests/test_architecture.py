"""The package's shape: imports go down the layers only, no import circles, no private names borrowed
across packages, and every registry is complete after importing just the package that owns it.

The import graph is read from the source (``ast``), every ``import`` counted wherever it is written (module
level or inside a function), so a lazy import cannot hide a circle or an upward dependency.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deepmetric"

# Top-level units of deepmetric by layer; a unit imports from its own layer or below, never above.
# Units not listed (new command-line, API, service or export modules) count as the top layer.
LAYERS = [
    {"registry", "distances", "masks", "reducers", "checks", "linalg", "native", "samplers", "extras", "io"}
    | {"losses", "miners", "data", "models"},
    {"evaluation", "retrieval", "hashing"},
    {"training", "viz", "suites"},
    {"cli", "api", "service", "export"},
]


def layer_of(unit: str) -> int:
    return next((depth for depth, units in enumerate(LAYERS) if unit in units), len(LAYERS) - 1)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
IMPORTABLE = sorted(module for module in MODULES if not module.endswith("__main__"))  # __main__ runs the CLI


def unit_of(module: str) -> str:
    """``deepmetric.losses.triplet`` -> ``losses``; the root package is its own unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def resolve(importer: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, list[str]]]:
    """The deepmetric modules a statement imports, each with the names it takes from that module."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "deepmetric"]
    if node.level:  # relative: from the importer's package, up level - 1 packages
        package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base.split(".")[0] != "deepmetric":
        return []
    targets: dict[str, list[str]] = {}
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in MODULES:  # from deepmetric.x import y, y a module
            targets.setdefault(submodule, [])
        else:
            targets.setdefault(base, []).append(alias.name)
    return list(targets.items())


def type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import statements under ``if TYPE_CHECKING:``: annotations only, never run."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded.update(id(child) for statement in node.body for child in ast.walk(statement))
    return guarded


def import_graph() -> dict[str, dict[str, list[str]]]:
    """importer -> {imported module: names taken from it}, over every import statement that runs."""
    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in MODULES.items():
        edges = graph.setdefault(module, {})
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_checking_only(tree):
                for target, names in resolve(module, node):
                    edges.setdefault(target, []).extend(names)
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


GRAPH = import_graph()


def test_the_graph_reader_sees_lazy_relative_and_from_imports(tmp_path):
    assert "deepmetric.losses.triplet" in GRAPH["deepmetric.losses.dtsh"]  # from x.y import Name
    assert "deepmetric.evaluation" in GRAPH["deepmetric.training.config"]  # inside validate()
    assert "deepmetric.data" in GRAPH["deepmetric.training.config"]  # from deepmetric import data
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None


def test_every_module_imports():
    for module in IMPORTABLE:
        importlib.import_module(module)


def test_no_import_circle_between_modules():
    edges = {module: set(targets) - {module} for module, targets in GRAPH.items()}
    assert find_cycle(edges) is None


def test_no_import_circle_between_packages():
    edges: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        edges.setdefault(unit_of(module), set()).update(
            unit_of(t) for t in targets if unit_of(t) != unit_of(module)
        )
    assert find_cycle(edges) is None


def test_imports_go_down_the_layers_only():
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if unit_of(module) and layer_of(unit_of(target)) > layer_of(unit_of(module))
    ]
    assert upward == []


def test_no_private_name_is_imported_from_another_package():
    private = [
        f"{module}: {target} {name}".strip()
        for module, targets in GRAPH.items()
        for target, names in targets.items()
        if unit_of(target) != unit_of(module)
        for name in [*names, *(part for part in target.split(".") if part.startswith("_"))]
        if name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


# registry -> (the module that owns it, its attribute): each must be complete after importing that module
REGISTRIES = {
    "losses": ("deepmetric.losses", "LOSSES"),
    "miners": ("deepmetric.miners", "MINERS"),
    "datasets": ("deepmetric.data", "DATASETS"),
    "backbones": ("deepmetric.models", "BACKBONES"),
    "heads": ("deepmetric.models", "HEADS"),
    "optimizers": ("deepmetric.training.optim", "OPTIMIZERS"),
    "schedules": ("deepmetric.training.optim", "SCHEDULES"),
    "samplers": ("deepmetric.samplers", "SAMPLERS"),
    "index backends": ("deepmetric.retrieval", "SEARCH_BACKENDS"),
    "metrics": ("deepmetric.evaluation", "METRICS"),
    "callbacks": ("deepmetric.training", "CALLBACKS"),
    "sharded index kinds": ("deepmetric.retrieval.sharded_index", "SHARDED_INDEX_KINDS"),
}

NAMES_OF = """
import importlib, json, sys
registries = json.loads(sys.argv[1])
for module in sys.argv[2:]:
    importlib.import_module(module)
print(json.dumps({kind: getattr(importlib.import_module(m), a).names() for kind, (m, a) in registries.items()}))
"""


def start_python(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def output_of(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    return stdout


def test_a_fresh_process_gets_a_hashing_loss_from_the_losses_alone():
    code = "import sys, deepmetric.losses as L; L.get('dpsh'); print('deepmetric.hashing' in sys.modules)"
    assert output_of(start_python(code)).split() == ["False"]


@pytest.mark.slow  # about 40 CPU-seconds of imports in 8 processes
def test_each_registry_is_complete_after_importing_its_package():
    """One fresh process per owning package imports just that package; one more imports every module."""
    owners = sorted({module for module, _ in REGISTRIES.values()})
    everything = start_python(NAMES_OF, json.dumps(REGISTRIES), *IMPORTABLE)
    alone = {
        owner: start_python(NAMES_OF, json.dumps({k: e for k, e in REGISTRIES.items() if e[0] == owner}))
        for owner in owners
    }  # started together: the processes' imports overlap
    expected = json.loads(output_of(everything))
    assert all(expected.values())
    for owner, process in alone.items():
        names = json.loads(output_of(process))
        assert names == {kind: expected[kind] for kind in names}, owner
