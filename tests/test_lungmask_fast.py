"""Our batched lungmask path (coviax/lungs/lungmask_fast.py) against ``lungmask.LMInferer.apply``.

Two networks run through both paths: a cheap intensity "network" (dark = lung, split at the crop's
middle, with a wobble that makes many small components), so the whole real CT and a flipped
orientation are cheap to compare; and lungmask's own R231-shaped U-Net with random weights (seed 4,
last bias zero: the one of seeds 0-5 whose arg-max is not one class everywhere -- 46 / 9 / 45 % on
the real CT -- with small margins, so numerical differences would show) on 8 real slices.
Agreement is measured on the raw arg-max in lungmask's crop space (before post-processing) and on
the final masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coviax.io import Volume
from coviax.lungs import lungmask_fast, segment_lungs
from coviax.lungs.lungmask_adapter import LEFT_LOBES, RIGHT_LOBES

lm_utils = pytest.importorskip("lungmask.utils")


class IntensityNet(torch.nn.Module):
    def forward(self, x):
        s = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
        xx = torch.linspace(-1, 1, x.shape[-1])
        yy = torch.linspace(-1, 1, x.shape[-2])
        wobble = 0.04 * torch.sin(23 * xx)[None, None, None, :] * torch.cos(17 * yy)[None, None, :, None]
        dark = 0.35 - s + wobble
        right = (xx < 0).float()[None, None, None, :]
        logits = torch.cat([-dark, dark * right - (1 - right), dark * (1 - right) - right], 1)
        return torch.log_softmax(20 * logits, 1)


class ConvIntensityNet(IntensityNet):
    """The intensity network with its smoothing as a convolution, which autocast runs in bf16: its
    decisions have wide margins (unlike a random U-Net's), so bf16 must give the same masks."""

    def forward(self, x):
        kernel = torch.full((1, 1, 5, 5), 1 / 25, dtype=x.dtype)
        smooth = torch.nn.functional.conv2d(x, kernel, padding=2)
        return super().forward(smooth.float())


def random_weights(path, n_classes=3, seed=4):
    from lungmask.resunet import UNet

    torch.manual_seed(seed)
    net = UNet(n_classes=n_classes, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    torch.nn.init.zeros_(net.last.bias)
    torch.save(net.state_dict(), path)
    return path


def lminferer(image, monkeypatch, weights, model=None):
    """LMInferer.apply's result, its crop boxes and its label map before post-processing."""
    from lungmask import LMInferer

    seen = {}
    pre, post = lm_utils.preprocess, lm_utils.postprocessing

    def preprocess(img, resolution):
        out = pre(img, resolution)
        seen["boxes"] = np.asarray(out[1])
        return out

    def postprocessing(labels, **kwargs):
        seen["raw"] = labels.copy()
        return post(labels, **kwargs)

    monkeypatch.setattr(lm_utils, "preprocess", preprocess)
    monkeypatch.setattr(lm_utils, "postprocessing", postprocessing)
    inferer = LMInferer(modelpath=str(weights), force_cpu=True, tqdm_disable=True)
    if model is not None:
        inferer.model = model
    final = inferer.apply(image)
    monkeypatch.undo()
    return final, seen["boxes"], seen["raw"]


def _sub(volume, start, stop, flip=False):
    hu = volume.hu[start:stop]
    direction = volume.direction
    if flip:  # the same anatomy stored right-to-left and feet-to-head: not LPS
        hu = hu[::-1, :, ::-1]
        direction = direction @ np.diag([-1.0, 1.0, -1.0])
    return Volume(hu=np.ascontiguousarray(hu), spacing_zyx=volume.spacing_zyx,
                  origin_xyz=tuple(volume.index_to_patient((start, 0, 0))), direction=direction)


@pytest.fixture(scope="module")
def r231(tmp_path_factory):
    return random_weights(tmp_path_factory.mktemp("lm") / "unet_r231-d5d2fc3d.pth")


def test_whole_ct_with_an_intensity_network_agrees_with_lminferer(sample_volume, r231, monkeypatch):
    image = sample_volume.to_sitk()
    ref, boxes, raw = lminferer(image, monkeypatch, r231, IntensityNet())
    ours = lungmask_fast.segment(image, IntensityNet())
    assert np.array_equal(ours.boxes, boxes)  # the same body-mask crop on every slice
    assert (ours.raw == raw).mean() >= 0.9999
    assert (ours.labels == ref).mean() >= 0.9999
    counts = np.bincount(ref.ravel(), minlength=3) / ref.size
    assert counts[1] > 0.02 and counts[2] > 0.02  # both "lungs" non-trivial


def test_the_bf16_path_gives_lminferers_masks_for_a_network_with_margins(sample_volume, r231, monkeypatch):
    """bf16 autocast (what ``auto`` picks on CPUs with bf16 units) forced on any CPU: the same masks."""
    image = _sub(sample_volume, 16, 40).to_sitk()
    ref, _, raw = lminferer(image, monkeypatch, r231, ConvIntensityNet())
    ours = lungmask_fast.segment(image, ConvIntensityNet(), precision="bf16")
    assert ours.precision == "bf16"
    assert (ours.raw == raw).mean() >= 0.999
    assert (ours.labels == ref).mean() >= 0.999
    assert (ref > 0).mean() > 0.05


def test_a_flipped_orientation_comes_back_in_the_input_order(sample_volume, r231, monkeypatch):
    volume = _sub(sample_volume, 20, 44, flip=True)
    image = volume.to_sitk()
    ref, _, _ = lminferer(image, monkeypatch, r231, IntensityNet())
    ours = lungmask_fast.segment(image, IntensityNet())
    assert ours.labels.shape == volume.shape
    assert (ours.labels == ref).mean() >= 0.9999
    assert (ref > 0).mean() > 0.05


def test_random_r231_weights_agree_with_lminferer_on_real_slices(sample_volume, r231, monkeypatch):
    """Our arithmetic against lungmask's, both in fp32 on every CPU. Not ``auto``: on a CPU with bf16
    units ``auto`` is bf16, and this random network's top two logits differ by ~0.002 (median), far
    below bf16's resolution -- its arg-max then agrees on 82.7 % only, which says nothing about a
    trained network (bf16 is checked on decisions with margins below)."""
    image = _sub(sample_volume, 28, 36).to_sitk()
    ref, boxes, raw = lminferer(image, monkeypatch, r231)
    ours = lungmask_fast.segment(image, lungmask_fast.load_model(r231), precision="fp32")
    assert ours.precision == "fp32"
    assert np.array_equal(ours.boxes, boxes)
    fractions = np.bincount(raw.ravel(), minlength=3) / raw.size
    assert fractions.min() > 0.05, fractions  # the random network's arg-max is not one class
    assert (ours.raw == raw).mean() >= 0.995
    assert (ours.labels == ref).mean() >= 0.995
    assert 0 < (ref > 0).mean() < 0.9


def test_postprocessing_follows_lungmask_rules():
    raw = np.zeros((12, 40, 40), np.uint8)
    raw[2:10, 5:20, 5:35] = 1  # right lung, with a hole
    raw[5:7, 10:13, 10:13] = 0
    raw[2:10, 20:35, 5:35] = 2  # left lung
    raw[4:6, 10:13, 25:28] = 2  # a small left blob inside the right lung: merged into the right lung
    raw[0:2, 37:40, 0:3] = 1  # an isolated blob: dropped
    ours = lungmask_fast.postprocess(raw)
    ref = lm_utils.postprocessing(raw, disable_tqdm=True)
    assert np.array_equal(ours, ref)
    assert (ours[4:6, 10:13, 25:28] == 1).all() and (ours[5:7, 10:13, 10:13] == 1).all()
    assert not ours[0:2, 37:40, 0:3].any()
    rng = np.random.default_rng(0)  # a noisy label map with many components
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=(3, 24, 64, 64)), (0, 1.5, 2, 2))
    noisy = noise.argmax(0).astype(np.uint8)
    assert (lungmask_fast.postprocess(noisy) == lm_utils.postprocessing(noisy, disable_tqdm=True)).mean() >= 0.995


def test_the_adapter_runs_our_path_not_lminferer(sample_volume, tmp_path, monkeypatch):
    import lungmask

    def refuse(*args, **kwargs):
        raise AssertionError("LMInferer called")

    monkeypatch.setattr(lungmask, "LMInferer", refuse)
    monkeypatch.setattr("lungmask.mask.LMInferer", refuse)
    volume = _sub(sample_volume, 30, 32)
    weights = random_weights(tmp_path / "unet_ltrclobes-3a07043d.pth", n_classes=6, seed=1)
    mask = segment_lungs(volume, "lungmask", weights=str(weights))
    assert mask.method == "lungmask:LTRCLobes" and "batched" in mask.notes[1]
    assert mask.lobes is not None and mask.labels.shape == volume.shape
    assert np.array_equal(mask.labels == 1, np.isin(mask.lobes, RIGHT_LOBES))
    assert np.array_equal(mask.labels == 2, np.isin(mask.lobes, LEFT_LOBES))
