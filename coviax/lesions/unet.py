"""The U-Net engine: a 2D U-Net applied slice by slice, batched, on CPU or CUDA.

Because the network is 2D, :meth:`UNetEngine.predict_slices` can run on slices
as they arrive (the gRPC service streams them in); :func:`combine_with_lungs`
is the only step that needs the whole volume.

The U-Net's own lung/background decision is not used for the cavity: the lung
mask stage owns the cavity so that the ratios' denominator is the same for
every engine. The U-Net decides vessel / GGO / consolidation inside it.

Fast paths (issue "Fast"), all checked against the fp32 reference in the tests:

- precision ``auto``: bf16 autocast on CPUs with AVX512-BF16 or AMX (about 5-10x
  faster than fp32 on the 2-core dev machine), fp16 on CUDA, fp32 otherwise;
- channels-last memory format (oneDNN and cuDNN pick faster kernels);
- the whole int16 volume is copied to the device once (pinned on CUDA); HU
  clipping, normalisation, resizing and the argmax run on the device, and only
  uint8 labels come back;
- backend ``tensorrt`` (CUDA only, :mod:`coviax.lesions.tensorrt_backend`) and
  ``torch.compile`` on CUDA (``compile=True``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from coviax.errors import OptionError, WeightsNotFoundError
from coviax.labels import Label
from coviax.lesions import LesionLabels
from coviax.files import file_sha256
from coviax.lesions.unet_model import load_checkpoint, normalise_hu, square_padding

#: Where the shipped U-Net B lives inside the package.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "unet_b.pt"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "tensorrt")


def resolve_weights(weights: str | None) -> Path:
    """The checkpoint to load: explicit file, ``$COVIAX_WEIGHTS``, or the shipped U-Net B.

    Raises
    ------
    WeightsNotFoundError
        when none of these exists.
    """
    candidates = [Path(weights)] if weights else []
    if not weights and os.environ.get("COVIAX_WEIGHTS"):
        candidates.append(Path(os.environ["COVIAX_WEIGHTS"]))
    if not weights:
        candidates.append(SHIPPED_WEIGHTS)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        "no U-Net checkpoint found (looked in: " + ", ".join(str(p) for p in candidates) + "). "
        "Pass --weights FILE (a checkpoint from `coviax train`), or use --engine kmeans, which needs no weights."
    )


def check_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device} asked for, but this machine has no usable CUDA GPU; use --device cpu")
        return torch.device(device)
    raise OptionError(f"unknown device {device!r}; use cpu or cuda")


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise OptionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def set_cpu_threads() -> int:
    """Use every core this process may run on (containers often allow fewer than the host has)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


