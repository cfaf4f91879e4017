"""What a training step optimises and how an epoch is scored: the on-the-fly augmentation (:func:`augment`),
the noise-tolerant loss (:func:`loss_fn`: Dice + CE, or generalized cross-entropy), class weights,
and the Dice of the label groups (:func:`dice_scores`). Torch is imported inside each function, so the
driver imports this module without it."""

from __future__ import annotations

import math

import numpy as np

IGNORE = 255  # label value left out of the loss
HU_WIDTH = 1324.0  # 300 - (-1024): one normalised unit in HU
LUNG_LEVEL = (-600.0 + 1024.0) / HU_WIDTH  # contrast changes pivot around -600 HU


def augment(x, y, aug: dict, g):
    """Random flip/rotation/scale/translation (image bilinear, labels nearest), HU shift and contrast, blur, noise.

    ``x``: float (B, 1, S, S) in [0, 1]; ``y``: long (B, S, S). ``g``: a torch.Generator.
    """
    import torch
    from torch.nn import functional as F

    b = x.shape[0]

    def u(lo, hi, n=b):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    on = (torch.rand(b, generator=g) < aug["p"]).float()
    angle = torch.deg2rad(u(-aug["rotate_deg"], aug["rotate_deg"])) * on
    scale = 1 + (u(aug["scale"][0], aug["scale"][1]) - 1) * on
    flip = torch.where((torch.rand(b, generator=g) < 0.5) & (on > 0) & bool(aug["flip"]), -1.0, 1.0)
    tx = u(-aug["translate"], aug["translate"]) * 2 * on
    ty = u(-aug["translate"], aug["translate"]) * 2 * on
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()

    contrast = 1 + (u(aug["contrast"][0], aug["contrast"][1]) - 1) * on
    shift = u(-aug["hu_shift"], aug["hu_shift"]) / HU_WIDTH * on
    x = (x - LUNG_LEVEL) * contrast[:, None, None, None] + LUNG_LEVEL + shift[:, None, None, None]

    blur = (torch.rand(b, generator=g) < aug["blur_p"]) & (on > 0)
    if blur.any():
        for i in torch.nonzero(blur).flatten().tolist():
            sigma = float(u(aug["blur_sigma_px"][0], aug["blur_sigma_px"][1], 1))
            x[i : i + 1] = gaussian_blur(x[i : i + 1], sigma)
    if aug.get("streak_p", 0.0) > 0:
        x = x + streaks(b, x.shape[-1], aug, g)
    if aug.get("dependent_p", 0.0) > 0:
        x = x + dependent_density(y, aug, g)
    noise = u(aug["noise_hu"][0], aug["noise_hu"][1]) / HU_WIDTH * on
    x = x + torch.randn(x.shape, generator=g) * noise[:, None, None, None]
    return x.clamp(0.0, 1.0), y


def streaks(b: int, size: int, aug: dict, g):
    """Beam-hardening streaks (normalised units, B 1 S S): 3-9 lines through a random point of the upper
    half of the image, each a thin bright or dark band (1-2.5 px wide) fading with distance from the
    point over 15-60 % of the image; drawn for a share ``streak_p`` of the slices, zero elsewhere."""
    import torch

    out = torch.zeros(b, 1, size, size)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = coords[:, None], coords[None, :]
    for i in range(b):
        if float(torch.rand(1, generator=g)) >= aug["streak_p"]:
            continue
        cy, cx = 0.15 + 0.45 * float(torch.rand(1, generator=g)), 0.2 + 0.6 * float(torch.rand(1, generator=g))
        reach = 0.15 + 0.45 * float(torch.rand(1, generator=g))
        r = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        fade = torch.exp(-r / reach)
        for _ in range(int(torch.randint(3, 10, (1,), generator=g))):
            angle = math.pi * float(torch.rand(1, generator=g))
            width = (1.0 + 1.5 * float(torch.rand(1, generator=g))) / size
            dist = torch.abs((yy - cy) * math.cos(angle) - (xx - cx) * math.sin(angle))
            low, high = aug["streak_hu"]
            amp = (low + (high - low) * float(torch.rand(1, generator=g))) / HU_WIDTH
            sign = 1.0 if float(torch.rand(1, generator=g)) < 0.5 else -1.0
            out[i, 0] += sign * amp * torch.exp(-0.5 * (dist / width) ** 2) * fade
    return out


