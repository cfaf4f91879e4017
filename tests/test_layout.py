"""The layout holds: the core never imports its shells (service, trainer, research tools, client), the
``coviax`` sub-commands come from entry points and are imported only when used, and a missing one says
what to install."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELLS = ("coviax_service", "coviax_trainer", "coviax_research", "coviax_client", "coviax_api", "coviax_cohort")


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_core_does_not_import_its_shells():
    offenders = {}
    for path in (ROOT / "coviax").rglob("*.py"):
        shells = {m for m in _imported_modules(path) if m.split(".")[0] in SHELLS}
        if shells:
            offenders[str(path.relative_to(ROOT))] = sorted(shells)
        text = path.read_text()
        named = [s for s in SHELLS if f'"{s}' in text or f"'{s}" in text]  # importlib.import_module("...")
        if named:
            offenders[str(path.relative_to(ROOT))] = named
    assert not offenders


def test_the_pipeline_and_service_do_not_import_research_tools():
    for folder in (ROOT / "coviax", ROOT / "service"):
        for path in folder.rglob("*.py"):
            assert not {m for m in _imported_modules(path) if m.startswith("coviax_research")}, path


def test_commands_are_entry_points_loaded_on_use():
    from coviax.cli import _plugin_commands

    assert {e.name for e in _plugin_commands()} >= {"serve", "train", "phantom", "eval", "stats"}
    code = ("import sys; from coviax.cli import build_parser; build_parser('phantom'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (SHELLS,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "coviax_research.phantom_cli" in out and "coviax_service" not in out and "coviax_trainer" not in out


def test_a_missing_command_module_names_its_extra(monkeypatch, capsys):
    import coviax.cli as cli

    missing = EntryPoint("fly", "coviax_no_such_module.cli:add_fly_parser [wings]", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "_plugin_commands", lambda: [missing])
    assert cli.main(["fly", "--far"]) == 2
    err = capsys.readouterr().err
    assert "coviax fly is not available" in err and "pip install 'coviax[wings]'" in err


# The product's packages and the folders they live in.
PACKAGES = {"coviax": ROOT, "coviax_service": ROOT / "service", "coviax_trainer": ROOT / "trainer",
            "coviax_research": ROOT / "research", "coviax_client": ROOT / "clients", "coviax_api": ROOT / "clients",
            "coviax_cohort": ROOT / "cohort"}


def _import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports, at its top or inside a function (a lazy import is a
    dependency too). A package's ``__init__`` naming its own submodules (a registry such as
    ``make_engine`` that imports the chosen engine) is not counted: importing a submodule loads its
    package first anyway, so that edge says nothing about how the parts depend on each other."""
    modules = {}
    for top, base in PACKAGES.items():
        for path in (base / top).rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    edges.add(f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module)
        own = (lambda m: m.startswith(name + ".")) if path.name == "__init__.py" else (lambda m: False)
        graph[name] = {m for m in edges if m in modules and m != name and not own(m)}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 80 and "coviax.quantify" in graph["coviax.pipeline"]
    assert not _cycles(graph), "modules that import each other (directly or round a loop):\n" + "\n".join(
        " <-> ".join(c) for c in _cycles(graph))


def test_the_cycle_finder_finds_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
