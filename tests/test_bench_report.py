"""bench/run_bench.py's bookkeeping (the measurements themselves are `make bench`, not tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import run_bench  # noqa: E402


def _run(lungs_ms: float, method: str | None = None) -> dict:
    timings = {"read": 1.0, "lungs": lungs_ms, "lesions": 2.0, "quantities": 0.5, "exports": 3.0, "total": 9.0}
    run = {"timings": timings, "peak_rss_gib": 1.5}
    if method:
        run["lung_method"] = method
    return run


def test_the_default_path_is_the_first_column_and_names_its_lung_method():
    results = json.loads((ROOT / "bench" / "results.json").read_text())  # a real run's shape
    results["pipeline_default"] = _run(7.5, "hybrid")
    text = run_bench.render(results)
    header = next(line for line in text.splitlines() if line.startswith("| stage |"))
    assert header.index("default (lungs auto -> hybrid)") < header.index("U-Net, classical lungs")
    lungs_row = next(line for line in text.splitlines() if line.startswith("| lungs |"))
    assert lungs_row.split("|")[2].strip() == "7.50"


def test_partial_results_are_written_as_the_run_goes(tmp_path):
    out = tmp_path / "not" / "yet"
    out.mkdir(parents=True)
    run_bench._save_partial(out, {"slices": 505, "pipeline_default": _run(7.5, "hybrid")})
    saved = json.loads((out / "results.partial.json").read_text())
    assert saved["pipeline_default"]["lung_method"] == "hybrid"
    assert not list(out.glob("*.tmp"))
