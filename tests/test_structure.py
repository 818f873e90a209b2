"""One home per concern: where the packages live, what may import what, and no import cycles.

Imports are read from the source (ast), so the test needs none of the heavy dependencies. An import inside
`if TYPE_CHECKING:` is not an edge: it never runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = {
    "gorgon": ROOT / "services" / "gorgon",
    "gorgon_operator": ROOT / "operator" / "gorgon_operator",
    "gorgon_loadtest": ROOT / "loadtest" / "gorgon_loadtest",
}
PACKAGE = ROOT / "services" / "gorgon"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three distributions' packages."""
    modules = {}
    for package, directory in SOURCE_ROOTS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (inner for child in node.orelse for inner in _runtime_nodes_with_self(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def _runtime_nodes_with_self(node: ast.AST) -> Iterator[ast.AST]:
    yield node
    yield from _runtime_nodes(node)


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports at run time (module level or inside functions)."""
    is_package = path.name == "__init__.py"
    imported = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.module, node.level)
            imported.add(base)
            imported |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in imported if name in known and name != module}


def _absolute(module: str, is_package: bool, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (level - 1)]
    return ".".join([*anchor, name] if name else anchor)


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imported_modules(module, path, known) for module, path in files.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for node in graph:
        if node not in index:
            visit(node)
    return components


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_relative_imports_resolve() -> None:
    assert _absolute("gorgon.engine.decode", False, "kv", 1) == "gorgon.engine.kv"
    assert _absolute("gorgon.engine", True, "config", 1) == "gorgon.engine.config"
    assert _absolute("gorgon.engine.decode", False, None, 2) == "gorgon"


def test_no_import_cycles() -> None:
    graph = import_graph()
    # A package's __init__ importing its own submodules is how packages expose them, not a cycle of concerns.
    for module, targets in graph.items():
        graph[module] = {target for target in targets if not module.startswith(f"{target}.")}
    assert strongly_connected(graph) == []


def test_the_operator_does_not_import_the_engine_or_the_worker() -> None:
    graph = import_graph()
    reached = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith("gorgon_operator")
        for target in targets
        if target.startswith(("gorgon.engine", "gorgon.worker", "gorgon.training", "gorgon.bench"))
    }
    assert reached == set()


def test_redis_protocol_is_one_package_with_its_scripts() -> None:
    redis_package = PACKAGE / "core" / "redis"
    assert not (PACKAGE / "core" / "streams.py").exists()
    assert (redis_package / "__init__.py").is_file()
    assert sorted(path.name for path in (redis_package / "lua").glob("*.lua"))
    python_sources = [path.read_text(encoding="utf-8") for path in redis_package.rglob("*.py")]
    assert not any("redis.call(" in source for source in python_sources), "Lua lives in .lua files"


def test_benchmarks_live_in_one_place() -> None:
    engine_modules = {path.stem for path in (PACKAGE / "engine").rglob("*.py")}
    assert not {name for name in engine_modules if "bench" in name or "step_cost" in name}
    assert {"engine", "step_cost", "platform"} <= {path.stem for path in (PACKAGE / "bench").rglob("*.py")}


def test_the_engine_has_its_kernels_and_drafting_apart_from_the_step() -> None:
    engine = PACKAGE / "engine"
    assert {"lean.py", "fused.py", "packed.py"} <= {path.name for path in (engine / "kernels").glob("*.py")}
    assert (engine / "drafting" / "__init__.py").is_file()
    assert (engine / "scheduler.py").is_file()


# The routers are exercised through a real API process in tests/api, whose fixtures start one per module.
TESTED_BY_PARENT = {"api/routes"}


def test_tests_mirror_the_source_tree() -> None:
    """Every source package has its test directory (tests/<package path>)."""
    missing = [
        directory.relative_to(PACKAGE).as_posix()
        for directory in PACKAGE.rglob("*")
        if (directory / "__init__.py").is_file()
        and directory != PACKAGE
        and "__pycache__" not in directory.parts
        and directory.relative_to(PACKAGE).as_posix() not in TESTED_BY_PARENT
        and not (ROOT / "tests" / directory.relative_to(PACKAGE)).is_dir()
    ]
    assert missing == []


@pytest.mark.processes
@pytest.mark.parametrize("command", [["--help"], ["bench", "--help"], ["up", "--help"]])
def test_the_cli_parses_without_torch(command: list[str]) -> None:
    probe = (
        "import sys; sys.argv = ['gorgon', *sys.argv[1:]]\n"
        "from gorgon.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stderr.strip().splitlines()[-1] == "False"
