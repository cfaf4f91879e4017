"""Every input saved in tests/fuzz/regressions/ (fuzzing findings, and the atheris findings of issue 13)
replayed through its fuzz target: only named errors may come out. `make fuzz` adds new ones."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import targets  # noqa: E402

CASES = sorted((d.name, f) for d in (FUZZ / "regressions").iterdir() if d.is_dir() for f in d.iterdir() if f.is_file())


def test_the_regressions_are_there():
    assert {name for name, _ in CASES} >= {"scan", "request"}


@pytest.mark.parametrize("target, path", CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_fuzz_regression(target, path):
    """Only named errors, and within the fuzzer's time limit (a ``timeout-`` finding is a slow input)."""
    started = time.perf_counter()
    targets.TARGETS[target](path.read_bytes())  # raises only on a finding
    assert time.perf_counter() - started < 5, f"{path.name} took {time.perf_counter() - started:.1f} s"
