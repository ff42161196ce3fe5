"""The import structure of the three packages, read from the source (function-level imports included).

Nothing is imported: every module is parsed, so imports inside functions, behind ``TYPE_CHECKING`` and
in rarely loaded subpackages (``tta.da``, ``tta.onnx``, ``eval.commands``) are all seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("adapters_bn", "tta", "eval")  # each may import only the ones before it


@dataclass(frozen=True)
class Import:
    """One import statement's target as seen from ``module``: ``from target import names`` or ``import target``."""

    module: str
    target: str
    names: tuple[tuple[str, str | None], ...]  # (name, alias) for ``from`` imports; empty for ``import``
    line: int


@cache
def modules() -> dict[str, Path]:
    """Every module of the three packages by dotted name (packages by their ``__init__``)."""
    found: dict[str, Path] = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(), filename=str(modules()[name]))


def imports(name: str) -> Iterator[Import]:
    """Every import of module ``name`` that names one of the three packages, relative ones resolved."""
    base = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                target = ".".join([*anchor, target] if target else anchor)
            yield Import(name, target, tuple((a.name, a.asname) for a in node.names), node.lineno)


def _ours(target: str) -> bool:
    return target.split(".")[0] in LAYERS


def edges(name: str) -> set[str]:
    """The modules ``name`` imports: ``from pkg import sub`` counts as importing the submodule."""
    found: set[str] = set()
    for imp in imports(name):
        if not _ours(imp.target):
            continue
        subs = [f"{imp.target}.{n}" for n, _ in imp.names if f"{imp.target}.{n}" in modules()]
        found.update(subs)
        if not imp.names or len(subs) < len(imp.names):
            found.add(imp.target)
    return {m for m in found if m in modules()} - {name}


def _defined(name: str) -> set[str]:
    """Names bound at the top level of module ``name`` by definitions (not by imports)."""
    defined: set[str] = set()
    for node in _tree(name).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, ast.If):  # version or TYPE_CHECKING switches
            defined.update(n.name for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
            defined.update(t.id for n in ast.walk(node) if isinstance(n, ast.Assign)
                           for t in n.targets if isinstance(t, ast.Name))
    return defined


def _exported(name: str) -> list[str]:
    for node in _tree(name).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                return [e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def test_every_package_is_found() -> None:
    assert {"adapters_bn", "tta", "eval", "tta.methods", "eval.commands"} <= set(modules())


def test_no_package_imports_a_higher_one() -> None:
    wrong = []
    for name in modules():
        allowed = set(LAYERS[: LAYERS.index(name.split(".")[0]) + 1])
        wrong += [f"{name}:{i.line} imports {i.target}" for i in imports(name)
                  if _ours(i.target) and i.target.split(".")[0] not in allowed]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_a_private_module_of_another_package() -> None:
    wrong = []
    for name in modules():
        for target in edges(name):
            parts = target.split(".")
            private = [k for k, part in enumerate(parts) if part.startswith("_")]
            if private:
                owner = ".".join(parts[: private[0]])  # the package the private module belongs to
                if not (name == owner or name.startswith(owner + ".")):
                    wrong.append(f"{name} imports {target}, private to {owner}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {name: edges(name) for name in modules()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_all_lists_only_names_the_module_defines() -> None:
    wrong = []
    for name in modules():
        if _is_package(name):
            continue
        defined = _defined(name)
        wrong += [f"{name}.__all__ lists {n!r}, defined elsewhere" for n in _exported(name) if n not in defined]
    assert not wrong, "\n".join(wrong)


def test_imports_name_the_defining_module() -> None:
    """``from m import n`` with ``m`` a module (not a package's public face): ``n`` is defined in ``m``; no ``n as n``."""
    wrong = []
    for name in modules():
        for imp in imports(name):
            if not _ours(imp.target) or imp.target not in modules():
                continue
            for imported, alias in imp.names:
                if alias == imported:
                    wrong.append(f"{name}:{imp.line} re-exports {imported} as itself")
                if not _is_package(imp.target) and imported not in _defined(imp.target):
                    wrong.append(f"{name}:{imp.line} imports {imported} from {imp.target}, which does not define it")
    assert not wrong, "\n".join(wrong)
