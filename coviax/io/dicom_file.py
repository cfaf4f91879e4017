"""One DICOM file parsed safely: limits checked before pydicom parses it (deflate bombs, millions of
elements, command elements), every element converted once so that a bad value is named, truncated pixel
data refused. Pixel data is left deferred (:mod:`coviax.io.pixels` decodes it).

Identifiers in DICOM headers (names, IDs) are never put into a message: messages name files, tags and
values of geometry only (:func:`describe_exception`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from coviax.errors import PixelDataError, ScanError

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


@dataclass
class DicomSlice:
    path: Path
    ds: pydicom.Dataset


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom_file(path: Path, display: str) -> pydicom.Dataset | None:
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
        raise ScanError(f"{display}: corrupt or truncated DICOM file ({describe_exception(exc)})") from None
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


def describe_exception(exc: BaseException) -> str:
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
