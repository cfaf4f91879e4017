"""The 2D U-Net that the trainer trains and the service serves (one definition for both).

Classic U-Net (Ronneberger 2015): ``depth`` levels of two 3x3 conv + batch norm
+ ReLU, max-pool down, bilinear up + concatenation; ``width`` channels at the
first level, doubling each level. Input: one channel of HU normalised from
[-1024, 300] to [0, 1]; output: logits for the 5 classes of
:mod:`coviax.labels`.

Checkpoints are plain dicts (loadable with ``torch.load(weights_only=True)``,
so a checkpoint cannot run code):
``{"format": "coviax.unet/1", "config": {...}, "state_dict": {...}, "meta": {...}}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from coviax.files import file_sha256

CHECKPOINT_FORMAT = "coviax.unet/1"
HU_WINDOW = (-1024.0, 300.0)  # the thesis's normalisation window
ASPECTS = ("stretch", "pad")


@dataclass(frozen=True)
class UNetConfig:
    depth: int = 4
    width: int = 16
    n_classes: int = 5
    input_size: int = 256  # slices are resized to this square before the network
    #: how a slice that is not square becomes the network's square: "stretch" resizes it whole (the
    #: first checkpoints; a 233 x 167 NIfTI crop is then squashed by 40 % in one direction), "pad"
    #: pads it with air to a square first, so anatomy keeps its shape whatever the field of view
    aspect: str = "stretch"

    def __post_init__(self):
        if not 2 <= self.depth <= 6:
            raise ValueError(f"U-Net depth {self.depth} outside 2..6")
        if self.width < 4:
            raise ValueError(f"U-Net width {self.width} below 4")
        if self.input_size % (2 ** (self.depth - 1)):
            raise ValueError(f"input_size {self.input_size} not divisible by 2**(depth-1)")
        if self.aspect not in ASPECTS:
            raise ValueError(f"U-Net aspect {self.aspect!r}; choose one of {', '.join(ASPECTS)}")


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class UNet2D(nn.Module):
    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        widths = [config.width * 2**i for i in range(config.depth)]
        self.down = nn.ModuleList()
        c_in = 1
        for w in widths:
            self.down.append(_DoubleConv(c_in, w))
            c_in = w
        self.up = nn.ModuleList(
            _DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(config.depth - 1))
        )
        self.head = nn.Conv2d(widths[0], config.n_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


def normalise_hu(hu: torch.Tensor) -> torch.Tensor:
    """HU -> [0, 1] over the thesis's window [-1024, 300]."""
    low, high = HU_WINDOW
    return (hu.float().clamp(low, high) - low) / (high - low)


def square_padding(height: int, width: int, aspect: str) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows and columns of air that make a slice square (``aspect="pad"``),
    split evenly; all zero for ``"stretch"`` or a square slice. Serving and training both use it."""
    if aspect != "pad" or height == width:
        return 0, 0, 0, 0
    side = max(height, width)
    dy, dx = side - height, side - width
    return dy // 2, dy - dy // 2, dx // 2, dx - dx // 2


def save_checkpoint(model: UNet2D, path: str | Path, meta: dict | None = None) -> str:
    """Write a checkpoint; returns its SHA-256 (the weights hash the service reports)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(model.config), "state_dict": state, "meta": meta or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return file_sha256(path)


def load_checkpoint(path: str | Path) -> tuple[UNet2D, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode, meta).

    Raises
    ------
    ValueError
        if the file is not a COViaX U-Net checkpoint.
    """
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; we name the file
        raise ValueError(f"{path}: not a readable torch checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a COViaX U-Net checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    model = UNet2D(UNetConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, dict(payload.get("meta", {}))
