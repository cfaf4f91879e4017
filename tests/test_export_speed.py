"""The faster exports write what the plain ones wrote: the SEG file byte for byte as pydicom's save_as, the
label map and the scored lesions as before, and the threaded writers' artifacts in the table's order."""

from __future__ import annotations

import cc3d
import numpy as np
import pydicom

from coviax.export.dicom import seg as dicom_seg
from coviax.export.writers import WRITERS
from coviax.labels import Label
from coviax.pipeline import OUTPUTS, SegmentOptions, run
from coviax.scores import MIN_SCORED_LESION_ML, scored_lesions


def _labels(volume) -> np.ndarray:
    labels = np.zeros(volume.shape, np.uint8)
    z = volume.shape[0] // 2
    labels[z - 6 : z + 6, 150:350, 100:400] = Label.HEALTHY_LUNG
    labels[z - 4 : z + 4, 200:260, 150:200] = Label.GGO
    labels[z - 2 : z + 3, 280:300, 300:330] = Label.CONSOLIDATION
    return labels


def test_seg_file_is_byte_identical_to_save_as(sample_volume, tmp_path, monkeypatch):
    saved = {}
    fast = dicom_seg.save_fast

    def both(ds, path):
        fast(ds, path)
        ds.save_as(tmp_path / "reference.dcm")
        saved["path"] = path

    monkeypatch.setattr(dicom_seg, "save_fast", both)
    dicom_seg.write_dicom_seg(_labels(sample_volume), sample_volume, tmp_path / "seg.dcm", "unet")
    assert (tmp_path / "seg.dcm").read_bytes() == (tmp_path / "reference.dcm").read_bytes()
    ds = pydicom.dcmread(tmp_path / "seg.dcm")
    assert int(ds.NumberOfFrames) == len(ds.PerFrameFunctionalGroupsSequence) > 0


def test_label_map_numbers_segments_as_before():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 3, 4], np.uint8), size=(6, 20, 20))
    present = [1, 3, 4]  # no vessel: GGO becomes segment 2, consolidation 3
    expected = np.zeros_like(labels)
    for number, code in enumerate(present, start=1):
        expected[labels == code] = number
    assert np.array_equal(dicom_seg._label_map(labels, present, {0, 1, 3, 4}), expected)
    every = rng.integers(0, 5, size=(6, 20, 20), dtype=np.uint8)
    assert dicom_seg._label_map(every, [1, 2, 3, 4], {0, 1, 2, 3, 4}) is every  # codes are the numbers: no copy


def test_scored_lesions_are_cc3d_dust():
    rng = np.random.default_rng(1)
    lesion = np.zeros((40, 64, 64), bool)
    lesion[5:35, 10:50, 8:60] = rng.random((30, 40, 52)) > 0.93  # specks, some of them joined
    lesion[10:16, 20:26, 20:26] = True  # one blob above the threshold
    voxel_ml = MIN_SCORED_LESION_ML / 30
    expected = cc3d.dust(lesion, threshold=30, connectivity=26, in_place=False)
    assert np.array_equal(scored_lesions(lesion, voxel_ml), expected)
    assert expected.any() and not np.array_equal(expected, lesion)


def test_threaded_exports_keep_the_table_order(sample_volume, tmp_path):
    result = run(sample_volume, tmp_path, SegmentOptions(lungs="classical", engine="threshold", outputs=OUTPUTS))
    order = [name for name, _writer in WRITERS]
    first_of = {"labels_nifti": "nifti", "dicom_seg": "seg", "montage": "png", "mesh_glb": "mesh",
                "report_html": "html", "report_pdf": "pdf", "dicom_sc": "sc", "dicom_sr": "sr"}
    seen = [order.index(first_of[k]) for k in result.artifacts if k in first_of]
    assert seen == sorted(seen) and len(seen) == len(first_of)
    assert list(result.report["artifacts"])[-1] == "report"
    assert all(path.is_file() and path.stat().st_size > 0 for path in result.artifacts.values())
