"""A slice that is not square keeps its shape on the way into the U-Net (checkpoints with aspect "pad")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coviax.lesions.unet import UNetEngine
from coviax.lesions.unet_model import UNet2D, UNetConfig, square_padding
from coviax_trainer.data import SliceSet, to_network_arrays


def test_square_padding_splits_the_air_evenly():
    assert square_padding(167, 233, "pad") == (33, 33, 0, 0)
    assert square_padding(200, 151, "pad") == (0, 0, 24, 25)
    assert square_padding(167, 233, "stretch") == (0, 0, 0, 0)
    assert square_padding(64, 64, "pad") == (0, 0, 0, 0)


def test_unknown_aspect_is_refused():
    with pytest.raises(ValueError, match="aspect"):
        UNetConfig(aspect="crop")


class _Identity(torch.nn.Module):
    """Two 'classes' whose logits are the input itself and its negative: argmax shows where x > 0.5."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, x):
        return torch.cat([1.0 - x, x], dim=1)


def test_serving_and_training_place_a_non_square_slice_the_same_way():
    hu = np.full((1, 40, 100), -1024, np.int16)
    hu[0, 10:30, 20:30] = 300  # a bright box
    config = UNetConfig(depth=2, width=4, n_classes=2, input_size=64, aspect="pad")
    engine = UNetEngine(_Identity(config), precision="fp32")
    out = engine.predict_slices(hu)
    assert out.shape == (1, 40, 100)
    assert out[0, 12:28, 22:28].all() and not out[0, :, 40:].any()
    # training arrays: the slice padded with air to 100 x 100 then resized; the box keeps its aspect ratio
    arrays = to_network_arrays(SliceSet([hu[0]], [np.zeros((40, 100), np.uint8)], [np.zeros((40, 100), np.uint8)],
                                        ["s"], [0], [False]), 64, "pad")
    rows, cols = np.nonzero(arrays["x"][0] > 0.5)
    assert 0.8 < (rows.max() - rows.min() + 1) / (2 * (cols.max() - cols.min() + 1)) < 1.25  # 20 x 10 box stays 2:1
    assert arrays["x"][0, :15].max() == 0  # the padding is air
    real = UNetEngine(UNet2D(config), precision="fp32").predict_slices(hu)
    assert real.shape == (1, 40, 100)
