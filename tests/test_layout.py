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
SHELLS = ("coviax_service", "coviax_trainer", "coviax_research", "coviax_client", "coviax_api")


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
