"""The house's layering: every package imports only the packages below it, and no module cycle.

Reads every import statement of every module (also the ones inside functions, which are imports
all the same), so a lazy import cannot hide an upward arrow or a cycle. The table is the README's
"Layout" table; a test below checks that the two agree.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# package -> the packages of ours it may import (besides itself)
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "benchmarks": set(),
    "encoder": set(),
    "dedup": set(),
    "config": {"encoder", "dedup"},
    "training": {"config", "encoder", "dedup", "benchmarks"},
    "evaluation": {"config", "encoder", "dedup", "benchmarks"},
    "jobs": {"config", "encoder", "dedup", "schemas"},
    "review": {"config", "dedup", "schemas"},
    "dags": set(),
}
OURS = set(ALLOWED) | {"bench", "examples"}


def _modules() -> dict[str, Path]:
    """Module name -> file, for every package in ``ALLOWED``."""
    found = {}
    for package in ALLOWED:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """The modules of ours that a file imports, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            # "from encoder import factory" imports the module encoder.factory
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in OURS}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (only ones that exist as files)."""
    modules = _modules()
    out = {}
    for module, path in modules.items():
        targets = set()
        for name in _imports(path, module):
            # the longest existing module named by the import
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts = parts[:-1]
            targets.add(".".join(parts) if parts else name)
        out[module] = targets - {module}
    return out


def test_no_package_imports_upward(graph):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if target.split(".")[0] != module.split(".")[0] and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    )
    assert not wrong, "imports against the layering (README, Layout):\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle(graph):
    # a package's __init__ that hands names on is not a cycle with its own modules
    edges = {m: {t for t in ts if not (m.count(".") == 0 and t.startswith(m + "."))} for m, ts in graph.items()}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_planted_upward_import_is_caught(graph):
    planted = {**graph, "encoder.base": graph["encoder.base"] | {"jobs.stage"}}
    assert any(t.split(".")[0] not in ALLOWED["encoder"] | {"encoder"} for t in planted["encoder.base"])
    with pytest.raises(AssertionError, match="encoder.base imports jobs.stage"):
        test_no_package_imports_upward(planted)


def test_readme_layout_table_matches_the_rules_and_the_tree():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Layout") :]
    section = section[: section.index("\n## ", 4)] if "\n## " in section[4:] else section
    rows = re.findall(r"^\| `([a-z_]+)/` \|[^|]*\| ([^|]*) \|$", section, re.MULTILINE)
    table = {name: {m for m in re.findall(r"[a-z_]+", may) if m in OURS} for name, may in rows}
    for package, allowed in ALLOWED.items():
        assert package in table, f"README Layout has no row for {package}/"
        assert table[package] == allowed, (package, table[package], allowed)
    folders = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    assert folders <= set(table), f"packages missing from the README table: {folders - set(table)}"
