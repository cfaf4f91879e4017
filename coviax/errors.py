"""Exceptions of the COViaX core.

Every rejected input raises a subclass of :class:`CoviaxError` with a message
that says what was expected, what was found (which file, which tag, which
value) and how to fix it. The CLI turns them into exit code 2; the gRPC service
maps them to status codes in one place (``coviax_service.errors``).
"""

from __future__ import annotations


class CoviaxError(Exception):
    """Base class for all errors a user can act on."""

    exit_code = 2


class ScanError(CoviaxError, ValueError):
    """The input scan cannot be read as a CT volume in Hounsfield units."""


class NotCTError(ScanError):
    """The series is not a CT (e.g. an MR or a secondary capture)."""


class GeometryError(ScanError):
    """Slices do not form a regular volume (duplicates, gaps, mixed orientations)."""


class PixelDataError(ScanError):
    """Pixel data is absent, truncated, or in a transfer syntax we cannot decode."""


class UnsafeArchiveError(ScanError):
    """A zip archive would write outside its target or is too large when unpacked."""


class WeightsNotFoundError(CoviaxError, FileNotFoundError):
    """Model weights are needed but not present on this machine (we never download)."""


class OptionError(CoviaxError, ValueError):
    """An option has a value we cannot honour (unknown engine, CUDA absent, ...)."""
