"""Values of DICOM tags, checked: a missing or malformed tag is a :class:`ScanError` that names the
file, the tag and what was found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from coviax.errors import PixelDataError, ScanError


def require_tag(ds: pydicom.Dataset, keyword: str, tag: str, path: Path, why: str):
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        raise ScanError(f"{path}: missing {keyword} {tag}; {why}")
    return value


def tag_numbers(ds: pydicom.Dataset, keyword: str, tag: str, path: Path, why: str, count: int) -> np.ndarray:
    """The ``count`` finite numbers of a tag, or a ScanError naming the tag and what was found."""
    value = require_tag(ds, keyword, tag, path, why)
    try:
        values = np.asarray(value if count > 1 else [value], dtype=np.float64).ravel()
    except (ValueError, TypeError):
        raise ScanError(f"{path}: {keyword} {tag} is {str(value)[:80]!r}, not numbers; {why}") from None
    if values.size != count or not np.all(np.isfinite(values)):
        shown = [float(v) for v in values[:8]]
        raise ScanError(f"{path}: {keyword} {tag} is {shown}; expected {count} finite number(s) ({why})")
    return values


def tag_dimension(ds: pydicom.Dataset, keyword: str, tag: str, path: Path) -> int:
    value = int(tag_numbers(ds, keyword, tag, path, "cannot size the image", 1)[0])
    if value < 1:
        raise PixelDataError(f"{path}: {keyword} {tag} is {value}; an image needs at least one row and column")
    return value


def plain_numbers(values: np.ndarray, decimals: int) -> list[float]:
    """Numbers for a message: plain Python floats (numpy 2 prints np.float64(...) otherwise)."""
    return [float(v) for v in np.round(values, decimals)]
