"""No new dead code: vulture over the product and its shells finds no unused function, method or
class (60 % confidence: vulture cannot see dynamic use, so tests/vulture_whitelist.py names what is
used by name) and nothing at 80 % and over (unused imports, arguments, unreachable code)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("coviax", "service", "clients", "trainer", "research", "cohort")


def test_no_dead_code():
    pytest.importorskip("vulture")
    out = subprocess.run(
        [sys.executable, "-m", "vulture", *FOLDERS, "tests/vulture_whitelist.py", "--min-confidence", "60",
         "--exclude", "*_pb2.py,*_pb2_grpc.py"],
        capture_output=True, text=True, cwd=ROOT,
    ).stdout
    findings = [line for line in out.splitlines()
                if re.search(r"unused (function|method|class|import)", line)
                or int(re.search(r"\((\d+)% confidence", line).group(1)) >= 80]
    assert not findings, "dead code (remove it, or name it in tests/vulture_whitelist.py with why):\n" + "\n".join(findings)
