"""Adapter over the ``lungmask`` package (R231, R231CovidWeb, LTRCLobes).

lungmask's ``get_model()`` downloads its weights from GitHub when none are
given, which fails (or worse, hangs) on hospital machines with no internet. We
look for the weights ourselves -- an explicit file, ``$COVIAX_LUNGMASK_WEIGHTS``,
or lungmask's own file name in the torch hub cache -- and give a clear error
when they are absent. lungmask's network runs through our own batched pre- and
post-processing (``lungmask_fast.py``, where the docstring says why), not
``LMInferer``. lungmask is imported lazily: on import it silences all
``UserWarning``s process-wide, which we only accept when it is actually used.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from coviax.errors import OptionError, WeightsNotFoundError
from coviax.labels import LEFT_LUNG, RIGHT_LUNG

#: lungmask's model names and the weight file names its download URLs use.
WEIGHT_FILES = {
    "R231": "unet_r231-d5d2fc3d.pth",
    "LTRCLobes": "unet_ltrclobes-3a07043d.pth",
    "R231CovidWeb": "unet_r231covid-0de78a7e.pth",
}
DOWNLOAD_HINT = (
    "Download the file on a machine with internet from https://github.com/JoHof/lungmask/releases "
    "and pass it with --lung-weights FILE, set COVIAX_LUNGMASK_WEIGHTS, or place it in {cache}."
)

#: LTRCLobes lobe codes: 1 left upper, 2 left lower, 3 right upper, 4 right middle, 5 right lower.
LEFT_LOBES = (1, 2)
RIGHT_LOBES = (3, 4, 5)


def hub_checkpoint_dir() -> Path:
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    return Path(torch_home) / "hub" / "checkpoints"


def candidate_paths(model: str, weights: str | None = None) -> list[Path]:
    if model not in WEIGHT_FILES:
        raise OptionError(f"unknown lungmask model {model!r}; choose one of {', '.join(WEIGHT_FILES)}")
    if weights:
        return [Path(weights)]
    paths = []
    if os.environ.get("COVIAX_LUNGMASK_WEIGHTS"):
        paths.append(Path(os.environ["COVIAX_LUNGMASK_WEIGHTS"]))
    paths.append(hub_checkpoint_dir() / WEIGHT_FILES[model])
    return paths


def find_weights(model: str = "R231", weights: str | None = None) -> Path | None:
    """The first existing weight file for ``model``, or None."""
    for path in candidate_paths(model, weights):
        if path.is_file():
            return path
    return None


def segment_lungs_lungmask(volume, weights: str | None = None, device: str = "cpu", model: str | None = None):
    """Run lungmask on ``volume`` and return a :class:`coviax.lungs.LungMask`.

    The model is R231 unless the weight file's name says otherwise
    (``ltrclobes`` -> LTRCLobes, whose lobes are kept for lobe scores).

    Raises
    ------
    WeightsNotFoundError
        when no weight file exists (we never download).
    """
    from coviax.lungs import LungMask

    if model is None:
        model = _model_from_filename(weights) if weights else "R231"
    path = find_weights(model, weights)
    if path is None:
        looked = ", ".join(str(p) for p in candidate_paths(model, weights))
        raise WeightsNotFoundError(
            f"lungmask weights for {model} not found (looked in: {looked}). "
            + DOWNLOAD_HINT.format(cache=hub_checkpoint_dir())
        )
    from coviax.lungs import lungmask_fast  # imports lungmask lazily: see module docstring

    try:
        net = lungmask_fast.load_model(str(path), device=device)
    except (RuntimeError, KeyError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise WeightsNotFoundError(
            f"{path}: not a usable lungmask state dict for {model} ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from None
    # our batched path over lungmask's network (lungmask_fast.py); it reorients to LPS and back itself
    result = lungmask_fast.segment(volume.to_sitk(), net, device=device)
    raw = result.labels
    lobes = None
    if model == "LTRCLobes":
        lobes = raw
        labels = np.zeros_like(raw)
        labels[np.isin(raw, RIGHT_LOBES)] = RIGHT_LUNG
        labels[np.isin(raw, LEFT_LOBES)] = LEFT_LUNG
    else:
        labels = raw  # R231 already writes 1 = right, 2 = left
    notes = [f"weights {path.name}", f"lungmask network, our batched pre/post-processing ({result.precision})"]
    return LungMask(labels=labels, method=f"lungmask:{model}", notes=notes, lobes=lobes)


def _model_from_filename(weights: str) -> str:
    name = Path(weights).name.lower()
    if "ltrclobes" in name:
        return "LTRCLobes"
    if "covid" in name:
        return "R231CovidWeb"
    return "R231"
