"""Reading a chest CT: DICOM series (folder or zip), NIfTI, MHA or NRRD -> :class:`Volume`.

The first stage of the pipeline. Everything downstream works on ``Volume.hu``,
an int16 array of Hounsfield units indexed (z, y, x), and uses the geometry kept
here (spacing, origin, direction) to put every output back in the source space.

pydicom parses the DICOM headers and decodes the pixel data (with the pylibjpeg
plugins for JPEG 2000, JPEG-LS, JPEG lossless and RLE -- chosen explicitly, see
:data:`DECODER_PREFERENCE`); SimpleITK reads the research formats. The checks
on a series are written here because no library gives an error a person can act
on ("slice 23 is missing between z=-120.0 and z=-110.0 mm") -- SimpleITK's
series reader silently sorts and stacks whatever it is given.

Identifiers in DICOM headers (names, IDs) are never put into a message or a log:
messages name files, tags and values of geometry only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from coviax.errors import GeometryError, NotCTError, PixelDataError, ScanError, UnsafeArchiveError

log = logging.getLogger(__name__)

#: Formats read with SimpleITK, by file name ending.
RESEARCH_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")

#: HU are clipped to this range: values below -1024 are padding outside the
#: reconstruction circle (-2000, -3024), values above 3071 are metal.
HU_MIN, HU_MAX = -1024, 3071

#: Limits that protect the reader from hostile or broken input (FIELD_NOTES:
#: check declared sizes against real bytes before decoding anything).
MAX_SLICE_PIXELS = 2048 * 2048
MAX_SLICES = 2000
MAX_ZIP_BYTES = 8 * 1024**3
MAX_ZIP_RATIO = 200

#: Relative tolerances for the geometry checks.
GAP_FACTOR = 1.5  # a gap larger than 1.5x the median spacing is a missing slice
DUPLICATE_FRACTION = 0.01  # two slices closer than 1 % of the spacing are duplicates
ORIENTATION_TOLERANCE = 1e-3

#: Deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99) is inflated whole by the parser; a file that
#: inflates past this is refused before it is parsed (a 2048 x 2048 16-bit slice is 8 MiB).
MAX_INFLATED_BYTES = 64 * 1024**2
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"

#: Data elements at the top level of an instance's data set; a CT image has a few hundred.
MAX_TOP_LEVEL_ELEMENTS = 20_000

#: Command elements (group 0000) tolerated at the start of a stored data set (PS3.10 allows none).
MAX_COMMAND_ELEMENTS = 64

#: Sequences nested deeper than this are refused (no CT header needs more than a few levels).
MAX_SEQUENCE_DEPTH = 64
#: Pixel spacing (mm) a CT image can have; values outside are a broken header.
PIXEL_SPACING_RANGE = (0.01, 50.0)

#: Exceptions a decoder must never turn into a job failure: the process is being stopped.
_PROCESS_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


@dataclass
class Volume:
    """A CT volume in Hounsfield units with its patient geometry.

    Attributes
    ----------
    hu:
        int16 array (z, y, x) in Hounsfield units, clipped to [-1024, 3071].
    spacing_zyx:
        voxel size in mm along (z, y, x).
    origin_xyz:
        patient position (LPS, mm) of the centre of voxel (0, 0, 0).
    direction:
        3x3 matrix whose columns are the patient (LPS) directions of the x, y and
        z array axes, as SimpleITK and DICOM define them.
    series_uid:
        SeriesInstanceUID of the source DICOM series (None for NIfTI and MHA).
    source_headers:
        the source DICOM datasets without pixel data, in the order of ``hu``'s
        z axis (the DICOM SEG references them). Empty for non-DICOM input.
    """

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    series_uid: str | None = None
    source_format: str = "array"
    source_path: str = ""
    source_headers: list[pydicom.Dataset] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0

    def index_to_patient(self, zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Patient coordinates (LPS, mm) of array indices (z, y, x); accepts (..., 3)."""
        zyx = np.asarray(zyx, dtype=np.float64)
        xyz_mm = zyx[..., ::-1] * np.asarray(self.spacing_zyx[::-1])
        return np.asarray(self.origin_xyz) + xyz_mm @ self.direction.T

    def to_sitk(self, array: np.ndarray | None = None):
        """A SimpleITK image of ``array`` (default: the HU) in this volume's geometry."""
        import SimpleITK as sitk  # lazy: the DICOM path does not need it (slim GPU hosts)

        image = sitk.GetImageFromArray(self.hu if array is None else array)
        image.SetSpacing(tuple(float(s) for s in self.spacing_zyx[::-1]))
        image.SetOrigin(tuple(float(o) for o in self.origin_xyz))
        image.SetDirection(tuple(float(d) for d in self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image, **kwargs) -> "Volume":
        import SimpleITK as sitk

        hu = sitk.GetArrayFromImage(image)
        return cls(
            hu=hu,
            spacing_zyx=tuple(float(s) for s in image.GetSpacing()[::-1]),
            origin_xyz=tuple(float(o) for o in image.GetOrigin()),
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
            **kwargs,
        )

    @property
    def superior_axis_sign(self) -> float:
        """+1 if increasing z index goes towards the head (S), -1 if towards the feet."""
        return float(np.sign(self.direction[2, 2]) or 1.0)


def read_scan(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a chest CT from a DICOM folder, a zip of DICOM files, or a NIfTI/MHA/NRRD file.

    Parameters
    ----------
    path:
        a folder (searched recursively), a ``.zip``, a single DICOM file (rejected:
        one slice is not a volume) or a NIfTI/MHA/NRRD file.
    series_uid:
        the SeriesInstanceUID to read when the input holds several series; by
        default the CT series with the most slices.

    Raises
    ------
    ScanError
        (and its subclasses) with a message naming the file, tag and value at fault.
    """
    path = Path(path)
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_folder(path, series_uid, display_root=path)
    name = path.name.lower()
    if name.endswith(".zip"):
        with tempfile.TemporaryDirectory(prefix="coviax-zip-") as tmp:
            safe_extract_zip(path, Path(tmp))
            volume = _read_dicom_folder(Path(tmp), series_uid, display_root=Path(tmp))
            volume.source_path = str(path)
            return volume
    if name.endswith(RESEARCH_SUFFIXES):
        return _read_research_image(path)
    # A lone file: DICOM or not, it cannot be a volume.
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ScanError(
            f"{path}: not a DICOM file, zip, folder or NIfTI/MHA/NRRD file ({exc.__class__.__name__})"
        ) from None
    raise GeometryError(
        f"{path}: a single DICOM slice; COViaX needs a volume (a folder or zip of the whole series)"
    )


# --------------------------------------------------------------------------- zip


def safe_extract_zip(archive: Path, target: Path) -> None:
    """Extract ``archive`` into ``target``, refusing path traversal, links and zip bombs.

    zipfile itself strips ``..`` from names on extraction, silently; we refuse the
    whole archive instead, because a member that tries to escape is a sign of a
    hostile or broken upload and the user should know.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ScanError(f"{archive}: not a valid zip archive ({exc})") from None
    with zf:
        total = 0
        target_resolved = target.resolve()
        for info in zf.infolist():
            member = info.filename
            dest = (target / member).resolve()
            if member.startswith(("/", "\\")) or ".." in Path(member).parts or not (
                dest == target_resolved or target_resolved in dest.parents
            ):
                raise UnsafeArchiveError(
                    f"{archive}: member {member!r} would be written outside the extraction folder; "
                    "refusing the archive"
                )
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchiveError(f"{archive}: member {member!r} is a symbolic link; refusing the archive")
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                raise UnsafeArchiveError(
                    f"{archive}: unpacks to more than {MAX_ZIP_BYTES // 1024**3} GiB; refusing the archive"
                )
            if info.compress_size and info.file_size / info.compress_size > MAX_ZIP_RATIO and info.file_size > 2**20:
                raise UnsafeArchiveError(
                    f"{archive}: member {member!r} expands {info.file_size / info.compress_size:.0f}x "
                    f"(limit {MAX_ZIP_RATIO}x); refusing a likely zip bomb"
                )
        for info in zf.infolist():
            if info.is_dir():
                continue
            dest = target / info.filename
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)


# ----------------------------------------------------------------- research files


def _read_research_image(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ScanError(f"{path}: cannot be read as an image ({first_line})") from None
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise GeometryError(
            f"{path}: image of size {image.GetSize()}; COViaX needs a 3D volume with at least 2 slices"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a grey CT")
    warnings: list[str] = []
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if abs(direction[2, 2]) < 0.8:
        # Not stored as axial slices: reorient losslessly (axis permutation and
        # flips only) so that the array's first axis runs along the body.
        image = sitk.DICOMOrient(image, "LPS")
        warnings.append(f"{path.name}: volume was not stored as axial slices; reoriented to LPS for analysis")
    raw = sitk.GetArrayFromImage(image).astype(np.float32)
    check_plausible_hu(raw, where=str(path), hint="If the file stores raw detector values, convert it to HU first.")
    image_hu = sitk.GetImageFromArray(np.clip(np.rint(raw), HU_MIN, HU_MAX).astype(np.int16))
    image_hu.CopyInformation(image)
    suffix = next(s for s in RESEARCH_SUFFIXES if path.name.lower().endswith(s))
    return Volume.from_sitk(
        image_hu, source_format=suffix.lstrip("."), source_path=str(path), warnings=warnings
    )


def check_plausible_hu(values: np.ndarray, where: str, hint: str) -> None:
    """Reject volumes whose values cannot be Hounsfield units of a chest CT.

    A chest CT always contains air (outside the body and in the lungs) near
    -1000 HU. Volumes with nothing below -200 are almost surely unrescaled raw
    values or a non-CT image, and would give all-empty lung masks (a known
    lungmask pitfall).
    """
    low = float(np.percentile(values[:: max(1, values.shape[0] // 8)], 1))
    if low > -200:
        raise ScanError(
            f"{where}: values are not plausibly Hounsfield units (1st percentile {low:.0f}, "
            f"minimum {float(values.min()):.0f}; air in a chest CT is near -1000 HU). {hint}"
        )


# ------------------------------------------------------------------------- DICOM


@dataclass
class _Slice:
    path: Path
    ds: pydicom.Dataset


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom_file(path: Path, display: str) -> pydicom.Dataset | None:
    """Parse one file; None if it is not DICOM at all, ScanError if it is DICOM but broken."""
    is_dicom = _has_dicom_preamble(path)
    if is_dicom:
        _check_before_parsing(path, display)
    try:
        ds = _parse_with_element_budget(path)
    except _TooManyElements:
        if not is_dicom:
            return None
        raise ScanError(f"{display}: more than {MAX_TOP_LEVEL_ELEMENTS} data elements in the header; a CT image "
                        "has a few hundred (a broken or hostile file)") from None
    except InvalidDicomError:
        if is_dicom:
            raise ScanError(f"{display}: corrupt DICOM file (has the DICM marker but cannot be parsed)") from None
        return None
    except zlib.error:
        if not is_dicom:
            return None
        raise ScanError(f"{display}: corrupt DICOM file (its deflated data set cannot be inflated)") from None
    except Exception as exc:  # any parser failure on these bytes (EOFError, ValueError, KeyError, struct.error, ...)
        if not is_dicom:
            return None
        raise ScanError(f"{display}: corrupt or truncated DICOM file ({_describe(exc)})") from None
    try:
        _check_pixel_data_length(ds, path, display)
        _check_elements(ds, display)
    except ScanError:
        if not is_dicom:
            return None
        raise
    meta = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds and (meta is None or "MediaStorageSOPClassUID" not in meta):
        # pydicom parses almost any bytes after a DICM marker; a file with no
        # SOP class in header or meta is not a usable DICOM object.
        if is_dicom:
            raise ScanError(f"{display}: corrupt DICOM file (DICM marker present but no SOP Class UID (0008,0016))")
        return None
    return ds


def _check_pixel_data_length(ds: pydicom.Dataset, path: Path, display: str) -> None:
    """Refuse a file that ends before the end of the pixel data its header declares (read deferred,
    the missing bytes would otherwise go unnoticed)."""
    from pydicom.dataelem import RawDataElement

    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("TransferSyntaxUID", "")) == _DEFLATED_TS:
        return  # offsets are in the inflated data set, not in the file
    try:
        raw = ds.get_item(0x7FE00010, keep_deferred=True)  # not read, not converted
    except Exception:  # a malformed element: _check_elements names it
        return
    if not isinstance(raw, RawDataElement) or raw.length == 0xFFFFFFFF or raw.value_tell is None:
        return
    missing = raw.value_tell + raw.length - path.stat().st_size
    if missing > 0:
        raise PixelDataError(f"{display}: truncated file: PixelData (7FE0,0010) declares {raw.length} bytes and "
                             f"the file ends {missing} bytes before their end")


def _check_elements(ds: pydicom.Dataset, display: str) -> None:
    """Convert every standard element now (a value that does not fit its VR fails here, with a name, not
    later as a pydicom exception) and refuse sequences nested deeper than MAX_SEQUENCE_DEPTH."""
    stack = [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        tag = None
        try:
            for tag in list(dataset.keys()):
                if tag.is_private:  # never read by COViaX; a vendor's odd private value must not refuse a scan
                    try:
                        elem = dataset[tag]
                    except Exception:
                        continue
                else:
                    elem = dataset[tag]
                if elem.VR == "SQ":
                    if depth + 1 > MAX_SEQUENCE_DEPTH:
                        raise ScanError(f"{display}: sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep "
                                        f"at {elem.tag}; refusing the file")
                    stack.extend((item, depth + 1) for item in elem.value)
        except ScanError:
            raise
        except Exception as exc:
            where = f"element {pydicom.tag.Tag(tag)}" if tag is not None else "an element"
            raise ScanError(f"{display}: corrupt DICOM file ({where} does not hold a valid value for its VR)") from None


def _describe(exc: BaseException) -> str:
    """A short description of a parser exception for a message: its text, cut to one line, with any bytes
    or quoted values it repeats from the file replaced (they could hold a patient's name)."""
    import re

    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    text = re.sub(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\"", "<bytes>", text)
    text = re.sub(r"'[^']*'", "'...'", text)
    return text or "unreadable"


def _check_before_parsing(path: Path, display: str) -> None:
    """Refuse, before pydicom parses it, a file whose parse would cost too much memory or time.

    - A deflated data set (1.2.840.10008.1.2.1.99) that inflates past MAX_INFLATED_BYTES: the parser
      inflates it whole.
    - More than MAX_COMMAND_ELEMENTS command elements (group 0000) at the start of the data set: pydicom
      reads those on its own, past the element budget of :func:`_parse_with_element_budget`, and 32 MiB of
      zeros are four million of them (PS3.10 7.1 allows none in a stored file).
    """
    import io

    from pydicom.filereader import _read_file_meta_info, data_element_generator

    try:
        with open(path, "rb") as f:
            f.seek(132)  # preamble and DICM marker
            syntax = str(_read_file_meta_info(f).get("TransferSyntaxUID", ""))
            data_set = io.BytesIO(_inflate_bounded(f, display)) if syntax == _DEFLATED_TS else f
            start = data_set.tell()
            if data_set.read(2) != b"\0\0":  # the first element is not in group 0000: the usual case
                return
            data_set.seek(start)
            elements = data_element_generator(data_set, is_implicit_VR=syntax == "1.2.840.10008.1.2",
                                              is_little_endian=syntax != "1.2.840.10008.1.2.2",
                                              stop_when=lambda tag, _vr, _length: tag.group != 0, defer_size=256)
            for count, _ in enumerate(elements, 1):
                if count > MAX_COMMAND_ELEMENTS:
                    raise ScanError(f"{display}: more than {MAX_COMMAND_ELEMENTS} command elements (group 0000) "
                                    "in the data set; a stored CT image has none (a broken or hostile file)")
    except ScanError:
        raise
    except Exception:  # a broken file meta or element: the parser reports it
        return


def _inflate_bounded(f, display: str) -> bytes:
    """The inflated data set of a deflated file, or ScanError past MAX_INFLATED_BYTES (a deflate bomb)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts, budget = [], MAX_INFLATED_BYTES + 1  # never 0 in a call: max_length=0 means "no limit"
    try:
        while budget > 0 and (block := f.read(1 << 16)):
            parts.append(inflater.decompress(block, budget))
            budget -= len(parts[-1])
            while budget > 0 and inflater.unconsumed_tail:
                parts.append(inflater.decompress(inflater.unconsumed_tail, budget))
                budget -= len(parts[-1])
    except zlib.error:
        raise ScanError(f"{display}: corrupt DICOM file (its deflated data set cannot be inflated)") from None
    if budget <= 0:
        raise ScanError(
            f"{display}: the deflated data set inflates to more than {MAX_INFLATED_BYTES // 1024**2} MiB; "
            "refusing a likely deflate bomb"
        )
    return b"".join(parts)


class _TooManyElements(Exception):
    """Raised from the parser's per-element callback past MAX_TOP_LEVEL_ELEMENTS."""


def _parse_with_element_budget(path: Path) -> pydicom.Dataset:
    """``pydicom.dcmread`` (pixel data deferred) that gives up past MAX_TOP_LEVEL_ELEMENTS elements.

    pydicom reads every element of the data set when it opens a file, about 10 us each: atheris found
    121 KB deflated into 32 MiB of empty elements that took it 20 s. A CT image's header has a few
    hundred. ``read_partial`` (what dcmread calls) asks ``stop_when`` about each top-level element
    before reading it; counting there costs nothing on a normal file and stops a hostile one at once.
    """
    from pydicom.filereader import read_partial
    from pydicom.misc import size_in_bytes

    seen = 0

    def count_element(_tag, _vr, _length) -> bool:
        nonlocal seen
        seen += 1
        if seen > MAX_TOP_LEVEL_ELEMENTS:
            raise _TooManyElements
        return False

    # Pixel data is read only when decoded (deferred), and dropped after decoding:
    # a 500-slice series then never holds its raw bytes and its HU at once.
    with open(path, "rb") as f:
        return read_partial(f, count_element, defer_size=size_in_bytes("64 KB"), force=False)


def _read_dicom_folder(root: Path, series_uid: str | None, display_root: Path) -> Volume:
    files = list(_iter_files(root))
    if not files:
        raise ScanError(f"{display_root}: the folder is empty; expected the DICOM files of a CT series")
    series: dict[str, list[_Slice]] = {}
    not_dicom: list[str] = []
    for path in files:
        display = str(path.relative_to(root)) if root != display_root else str(path)
        ds = _read_dicom_file(path, display)
        if ds is None:
            not_dicom.append(display)
            continue
        if str(getattr(ds, "SOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
            continue  # a DICOMDIR index; we walk the files themselves
        uid = str(getattr(ds, "SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        series.setdefault(uid, []).append(_Slice(path=Path(display), ds=ds))
    if not series:
        example = ", ".join(not_dicom[:3])
        raise ScanError(f"{display_root}: no DICOM files found among {len(files)} files (e.g. {example})")

    chosen_uid = _choose_series(series, series_uid, display_root)
    slices = series[chosen_uid]
    volume = _stack_series(slices, display_root)
    volume.series_uid = chosen_uid
    volume.source_path = str(display_root)
    if not_dicom:
        volume.warnings.append(f"{len(not_dicom)} non-DICOM files ignored (e.g. {not_dicom[0]})")
    if len(series) > 1:
        volume.warnings.append(f"{len(series)} series found; read {chosen_uid} ({len(slices)} slices)")
    return volume


def _is_localizer(ds: pydicom.Dataset) -> bool:
    image_type = [str(v).upper() for v in getattr(ds, "ImageType", [])]
    return "LOCALIZER" in image_type


def _choose_series(series: dict[str, list[_Slice]], wanted: str | None, where: Path) -> str:
    if wanted is not None:
        if wanted not in series:
            listing = "; ".join(f"{uid} ({len(s)} files)" for uid, s in series.items())
            raise ScanError(f"{where}: series {wanted} not found; series present: {listing}")
        slices = series[wanted]
        _require_ct(slices[0])
        return wanted
    ct = {uid: s for uid, s in series.items() if str(getattr(s[0].ds, "Modality", "")).upper() == "CT"}
    if not ct:
        first = next(iter(series.values()))[0]
        _require_ct(first)  # raises with the file name and the modality found
    axial = {uid: s for uid, s in ct.items() if not _is_localizer(s[0].ds)} or ct
    return max(axial, key=lambda uid: len(axial[uid]))


def _require_ct(s: _Slice) -> None:
    modality = str(getattr(s.ds, "Modality", "")) or "(absent)"
    if modality.upper() != "CT":
        raise NotCTError(
            f"{s.path}: Modality (0008,0060) is {modality!r}; COViaX analyses CT series only "
            "(lung density in Hounsfield units has no meaning in other modalities)"
        )


def _require(ds: pydicom.Dataset, keyword: str, tag: str, path: Path, why: str):
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        raise ScanError(f"{path}: missing {keyword} {tag}; {why}")
    return value


def _numbers(ds: pydicom.Dataset, keyword: str, tag: str, path: Path, why: str, count: int) -> np.ndarray:
    """The ``count`` finite numbers of a tag, or a ScanError naming the tag and what was found."""
    value = _require(ds, keyword, tag, path, why)
    try:
        values = np.asarray(value if count > 1 else [value], dtype=np.float64).ravel()
    except (ValueError, TypeError):
        raise ScanError(f"{path}: {keyword} {tag} is {str(value)[:80]!r}, not numbers; {why}") from None
    if values.size != count or not np.all(np.isfinite(values)):
        shown = [float(v) for v in values[:8]]
        raise ScanError(f"{path}: {keyword} {tag} is {shown}; expected {count} finite number(s) ({why})")
    return values


def _dimension(ds: pydicom.Dataset, keyword: str, tag: str, path: Path) -> int:
    value = int(_numbers(ds, keyword, tag, path, "cannot size the image", 1)[0])
    if value < 1:
        raise PixelDataError(f"{path}: {keyword} {tag} is {value}; an image needs at least one row and column")
    return value


def _plain(values: np.ndarray, decimals: int) -> list[float]:
    """Numbers for a message: plain Python floats (numpy 2 prints np.float64(...) otherwise)."""
    return [float(v) for v in np.round(values, decimals)]


def _stack_series(slices: list[_Slice], where: Path) -> Volume:
    """One volume from the slices of a series: checked, placed along the slice normal, decoded to HU."""
    _check_slices(slices, where)
    first = slices[0]
    iop0, rows, cols, pixel_spacing = _slice_grid(first)
    positions_xyz = _slice_positions(slices, iop0, rows, cols)
    row_cos, col_cos = iop0[:3], iop0[3:]
    normal = np.cross(row_cos, col_cos)
    if abs(normal[2]) < 0.8:
        raise GeometryError(
            f"{first.path}: slices are not axial (slice normal {_plain(normal, 3)}); "
            "COViaX analyses axial chest CT series"
        )
    slices, positions_xyz, median_step = _order_along(normal, slices, positions_xyz, where)
    hu = _decode_series(slices, rows, cols, where)
    headers = []
    for s in slices:
        header = s.ds.copy()
        if "PixelData" in header:
            del header.PixelData
        headers.append(header)
    origin = tuple(float(v) for v in positions_xyz[0])
    direction = np.stack([row_cos, col_cos, normal], axis=1)
    return Volume(
        hu=hu,
        spacing_zyx=(median_step, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin_xyz=origin,  # type: ignore[arg-type]
        direction=direction,
        source_format="dicom",
        source_headers=headers,
    )


def _check_slices(slices: list[_Slice], where: Path) -> None:
    """Every slice a single-frame CT image, and between 2 and MAX_SLICES of them."""
    for s in slices:
        _require_ct(s)
        if int(getattr(s.ds, "NumberOfFrames", 1) or 1) > 1:
            raise ScanError(
                f"{s.path}: a multi-frame (enhanced) CT image with {s.ds.NumberOfFrames} frames; "
                "COViaX reads single-frame CT series only. Convert with dcm2niix or export classic CT from the PACS."
            )
    if len(slices) < 2:
        raise GeometryError(
            f"{slices[0].path}: the series has a single slice; COViaX needs a volume (at least 2 slices, "
            "a chest CT has 50-1000)"
        )
    if len(slices) > MAX_SLICES:
        raise ScanError(f"{where}: {len(slices)} slices exceed the limit of {MAX_SLICES}")


def _slice_grid(first: _Slice) -> tuple[np.ndarray, int, int, np.ndarray]:
    """The first slice's orientation (6 cosines), rows, columns and pixel spacing, checked."""
    iop0 = _numbers(first.ds, "ImageOrientationPatient", "(0020,0037)", first.path, "cannot place the slices", 6)
    rows, cols = _dimension(first.ds, "Rows", "(0028,0010)", first.path), _dimension(
        first.ds, "Columns", "(0028,0011)", first.path)
    if rows * cols > MAX_SLICE_PIXELS:
        raise ScanError(f"{first.path}: Rows x Columns = {rows}x{cols} exceeds the limit of {MAX_SLICE_PIXELS} pixels")
    pixel_spacing = _numbers(first.ds, "PixelSpacing", "(0028,0030)", first.path, "cannot measure volumes", 2)
    low, high = PIXEL_SPACING_RANGE
    if np.any(pixel_spacing <= 0):
        raise GeometryError(
            f"{first.path}: PixelSpacing (0028,0030) is {_plain(pixel_spacing, 6)}; both values must be positive "
            "(mm between pixel centres); cannot measure volumes"
        )
    if np.any(pixel_spacing < low) or np.any(pixel_spacing > high):
        raise GeometryError(
            f"{first.path}: PixelSpacing (0028,0030) is {_plain(pixel_spacing, 6)} mm; a CT image has {low:g} to "
            f"{high:g} mm between pixel centres; cannot measure volumes"
        )
    return iop0, rows, cols, pixel_spacing


def _slice_positions(slices: list[_Slice], iop0: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    """Each slice's ImagePositionPatient, after checking it has the first slice's orientation and size."""
    first = slices[0]
    positions_xyz = []
    for s in slices:
        positions_xyz.append(_numbers(s.ds, "ImagePositionPatient", "(0020,0032)", s.path,
                                      "cannot place the slice in the volume", 3))
        iop = _numbers(s.ds, "ImageOrientationPatient", "(0020,0037)", s.path, "cannot place the slices", 6)
        if np.max(np.abs(iop - iop0)) > ORIENTATION_TOLERANCE:
            raise GeometryError(
                f"mixed orientations: {s.path} has ImageOrientationPatient {_plain(iop, 4)} but "
                f"{first.path} has {_plain(iop0, 4)}; one series must have one orientation"
            )
        if (_dimension(s.ds, "Rows", "(0028,0010)", s.path), _dimension(s.ds, "Columns", "(0028,0011)", s.path)) != (
                rows, cols):
            raise GeometryError(
                f"{s.path}: {s.ds.Rows}x{s.ds.Columns} pixels but {first.path} has {rows}x{cols}"
            )
    return positions_xyz


def _order_along(normal: np.ndarray, slices: list[_Slice], positions_xyz: list[np.ndarray],
                 where: Path) -> tuple[list[_Slice], list[np.ndarray], float]:
    """The slices sorted along the slice normal, with their positions and the median step (mm), after
    checking for duplicate positions and gaps."""
    positions = np.array([np.dot(p, normal) for p in positions_xyz])
    order = np.argsort(positions, kind="stable")
    slices = [slices[i] for i in order]
    positions_xyz = [positions_xyz[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions)
    median_step = float(np.median(steps))
    if median_step <= 0:
        raise GeometryError(f"{where}: all {len(slices)} slices share one position along the slice normal")
    for i, step in enumerate(steps):
        if step < DUPLICATE_FRACTION * median_step:
            raise GeometryError(
                f"duplicate slice position: {slices[i].path} and {slices[i + 1].path} are both at "
                f"{positions[i]:.2f} mm along the slice normal; remove the duplicate"
            )
        if step > GAP_FACTOR * median_step:
            missing = int(round(step / median_step)) - 1
            raise GeometryError(
                f"missing slice: a gap of {step:.2f} mm between {slices[i].path} ({positions[i]:.2f} mm) and "
                f"{slices[i + 1].path} ({positions[i + 1]:.2f} mm), {step / median_step:.1f}x the median "
                f"spacing of {median_step:.2f} mm (about {missing} slice(s) missing)"
            )
    return slices, positions_xyz, median_step


def _decode_series(slices: list[_Slice], rows: int, cols: int, where: Path) -> np.ndarray:
    """The HU volume (int16, z y x) of the ordered slices; each slice's raw pixel bytes are freed once
    decoded, and a sample of slices is checked for plausible HU."""
    hu = np.empty((len(slices), rows, cols), dtype=np.int16)
    samples = []
    for k, s in enumerate(slices):
        hu[k] = slice_to_hu(s.ds, s.path)
        if k % max(1, len(slices) // 8) == 0:
            samples.append(hu[k])
        del s.ds.PixelData  # decoded: free the raw bytes now (headers are kept for the SEG)
    check_plausible_hu(
        np.stack(samples),
        where=f"{where} (series of {len(slices)} slices)",
        hint="Check RescaleSlope (0028,1053) and RescaleIntercept (0028,1052): raw CT values need an "
        "intercept of about -1024.",
    )
    return hu


def slice_to_hu(ds: pydicom.Dataset, where: str | os.PathLike) -> np.ndarray:
    """The Hounsfield units (int16, rows x columns) of one single-frame CT instance.

    Decodes the pixel data (with :data:`DECODER_PREFERENCE`), applies RescaleSlope and
    RescaleIntercept, rounds and clips to [HU_MIN, HU_MAX]. The series reader and the
    service's streamed slices both use this, so a slice gets the same HU either way.
    ``where`` names the instance in error messages.

    Raises
    ------
    ScanError
        (PixelDataError for pixel data) naming the instance, the tag and the value at fault.
    """
    where = Path(where)
    pixels = _decode_pixels(ds, where)
    why = "cannot convert to Hounsfield units"
    slope = float(_numbers(ds, "RescaleSlope", "(0028,1053)", where, why, 1)[0])
    intercept = float(_numbers(ds, "RescaleIntercept", "(0028,1052)", where, why, 1)[0])
    if slope <= 0:
        raise ScanError(f"{where}: RescaleSlope (0028,1053) is {slope:g}; a CT's slope is positive "
                        f"(usually 1) ({why})")
    values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return np.clip(np.rint(values), HU_MIN, HU_MAX).astype(np.int16)


#: pydicom decoding plugins in the order we use them. pydicom itself prefers GDCM whenever python-gdcm is
#: installed; GDCM comes last here because its encoder has aborted our whole process (see
#: coviax/export/secondary_capture.py) and an abort in a decoder would take the service down with it.
DECODER_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", "gdcm")


def decoding_plugin(tsuid) -> str:
    """The pydicom plugin that decodes ``tsuid`` here ("" for uncompressed data or when none is installed,
    which lets pydicom raise its own error naming the missing packages)."""
    from pydicom.pixels import get_decoder

    if tsuid is None or not tsuid.is_compressed:
        return ""
    try:
        available = get_decoder(tsuid).available_plugins
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        return ""
    return next((p for p in DECODER_PREFERENCE if p in available), "")


def _decode_pixels(ds: pydicom.Dataset, where: Path) -> np.ndarray:
    """The stored pixel values of one instance; declared sizes are checked before anything is decoded."""
    if "PixelData" not in ds:
        raise PixelDataError(f"{where}: no pixel data (7FE0,0010); the file holds only a header")
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    ts_name = getattr(tsuid, "name", str(tsuid)) if tsuid is not None else "(no TransferSyntaxUID)"
    rows, cols = _dimension(ds, "Rows", "(0028,0010)", where), _dimension(ds, "Columns", "(0028,0011)", where)
    if rows * cols > MAX_SLICE_PIXELS:
        raise PixelDataError(f"{where}: Rows x Columns = {rows}x{cols} exceeds the limit of {MAX_SLICE_PIXELS} pixels")
    bits = int(_numbers(ds, "BitsAllocated", "(0028,0100)", where, "cannot read the pixels", 1)[0]) \
        if "BitsAllocated" in ds else 16
    samples = int(_numbers(ds, "SamplesPerPixel", "(0028,0002)", where, "cannot read the pixels", 1)[0]) \
        if "SamplesPerPixel" in ds else 1
    if bits not in (8, 16, 32) or samples != 1:
        raise PixelDataError(
            f"{where}: BitsAllocated (0028,0100) {bits} and SamplesPerPixel (0028,0002) {samples}; "
            "a CT slice has one sample of 8, 16 or 32 bits per pixel"
        )
    if tsuid is not None and not tsuid.is_compressed:
        expected = rows * cols * bits // 8
        try:
            actual = len(ds.PixelData)
        except Exception as exc:  # a deferred read of a truncated or vanished file
            raise PixelDataError(f"{where}: truncated or unreadable pixel data ({_describe(exc)})") from None
        if actual < expected:
            raise PixelDataError(
                f"{where}: truncated pixel data: {actual} bytes for Rows x Columns = {rows}x{cols} "
                f"at {bits} bits ({expected} bytes expected)"
            )
        if actual > expected + 1:  # one byte of padding to an even length is allowed
            raise PixelDataError(
                f"{where}: pixel data of {actual} bytes, more than Rows x Columns = {rows}x{cols} at {bits} bits "
                f"({expected} bytes); the image size or BitsAllocated (0028,0100) is wrong"
            )
    plugin = decoding_plugin(tsuid) if tsuid is not None else ""
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise PixelDataError(
            f"{where}: cannot decode pixel data in transfer syntax {ts_name} ({tsuid}): {_describe(exc)}. "
            "Install the pylibjpeg plugins or re-export the series uncompressed."
        ) from None
    except Exception as exc:  # ValueError, EOFError, OSError, and whatever else a decoder raises on bad bytes
        raise PixelDataError(f"{where}: corrupt pixel data in transfer syntax {ts_name}: {_describe(exc)}") from None
    except _PROCESS_EXITS:
        raise
    except BaseException:  # a decoder written in Rust panics with pyo3's PanicException, a BaseException
        raise PixelDataError(
            f"{where}: the {plugin or 'pydicom'} decoder crashed on the pixel data in transfer syntax {ts_name}; "
            "the data is corrupt or in a form the decoder cannot handle. Re-export the series uncompressed."
        ) from None
    if pixels.ndim != 2:
        raise PixelDataError(f"{where}: pixel data of shape {pixels.shape}; expected one grey 2D slice")
    return pixels
