"""The package's layers (docs/architecture.md): no import loops, no upward or sideways imports.

Every import counts, also those inside functions, so a lazy import cannot hide a loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "geomprobe"

# Lower numbers are lower layers. A module may import its own stage and any lower layer;
# stages on one layer are peers and do not import each other (data flows forward only).
LAYERS = {
    "core": 0,
    "models": 1,
    "plots": 1,
    "activations": 2,
    "aqi": 3,
    "subspace": 3,
    "probes": 3,
    "ches": 3,
    "steering": 4,
    "organisms": 5,
    "audit": 6,
    "cli": 7,
    "": 8,  # geomprobe/__init__.py and __main__.py: the public front door
}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["geomprobe", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return ""
    return parts[1]


def _imports(module: str, path: Path) -> set[str]:
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for candidate in [target, *(f"{target}.{a.name}" for a in node.names)]:
                if candidate in MODULES:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
    found.discard(module)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_layer_table_covers_every_stage():
    assert {_stage(m) for m in MODULES} <= set(LAYERS), "add the new stage package to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_upward_or_sideways_imports(module):
    stage = _stage(module)
    bad = []
    for target in GRAPH[module]:
        other = _stage(target)
        if other == stage:
            continue
        if other == "" and target == "geomprobe":
            bad.append(f"{target} (the front door; import the stage module instead)")
        elif LAYERS[other] >= LAYERS[stage]:
            bad.append(target)
    assert not bad, f"{module} imports {sorted(bad)} from a layer at or above its own"


def _reexports_only(module: str) -> bool:
    path = MODULES[module]
    defs = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return path.name == "__init__.py" and not any(isinstance(n, defs) for n in ast.parse(path.read_text()).body)


def test_no_import_loops():
    # Tarjan's strongly connected components over module imports
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
            # a package __init__ that only re-exports its submodules is not a loop of logic
            real = [m for m in component if not _reexports_only(m)]
            if len(component) > 1 and len(real) > 1:
                loops.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not loops, f"import loops: {loops}"


def test_loop_detector_finds_a_planted_loop(monkeypatch):
    monkeypatch.setitem(GRAPH, "geomprobe.core.errors", GRAPH["geomprobe.core.errors"] | {"geomprobe.core.hooks"})
    with pytest.raises(AssertionError, match="import loops"):
        test_no_import_loops()


def test_cli_uses_no_private_names():
    bad = []
    for module, path in MODULES.items():
        if _stage(module) != "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("geomprobe"):
                bad += [f"{module}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, f"the CLI imports private names (give the API a public function): {bad}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module):
    n = len(MODULES[module].read_text().splitlines())
    assert n <= MAX_LINES, f"{module} has {n} lines; split it by concept (docs/architecture.md)"
