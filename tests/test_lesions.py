"""Lesion engines on synthetic lungs with known vessels, GGO and consolidation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coviax.errors import OptionError, WeightsNotFoundError
from coviax.labels import Label
from coviax.lesions import make_engine
from coviax.lesions.unet import UNetEngine, combine_with_lungs, resolve_weights
from coviax.lesions.unet_model import UNet2D, UNetConfig, load_checkpoint, save_checkpoint
from coviax.lungs import LungMask
from coviax.io import Volume


@pytest.fixture(scope="module")
def synthetic_chest():
    """A 'lung' of -850 HU with 6 vessels (+40 HU tubes), a GGO patch (-550) and a consolidation (-40)."""
    rng = np.random.default_rng(0)
    shape = (40, 96, 96)
    spacing = (1.5, 1.0, 1.0)
    hu = np.full(shape, -850.0) + rng.normal(0, 20, shape)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]]
    vessel = np.zeros(shape, bool)
    for cy, cx in [(20, 20), (20, 75), (75, 20), (48, 48), (30, 60), (70, 65)]:
        vessel |= (y - cy) ** 2 + (x - cx) ** 2 <= 2.0**2
    ggo = ((z - 20) / 8) ** 2 + ((y - 30) / 14) ** 2 + ((x - 35) / 14) ** 2 <= 1
    cons = ((z - 20) / 5) ** 2 + ((y - 70) / 8) ** 2 + ((x - 45) / 8) ** 2 <= 1
    hu[ggo] = -550 + rng.normal(0, 25, ggo.sum())
    hu[cons] = -40 + rng.normal(0, 20, cons.sum())
    hu[vessel] = 40
    lung = np.zeros(shape, np.uint8)
    lung[:, 4:92, 4:48] = 1
    lung[:, 4:92, 48:92] = 2
    volume = Volume(hu=np.round(hu).astype(np.int16), spacing_zyx=spacing)
    truth = {"vessel": vessel & ~ggo & ~cons, "ggo": ggo & ~vessel, "cons": cons & ~vessel}
    return volume, LungMask(labels=lung, method="synthetic"), truth


def test_threshold_engine_bands(synthetic_chest):
    volume, lungs, truth = synthetic_chest
    labels = make_engine("threshold").segment(volume, lungs).labels
    assert np.all(labels[~lungs.cavity] == Label.BACKGROUND)
    assert (labels[truth["ggo"]] == Label.GGO).mean() > 0.99
    assert (labels[truth["cons"]] == Label.CONSOLIDATION).mean() > 0.95


def test_kmeans_engine_names_the_clusters(synthetic_chest):
    volume, lungs, truth = synthetic_chest
    result = make_engine("kmeans").segment(volume, lungs)
    labels = result.labels
    assert result.engine == "kmeans"
    assert np.all(labels[~lungs.cavity] == Label.BACKGROUND)
    assert (labels[truth["ggo"]] == Label.GGO).mean() > 0.8
    assert (labels[truth["cons"]] == Label.CONSOLIDATION).mean() > 0.8
    assert (labels[truth["vessel"]] == Label.VESSEL).mean() > 0.6
    aerated = lungs.cavity & ~truth["ggo"] & ~truth["cons"] & ~truth["vessel"]
    assert (labels[aerated] == Label.HEALTHY_LUNG).mean() > 0.95


def test_kmeans_is_reproducible(synthetic_chest):
    volume, lungs, _ = synthetic_chest
    a = make_engine("kmeans", seed=3).segment(volume, lungs).labels
    b = make_engine("kmeans", seed=3).segment(volume, lungs).labels
    assert np.array_equal(a, b)


def test_kmeans_without_dense_voxels(synthetic_chest):
    volume, lungs, _ = synthetic_chest
    empty = Volume(hu=np.full(volume.shape, -900, np.int16), spacing_zyx=volume.spacing_zyx)
    result = make_engine("kmeans").segment(empty, lungs)
    assert set(np.unique(result.labels)) == {Label.BACKGROUND, Label.HEALTHY_LUNG}


@pytest.fixture()
def random_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "unet.pt"
    save_checkpoint(UNet2D(UNetConfig(depth=3, width=8, input_size=64)), path, meta={"name": "test-unet"})
    return path


def test_unet_engine_from_a_checkpoint(synthetic_chest, random_checkpoint):
    volume, lungs, _ = synthetic_chest
    engine = make_engine("unet", weights=str(random_checkpoint))
    result = engine.segment(volume, lungs)
    assert result.labels.shape == volume.shape
    assert set(np.unique(result.labels)) <= {0, 1, 2, 3, 4}
    assert np.all(result.labels[~lungs.cavity] == 0)
    assert np.all(result.labels[lungs.cavity] >= 1)
    assert result.model.startswith("test-unet@sha256:")
    raw = engine.predict_slices(volume.hu[:5])
    assert raw.shape == (5, 96, 96) and raw.dtype == np.uint8


def test_checkpoint_round_trip(random_checkpoint):
    model, meta = load_checkpoint(random_checkpoint)
    assert meta == {"name": "test-unet"} and model.config.depth == 3
    x = torch.zeros(1, 1, 64, 64)
    assert model(x).shape == (1, 5, 64, 64)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"hello": 1}, bad)
    with pytest.raises(WeightsNotFoundError, match="not a COViaX U-Net checkpoint"):
        make_engine("unet", weights=str(bad))


def test_missing_checkpoint_names_the_paths(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"no U-Net checkpoint found .*nope.pt.*--engine kmeans"):
        resolve_weights(str(tmp_path / "nope.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_gpu(random_checkpoint):
    with pytest.raises(OptionError, match="no usable CUDA GPU"):
        UNetEngine.from_checkpoint(str(random_checkpoint), device="cuda")


def test_unknown_engine():
    with pytest.raises(OptionError, match="unknown lesion engine 'magic'"):
        make_engine("magic")


def test_combine_with_lungs_keeps_the_cavity_from_the_lung_mask():
    raw = np.array([[[0, 1, 2, 3, 4, 3]]], np.uint8)
    cavity = np.array([[[1, 1, 1, 1, 1, 0]]], bool)
    assert combine_with_lungs(raw, cavity).tolist() == [[[1, 1, 2, 3, 4, 0]]]


def test_unet_sees_a_flipped_nifti_as_the_usual_axial_layout():
    """A volume stored turned by 180 degrees in-plane (direction diag(-1, -1, 1)) is shown to the network
    in the usual layout and its labels are turned back: a network that calls the anterior half of every
    slice GGO marks the anterior half of the stored array, which is its lower half here."""
    import torch

    from coviax.lesions.unet import UNetEngine, display_flips
    from coviax.lesions.unet_model import UNetConfig
    from coviax.io import Volume

    class AnteriorHalfIsGGO(torch.nn.Module):
        config = UNetConfig(depth=2, width=4, input_size=32)

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 5, *x.shape[-2:])
            logits[:, Label.GGO, : x.shape[-2] // 2] = 1.0
            return logits

    engine = UNetEngine(AnteriorHalfIsGGO(), precision="fp32")
    hu = np.full((2, 32, 32), -800, np.int16)
    usual = Volume(hu=hu, spacing_zyx=(2.0, 1.0, 1.0))
    turned = Volume(hu=hu.copy(), spacing_zyx=(2.0, 1.0, 1.0), direction=np.diag([-1.0, -1.0, 1.0]))
    assert display_flips(turned.direction)[1].step == -1 and display_flips(usual.direction)[1].step is None
    assert (engine.predict_volume(usual)[:, :16] == Label.GGO).all()
    assert (engine.predict_volume(turned)[:, 16:] == Label.GGO).all()
    assert not (engine.predict_volume(turned)[:, :16] == Label.GGO).any()
    assert (engine.predict_slices(turned.hu)[:, :16] == Label.GGO).all()  # without the flip: the wrong half
