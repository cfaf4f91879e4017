"""No module over 400 lines and no function over 60 outside generated code and tests
(scripts/check_size.py measures them), but for the few exceptions that say why."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_size", ROOT / "scripts" / "check_size.py")
check_size = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_size", check_size)  # dataclasses look their module up
_spec.loader.exec_module(check_size)

def test_no_module_or_function_over_the_limits():
    new = [f"{s.lines} lines: {s.name}" for s in check_size.offenders() if s.name not in check_size.EXCEPTIONS]
    assert not new, ("split these along their responsibilities (or add an exception to scripts/check_size.py "
                     "that says why, with the same reason in a comment at its top):\n" + "\n".join(new))


def test_exceptions_are_current_and_say_why():
    current = {s.name for s in check_size.offenders()}
    stale = set(check_size.EXCEPTIONS) - current
    assert not stale, f"no longer over the limits, remove from the lists: {sorted(stale)}"
    assert all(len(why) > 20 for why in check_size.EXCEPTIONS.values())


def test_the_checker_measures_functions_and_skips_generated_code(tmp_path):
    pkg = tmp_path / "coviax"
    pkg.mkdir()
    (pkg / "m.py").write_text("class A:\n    def f(self):\n" + "        x = 1\n" * 70 + "\n\ndef g():\n    pass\n")
    (pkg / "m_pb2.py").write_text("x = 1\n" * 500)
    modules, functions = check_size.sizes(tmp_path)
    assert [m.name for m in modules] == ["coviax/m.py"]
    assert functions[0] == check_size.Size("coviax/m.py::A.f", 71)
    assert check_size.Size("coviax/m.py::g", 2) in functions
