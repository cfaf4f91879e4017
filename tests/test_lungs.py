"""Lung masks: the classical method on the real CT, and the lungmask adapter with local weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coviax.errors import OptionError, WeightsNotFoundError
from coviax.labels import LEFT_LUNG, RIGHT_LUNG
from coviax.lungs import segment_lungs
from coviax.lungs.lungmask_adapter import WEIGHT_FILES
from coviax.io import Volume


def test_classical_lungs_on_the_real_ct(sample_volume, sample_lungs):
    counts = sample_lungs.voxel_counts()
    ml = sample_volume.voxel_volume_ml
    right, left = counts["right"] * ml / 1000, counts["left"] * ml / 1000
    assert 2.0 <= right + left <= 8.0  # litres, an adult
    assert 0.35 < right / (right + left) < 0.7  # the right lung is usually a little larger
    # the right lung lies on the patient's right: smaller LPS x than the left lung
    zr, yr, xr = np.nonzero(sample_lungs.labels == RIGHT_LUNG)
    zl, yl, xl = np.nonzero(sample_lungs.labels == LEFT_LUNG)
    x_right = sample_volume.index_to_patient([zr.mean(), yr.mean(), xr.mean()])[0]
    x_left = sample_volume.index_to_patient([zl.mean(), yl.mean(), xl.mean()])[0]
    assert x_right < x_left
    # the trachea (air at the top slice centre, outside the lungs) is not lung
    top = sample_volume.shape[0] - 1
    air = sample_volume.hu[top] < -900
    ys, xs = np.nonzero(air[150:350, 180:330])
    assert len(ys) > 20  # there is a trachea in the top slice
    assert not sample_lungs.labels[top, ys + 150, xs + 180].any()
    assert sample_lungs.method == "classical"


def test_classical_lungs_keep_a_dense_pleural_lesion(sample_volume, sample_lungs):
    """A consolidation against the chest wall must stay inside the lung mask."""
    hu = sample_volume.hu.copy()
    z = 30
    lung = sample_lungs.labels[z] == RIGHT_LUNG
    ys, xs = np.nonzero(lung)
    # the most lateral lung pixel row-wise: the pleura; put a 12 mm half-disk of +30 HU there
    i = np.argmin(xs)
    cy, cx = ys[i], xs[i]
    yy, xx = np.mgrid[: hu.shape[1], : hu.shape[2]]
    r = 12 / sample_volume.spacing_zyx[1]
    lesion = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2) & lung
    hu[z - 1 : z + 2][:, lesion] = 30
    v = Volume(hu=hu, spacing_zyx=sample_volume.spacing_zyx, origin_xyz=sample_volume.origin_xyz,
               direction=sample_volume.direction)
    mask = segment_lungs(v, "classical")
    kept = mask.labels[z][lesion] > 0
    # The 20 mm closing restores most of it; on the convex costal surface the
    # outermost millimetres (between the chord and the chest wall) are lost --
    # a documented limit of the classical method.
    assert kept.mean() > 0.5
    from coviax.lungs import classical

    no_fill = classical._largest_air_components((hu < classical.AIR_HU) & classical.body_mask(hu), v.voxel_volume_ml)
    assert not no_fill[z][lesion].any()  # without the fill step none of it would be lung


def _small(volume: Volume, n=4) -> Volume:
    mid = volume.shape[0] // 2
    return Volume(hu=volume.hu[mid : mid + n].copy(), spacing_zyx=volume.spacing_zyx,
                  origin_xyz=tuple(volume.index_to_patient((mid, 0, 0))), direction=volume.direction)


@pytest.fixture()
def lungmask_weights(tmp_path, monkeypatch):
    """A randomly initialised R231-shaped state dict in a private torch hub cache (no download)."""
    from lungmask.resunet import UNet

    torch.manual_seed(0)
    net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path = checkpoints / WEIGHT_FILES["R231"]
    torch.save(net.state_dict(), path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("COVIAX_LUNGMASK_WEIGHTS", raising=False)
    return path


def test_lungmask_adapter_runs_with_local_weights(sample_volume, lungmask_weights):
    small = _small(sample_volume)
    mask = segment_lungs(small, "auto")
    assert mask.method == "lungmask:R231"
    assert mask.labels.shape == small.shape and mask.labels.dtype == np.uint8
    assert set(np.unique(mask.labels)) <= {0, 1, 2}
    assert "unet_r231" in mask.notes[0]


def test_lungmask_explicit_file(sample_volume, lungmask_weights, tmp_path):
    other = tmp_path / "my_r231.pth"
    other.write_bytes(lungmask_weights.read_bytes())
    mask = segment_lungs(_small(sample_volume, 2), "lungmask", weights=str(other))
    assert mask.method == "lungmask:R231"


def test_lungmask_without_weights_fails_clearly(sample_volume, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("COVIAX_LUNGMASK_WEIGHTS", raising=False)
    with pytest.raises(WeightsNotFoundError, match=r"lungmask weights for R231 not found .*unet_r231-d5d2fc3d.pth"):
        segment_lungs(_small(sample_volume, 2), "lungmask")


def test_lungmask_with_a_broken_file(sample_volume, tmp_path):
    bad = tmp_path / "r231.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(WeightsNotFoundError, match="not a usable lungmask state dict"):
        segment_lungs(_small(sample_volume, 2), "lungmask", weights=str(bad))


def test_auto_without_lungmask_weights_uses_the_hybrid_and_says_so(sample_volume, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("COVIAX_LUNGMASK_WEIGHTS", raising=False)
    mask = segment_lungs(sample_volume, "auto")
    assert mask.method == "hybrid"
    assert "lungmask weights not found" in mask.notes[0] and "used our lung network joined with the classical" in mask.notes[0]
    assert any(n.startswith("classical method joined:") for n in mask.notes)
    network = segment_lungs(sample_volume, "unet").cavity
    classical = segment_lungs(sample_volume, "classical").cavity
    from coviax.lungs.hybrid import ENHANCED_HU

    kept = network | (classical & (sample_volume.hu <= ENHANCED_HU))
    assert (mask.cavity >= kept).all()  # the union (holes filled on top): nothing either kept lost but blood
    blood = classical & ~network & (sample_volume.hu > ENHANCED_HU)
    assert (mask.cavity & blood).sum() < blood.sum()  # left out unless a hole fill encloses it
    litres = mask.cavity.sum() * sample_volume.voxel_volume_ml / 1000
    assert 3.0 < litres < 6.0  # this adult's lungs (the classical method: 4.2-5.5 L with or without closing)
    counts = mask.voxel_counts()
    assert 0.35 < counts["right"] / (counts["right"] + counts["left"]) < 0.7


def test_unknown_method():
    with pytest.raises(OptionError, match="unknown lung method 'magic'"):
        segment_lungs(None, "magic")


# ----------------------------------------------------------------------------- our lung network


def _tiny_checkpoint(path, n_classes: int) -> str:
    from coviax.lesions.unet_model import UNet2D, UNetConfig, save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(UNet2D(UNetConfig(depth=2, width=4, n_classes=n_classes, input_size=32)), path)
    return str(path)


def test_lung_network_loads_a_local_checkpoint_and_refuses_a_lesion_network(tmp_path):
    volume = Volume(hu=np.full((3, 32, 32), -800, np.int16), spacing_zyx=(2.0, 1.0, 1.0))
    mask = segment_lungs(volume, "unet", weights=_tiny_checkpoint(tmp_path / "lungs.pt", 2))
    assert mask.method == "unet" and mask.labels.shape == volume.shape and mask.labels.dtype == np.uint8
    assert any("lung network" in note for note in mask.notes)
    with pytest.raises(WeightsNotFoundError, match="5-class network, not a lung network"):
        segment_lungs(volume, "unet", weights=_tiny_checkpoint(tmp_path / "lesions.pt", 5))
    with pytest.raises(WeightsNotFoundError, match="--lungs classical"):
        segment_lungs(volume, "unet", weights=str(tmp_path / "absent.pt"))


def test_lung_network_keeps_the_two_lung_sized_parts():
    from coviax.lungs.unet import keep_lung_components

    mask = np.zeros((10, 60, 60), bool)
    mask[:, 5:30, 5:25] = True  # 5000 voxels
    mask[:, 5:30, 35:55] = True  # 5000 voxels
    mask[:, 50:53, 50:53] = True  # 90 voxels: bowel gas, a speck
    kept = keep_lung_components(mask, voxel_ml=0.02)  # lungs of 100 mL each, the speck 1.8 mL
    assert kept.sum() == 10000 and not kept[:, 50:53, 50:53].any()
    assert not keep_lung_components(mask, voxel_ml=0.001).any()  # 5 mL "lungs" are too small


def test_auto_falls_back_to_classical_without_any_lung_weights(sample_volume, monkeypatch, tmp_path):
    from coviax.lungs import lungmask_adapter, unet

    monkeypatch.setattr(unet, "SHIPPED_LUNG_WEIGHTS", tmp_path / "absent.pt")
    monkeypatch.delenv(unet.ENV_VAR, raising=False)
    monkeypatch.setattr(lungmask_adapter, "find_weights", lambda *a, **k: None)
    mask = segment_lungs(sample_volume, "auto")
    assert mask.method == "classical"
    assert "no lung network checkpoint" in mask.notes[0] and "used the classical method" in mask.notes[0]


def test_lung_network_drops_soft_tissue_islands_but_keeps_consolidation_attached_to_lung():
    from coviax.lungs.unet import drop_unaerated_islands

    hu = np.full((1, 40, 40), 40, np.int16)  # soft tissue
    mask = np.zeros(hu.shape, bool)
    mask[0, 5:20, 5:20] = True  # lung with a dense lesion at its edge
    hu[0, 5:20, 5:15] = -850
    mask[0, 25:35, 25:35] = True  # an island of liver the network called lung
    kept = drop_unaerated_islands(mask, hu)
    assert kept[0, 5:20, 5:20].all()  # the consolidated third stays with its aerated lung
    assert not kept[0, 25:35, 25:35].any()


def test_thin_slice_scans_find_topology_on_a_coarse_grid_and_the_outline_at_full_resolution(
        sample_volume, sample_lungs, monkeypatch):
    """Scans above COARSE_ABOVE_VOXELS (thin slices) run body, air components, airways and the
    right/left cut on every second pixel; the outline comes back on the full grid. Forced here on the
    bundled CT, the lungs must stay those of the full-resolution method."""
    from coviax.lungs import grid

    monkeypatch.setattr(grid, "COARSE_ABOVE_VOXELS", 1_000_000)
    assert grid.coarse_step(sample_volume.spacing_zyx, sample_volume.shape) == (1, 2, 2)
    coarse = segment_lungs(sample_volume, "classical").labels
    full = sample_lungs.labels
    both = (coarse > 0) & (full > 0)
    dice = 2 * both.sum() / ((coarse > 0).sum() + (full > 0).sum())
    assert dice > 0.97, dice
    assert abs(int((coarse > 0).sum()) / int((full > 0).sum()) - 1) < 0.04
    # Right stays right and left stays left nearly everywhere.
    assert (coarse[both] == full[both]).mean() > 0.98
    for lung in (RIGHT_LUNG, LEFT_LUNG):
        assert (coarse == lung).sum() > 0.3 * (full == lung).sum()


def test_coarse_grid_round_trip():
    from coviax.lungs.grid import to_coarse, to_fine

    array = np.arange(5 * 7 * 9).reshape(5, 7, 9)
    step = (2, 3, 2)
    fine = to_fine(to_coarse(array, step), step, array.shape)
    assert fine.shape == array.shape
    assert fine[4, 6, 8] == array[4, 6, 8]  # a sampled voxel keeps its value
    assert fine[1, 2, 1] == array[0, 0, 0]  # the others take the value of their block's sample
