"""The layout is the dependency order: no module imports a higher layer, and no imports form a cycle.

Every import in every module of the package counts, wherever it is written (module level, inside a
function, under ``TYPE_CHECKING``): a lazy import is still a dependency. ``docs/architecture.md`` explains
the order; this list is its definition.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ecgflowcmr

PACKAGE = Path(ecgflowcmr.__file__).parent

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # low → high; a module may import its own layer and the layers before it
    ("base", ("errors", "atomic", "version", "canonical", "limits", "config")),
    ("signal", ("signal",)),  # R-peaks, cardiac phase
    ("io", ("io",)),  # ECG and cine readers/writers, format sniffing, manifest, inspect
    ("viz", ("viz",)),  # pictures and videos for people
    ("phantom", ("phantom",)),  # the paired ECG-CMR simulator (writes through io)
    ("store", ("store",)),  # prepared training arrays, the latent cache
    ("models", ("models",)),  # networks
    ("flow", ("flow",)),  # flow-matching objective and sampler around the DiT
    ("bundle", ("bundle",)),  # run folders and bundles: the one owner of their layout
    ("pipeline", ("pipeline",)),  # inference: ECG → cine
    ("evaluation", ("evaluation",)),  # metrics of stages and of generated cines
    ("training", ("training",)),  # the loop, checkpoints, the stages
    ("applications", ("downstream", "turing")),  # built on everything below
    ("commands", ("commands",)),  # what the CLI runs (generate, demo, …)
    ("cli", ("cli", "__main__", "")),  # the entry points; "" is the package root (the public API)
]
LAYER_OF = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, resolved to a module where the name is one."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import module` names a module; `from module import function` names the module
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        found.update(t for t in targets if t == "ecgflowcmr" or t.startswith("ecgflowcmr."))
    return found


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imported_modules(name, path, known) - {name} for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    missing = sorted({unit_of(m) for m in modules()} - set(LAYER_OF))
    assert not missing, f"modules outside the layer order (add them to LAYERS): {missing}"


def test_no_import_points_up_the_layers() -> None:
    upward = []
    for source, targets in import_graph().items():
        for target in targets:
            if LAYER_OF.get(unit_of(target), -1) > LAYER_OF.get(unit_of(source), -1):
                upward.append(f"{source} ({LAYERS[LAYER_OF[unit_of(source)]][0]}) imports {target} "
                              f"({LAYERS[LAYER_OF[unit_of(target)]][0]})")
    assert not upward, "imports that point up the layer order:\n" + "\n".join(sorted(upward))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_inference_never_imports_training() -> None:
    graph = import_graph()
    reach, todo = set(), ["ecgflowcmr.pipeline"]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in reach:
                reach.add(target)
                todo.append(target)
    assert not {m for m in reach if unit_of(m) in ("training", "evaluation", "commands")}


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}, ["b", "b2", "b"]),
])
def test_find_cycle_finds_cycles(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_imports_are_read_from_function_bodies_and_relative_forms(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from . import atomic\n\ndef f():\n    from ecgflowcmr.training import loop\n"
                      "    import ecgflowcmr.io.ecg\n")
    known = {"ecgflowcmr.atomic", "ecgflowcmr.training.loop", "ecgflowcmr.io.ecg"}
    assert imported_modules("ecgflowcmr.m", source, known) == known