class UNetEngine:
    name = "unet"

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        batch_size: int = 8,
        model_id: str = "unet",
        precision: str = "auto",
        compile: bool = False,
    ):
        self.device = check_device(device)
        self.dtype = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            set_cpu_threads()
            if self.dtype == torch.float16:
                raise OptionError("fp16 is for CUDA; on the CPU use bf16 or fp32")
        self.model = model.to(self.device).eval().to(memory_format=torch.channels_last)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.model
        if compile and self.device.type == "cuda":
            self.forward = torch.compile(self.model, mode="max-autotune-no-cudagraphs")
        self.input_size = model.config.input_size
        self.batch_size = batch_size
        self.model_id = model_id
        self.notes: list[str] = []
        self.meta: dict = {}
        self.weights_path: Path | None = None
        self.progress: Callable[[int, int], None] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        weights: str | None,
        device: str = "cpu",
        batch_size: int | None = None,
        precision: str = "auto",
        backend: str = "auto",
        compile: bool = False,
    ) -> "UNetEngine":
        if backend not in BACKENDS:
            raise OptionError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        path = resolve_weights(weights)
        try:
            model, meta = load_checkpoint(path)
        except ValueError as exc:
            raise WeightsNotFoundError(str(exc)) from None
        digest = file_sha256(path)
        name = meta.get("name", path.stem)
        if batch_size is None:
            batch_size = 32 if device.startswith("cuda") else 8
        engine = cls(model, device=device, batch_size=batch_size, model_id=f"{name}@sha256:{digest[:12]}",
                     precision=precision, compile=compile)
        engine.meta = meta
        engine.weights_path = path
        engine.weights_sha256 = digest
        if engine.device.type == "cuda" and backend in ("auto", "tensorrt"):
            from coviax.lesions import tensorrt_backend

            tensorrt_backend.attach(engine, required=(backend == "tensorrt"))
        elif backend == "tensorrt":
            raise OptionError("the TensorRT backend needs --device cuda")
        return engine

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def predict_slices(self, hu: np.ndarray) -> np.ndarray:
        """Raw per-pixel classes (uint8, n y x) of axial HU slices (n y x, int16)."""
        n, height, width = hu.shape
        out = np.empty((n, height, width), dtype=np.uint8)
        source = torch.from_numpy(np.ascontiguousarray(hu))
        if self.device.type == "cuda":
            # one host-to-device copy of the whole stack, from pinned memory
            source = source.pin_memory().to(self.device, non_blocking=True)
        top, bottom, left, right = square_padding(height, width, self.model.config.aspect)
        side_y, side_x = height + top + bottom, width + left + right
        resize = (side_y, side_x) != (self.input_size, self.input_size)
        for start in range(0, n, self.batch_size):
            batch = source[start : start + self.batch_size]
            x = normalise_hu(batch)[:, None]
            if top or bottom or left or right:  # air (0 after normalising) around a slice that is not square
                x = F.pad(x, (left, right, top, bottom), value=0.0)
            if resize:
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
            x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.forward(x)
            if resize:
                logits = F.interpolate(logits.float(), size=(side_y, side_x), mode="bilinear", align_corners=False)
            logits = logits[:, :, top : top + height, left : left + width]
            out[start : start + len(batch)] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            if self.progress:
                self.progress(min(start + self.batch_size, n), n)
        return out

    def predict_volume(self, volume) -> np.ndarray:
        """:meth:`predict_slices` on a Volume, its slices shown to the network as it was trained."""
        flip = display_flips(volume.direction)
        raw = self.predict_slices(np.ascontiguousarray(volume.hu[flip]))
        return raw[flip]

    def segment(self, volume, lungs) -> LesionLabels:
        return self.labels_from_raw(self.predict_volume(volume), lungs, volume)

    def labels_from_raw(self, raw: np.ndarray, lungs, volume) -> LesionLabels:
        """The lesion labels from :meth:`predict_volume`'s classes and the lung mask (the one step that
        needs the lungs, so the network can run before or beside the lung stage)."""
        return LesionLabels(unet_labels(raw, lungs.cavity, volume), self.name, self.model_id,
                            notes=list(self.notes))


def display_flips(direction: np.ndarray) -> tuple[slice, slice, slice]:
    """The (z, y, x) index that shows axial slices as the networks were trained: rows running
    anterior to posterior and columns patient right to left (the usual DICOM axial layout).

    NIfTI files are often stored the other way round in-plane (e.g. a direction of diag(-1, -1, 1)
    turns every slice by 180 degrees); a 2D network trained on one layout sees another anatomy
    there. The same index undoes the flip. Oblique axes are judged by their dominant component.
    """
    d = np.asarray(direction, dtype=np.float64)
    flip_x = d[0, 0] < 0  # the column axis should point to patient left (+x in LPS)
    flip_y = d[1, 1] < 0  # the row axis should point to posterior (+y in LPS)
    return (slice(None), slice(None, None, -1) if flip_y else slice(None), slice(None, None, -1) if flip_x else slice(None))


def unet_labels(raw: np.ndarray, cavity: np.ndarray, volume) -> np.ndarray:
    """What the U-Net engine reports: its classes inside the cavity, solid regions enclosed by lung that
    it calls background labelled opacity (:func:`coviax.lesions.solid.label_enclosed_solid_lesions`),
    lesions without a core dropped (:func:`coviax.lesions.cleanup.drop_coreless_lesions`). The
    service's workers call it too."""
    from coviax.lesions.cleanup import drop_coreless_lesions
    from coviax.lesions.solid import label_enclosed_solid_lesions

    labels = combine_with_lungs(raw, cavity)
    label_enclosed_solid_lesions(labels, raw, cavity, volume.hu, volume.voxel_volume_ml)
    drop_coreless_lesions(labels, volume.spacing_zyx)
    return labels


def combine_with_lungs(raw: np.ndarray, cavity: np.ndarray) -> np.ndarray:
    """Engine classes inside the lung cavity; healthy lung where it says lung or background."""
    labels = np.where(cavity, np.uint8(Label.HEALTHY_LUNG), np.uint8(Label.BACKGROUND))
    lesion_or_vessel = cavity & (raw >= Label.VESSEL)
    labels[lesion_or_vessel] = raw[lesion_or_vessel]
    return labels
