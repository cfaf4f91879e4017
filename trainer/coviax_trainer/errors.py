"""The trainer's errors a user can act on."""

from __future__ import annotations

from coviax.errors import CoviaxError


class TrainConfigError(CoviaxError):
    """The training config (or a file it names) is wrong; the message names the key."""


class TrainError(CoviaxError):
    """A stage cannot go on with what earlier stages produced (the message says what to change)."""
