"""npk's modules import one another without circles, counting imports inside functions too."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "npk"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The npk modules that `path` imports anywhere in its code (a `from P import m` of module m: P.m)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            submodules = {f"{target}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {target})
    return found & modules


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    names = {p: module_name(p, root) for p in sorted(root.rglob("*.py"))}
    modules = set(names.values())
    return {name: imports_of(p, root, modules) - {name} for p, name in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (depth-first search from each module)."""
    found, seen = [], set()
    for start in sorted(graph):
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop(), path.pop()
            elif child == start:
                circle = frozenset(path)
                if circle not in seen:
                    seen.add(circle)
                    found.append(path + [start])
            elif child not in path and child > start:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return found


def test_no_module_of_npk_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "npk.kernels.offsets" in graph["npk.kernels.conv_fast"], "the walk must see imports"
    assert not cycles(graph), "\n".join(" -> ".join(c) for c in cycles(graph))


def test_the_walk_finds_a_planted_circle_even_inside_a_function(tmp_path):
    root = tmp_path / "npk"
    (root / "kernels").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "kernels" / "__init__.py").write_text("")
    (root / "kernels" / "a.py").write_text("from . import b\n")
    (root / "kernels" / "b.py").write_text("def f():\n    from .a import g\n")
    graph = import_graph(root)
    assert graph["npk.kernels.b"] == {"npk.kernels.a"} and graph["npk.kernels.a"] == {"npk.kernels.b"}
    assert cycles(graph) == [["npk.kernels.a", "npk.kernels.b", "npk.kernels.a"]]