def dependent_density(y, aug: dict, g):
    """Denser dependent lung (normalised units, B 1 S S): healthy-lung pixels (label 1) of a share
    ``dependent_p`` of the slices gain ``dependent_hu`` at the posterior edge of each column's lung,
    fading over 4-12 % of the image towards anterior. Rows run anterior to posterior (serving's layout)."""
    import torch

    b, size = y.shape[0], y.shape[-1]
    out = torch.zeros(b, 1, size, size)
    rows = torch.arange(size, dtype=torch.float32)[:, None].expand(size, size)
    for i in range(b):
        lung = y[i] >= 1
        if float(torch.rand(1, generator=g)) >= aug["dependent_p"] or not bool(lung.any()):
            continue
        posterior = torch.where(lung, rows, torch.full_like(rows, -1.0)).amax(dim=0, keepdim=True)  # per column
        depth = (posterior - rows).clamp_min(0.0)
        fall = size * (0.04 + 0.08 * float(torch.rand(1, generator=g)))
        low, high = aug["dependent_hu"]
        amp = (low + (high - low) * float(torch.rand(1, generator=g))) / HU_WIDTH
        out[i, 0] = torch.where(y[i] == 1, amp * torch.exp(-depth / fall), torch.zeros_like(rows))
    return out


def gaussian_blur(x, sigma: float):
    import torch
    from torch.nn import functional as F

    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def loss_fn(logits, y, kind: str = "dice_ce", q: float = 0.7, dice_weight: float = 1.0, class_weights=None):
    """Dice + CE (default), generalized CE (``gce``, robust to label noise) or plain CE.

    ``class_weights`` (5 floats) weight the CE / GCE terms per true class, so
    that the rare classes (consolidation: ~0.2 % of pixels) are not ignored. The
    soft Dice is averaged over the foreground classes present in the batch: a
    class absent from a batch would otherwise only teach "never predict it".
    """
    import torch
    from torch.nn import functional as F

    w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    valid = y != IGNORE
    y0 = torch.where(valid, y, torch.zeros_like(y))
    if kind == "gce":
        p = torch.softmax(logits.float(), dim=1)
        py = p.gather(1, y0[:, None]).clamp_min(1e-6)[:, 0]
        per_pixel = (1 - py**q) / q
        wy = (w[y0] if w is not None else torch.ones_like(per_pixel)) * valid
        return (per_pixel * wy).sum() / wy.sum().clamp_min(1e-6)
    ce = F.cross_entropy(logits, y, weight=w, ignore_index=IGNORE) if bool(valid.any()) else logits.sum() * 0
    if kind == "ce":
        return ce
    p = torch.softmax(logits.float(), dim=1) * valid[:, None]
    onehot = F.one_hot(y0, p.shape[1]).permute(0, 3, 1, 2).float() * valid[:, None]
    inter = (p * onehot).sum(dim=(0, 2, 3))
    support = onehot.sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + support
    dice = (2 * inter + 1.0) / (denom + 1.0)
    present = support[1:] > 0  # classes 1..4: lung, vessel, GGO, consolidation
    if not bool(present.any()):
        return ce
    return ce + dice_weight * (1 - dice[1:][present].mean())


def class_weights_from(fractions: list[float], cap: float = 20.0) -> list[float]:
    """sqrt(1 / share) per class, scaled so that healthy lung weighs 1, capped; absent classes get the cap."""
    f = np.asarray(fractions, dtype=np.float64)
    ref = f[1] if f[1] > 0 else f.max()
    w = np.where(f > 0, np.sqrt(ref / np.maximum(f, 1e-12)), cap)
    return [float(v) for v in np.clip(w, 0.1, cap)]


def combine(raw, lung):
    """Network classes inside the lung mask (as serving's combine_with_lungs), torch or numpy."""
    import torch

    cavity = lung > 0
    out = torch.where(cavity, torch.ones_like(raw), torch.zeros_like(raw))
    return torch.where(cavity & (raw >= 2), raw, out)


LESION_DICE_CLASSES = (("ggo", (3,)), ("cons", (4,)), ("lesion", (3, 4)), ("vessel", (2,)))


def dice_scores(pred, truth, classes=LESION_DICE_CLASSES) -> dict:
    """Dice of each named group of label codes over a set of label maps (torch tensors); by default
    GGO, consolidation, lesion (both) and vessel."""
    out = {}
    for name, codes in classes:
        a = sum((pred == c) for c in codes).bool()
        b = sum((truth == c) for c in codes).bool()
        denom = int(a.sum() + b.sum())
        out[name] = float(2 * int((a & b).sum()) / denom) if denom else float("nan")
    return out
