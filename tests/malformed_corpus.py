"""A generated corpus of malformed CT uploads (issue 13): every class of bad input we know of.

Each :class:`Case` is a small scan (six 128 x 128 slices of the real chest CT,
``service_support.make_small_series``) with one or all instances broken in one
way. The service must answer every case INVALID_ARGUMENT or RESOURCE_EXHAUSTED
(``tests/test_service_corpus.py``). Classes:

- ``truncated``: the middle instance cut at every structural point (preamble,
  marker, each element's tag, VR/length and value);
- ``length``: wrong value lengths (odd, 0, undefined, past the end) of key elements;
- ``vr``: key elements given another VR;
- ``nested``: sequences nested past 64 levels;
- ``dims``: 46341 x 46341 and 65535 x 65535 images, 0 rows;
- ``bits``: BitsAllocated / BitsStored / PixelRepresentation that do not fit;
- ``pixels``: pixel data shorter or longer than declared;
- ``compressed``: RLE, JPEG-LS, JPEG 2000 and JPEG lossless data truncated,
  corrupted, emptied, or uncompressed data under a compressed transfer syntax;
- ``deflate``: deflate bombs and corrupt deflated data sets;
- ``zip``: zip archives (bombs, path traversal) sent as instances;
- ``geometry``: NaN, inf, 0 and negative spacing, positions, orientations, rescale;
- ``polyglot``: a DICM marker over bytes of other formats;
- ``modality``: MR, CR, secondary capture, no modality; multi-frame.

Made by code (``cases(series_dir)``), not by hand, so the corpus grows with the classes.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

VICTIM = 2  # the instance broken when a case breaks one: inside the series, so that losing it is a gap
EXPECTED = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}


@dataclass
class Case:
    name: str  # "class/variant"
    instances: list[bytes]  # in upload order

    @property
    def kind(self) -> str:
        return self.name.split("/", 1)[0]


def _elements(data: bytes) -> list[tuple[int, int, int, bytes, int]]:
    """(tag, header start, value start, VR, length) of every top-level element of an explicit-VR LE file."""
    out = []
    f = io.BytesIO(data)
    f.seek(132)
    for elem in data_element_generator(f, False, True, defer_size=256):
        head = 12 if elem.VR.encode() in _LONG_VRS else 8
        if hasattr(elem, "value_tell"):
            out.append((int(elem.tag), elem.value_tell - head, elem.value_tell, elem.VR.encode(), elem.length))
        else:  # a sequence, parsed: file_tell is where its value starts; its length is not kept
            out.append((int(elem.tag), elem.file_tell - head, elem.file_tell, elem.VR.encode(), 0))
    return out


def _dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _save(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _with(series: list[bytes], broken, everywhere: bool = False) -> list[bytes]:
    """The series with the victim (or every instance) replaced by ``broken(bytes)``."""
    return [broken(b) if everywhere or i == VICTIM else b for i, b in enumerate(series)]


def _edit(**attrs):
    def edit(data: bytes) -> bytes:
        ds = _dataset(data)
        for key, value in attrs.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        return _save(ds)

    return edit


# ---------------------------------------------------------------------------- classes


def _truncated(series):
    data = series[VICTIM]
    points = {0, 64, 128, 130, 132, 136, 140}
    for tag, head, value, vr, length in _elements(data):
        points |= {head, head + 6, value + max(length, 0) // 2}  # the tag, the length, the value
    for cut in sorted(p for p in points if 0 <= p < len(data) - 1):
        yield Case(f"truncated/at-{cut}", _with(series, lambda b, c=cut: b[:c]))


_KEY_TAGS = {
    0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated", 0x00280030: "PixelSpacing",
    0x00281053: "RescaleSlope", 0x00281052: "RescaleIntercept", 0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient", 0x7FE00010: "PixelData", 0x00080060: "Modality",
}


def _set_length(data: bytes, head: int, vr: bytes, length: int) -> bytes:
    if vr in _LONG_VRS:
        return data[:head + 8] + struct.pack("<I", length & 0xFFFFFFFF) + data[head + 12:]
    return data[:head + 6] + struct.pack("<H", length & 0xFFFF) + data[head + 8:]


def _length(series):
    data = series[VICTIM]
    for tag, head, value, vr, length in _elements(data):
        if tag not in _KEY_TAGS:
            continue
        name = _KEY_TAGS[tag]
        big = 0xFFFFFFF0 if vr in _LONG_VRS else 0xFFF0
        for label, new in (("odd", length + 1), ("zero", 0), ("past-end", big), ("undefined", 0xFFFFFFFF),
                           ("short", max(length - 2, 1))):
            if new == length or (name, label) == ("PixelData", "past-end"):
                # PixelData declared past the end of the file: pydicom reads the bytes that are there, which
                # are exactly Rows x Columns x 2; the image is complete and right, so there is nothing to refuse.
                continue
            yield Case(f"length/{name}-{label}", _with(series, lambda b, h=head, v=vr, n=new: _set_length(b, h, v, n)))


def _vr(series):
    data = series[VICTIM]
    for tag, head, value, vr, length in _elements(data):
        if tag not in _KEY_TAGS or tag == 0x7FE00010:
            continue
        for new in (b"SQ", b"UN", b"FD"):
            if new != vr:
                yield Case(f"vr/{_KEY_TAGS[tag]}-as-{new.decode()}",
                           _with(series, lambda b, h=head, n=new: b[:h + 4] + n + b[h + 6:]))


def _nested(series):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    for depth in (65, 200, 5000):
        def nest(data, depth=depth):
            ds = _dataset(data)
            inner = Dataset()
            inner.CodeValue = "X"
            for _ in range(depth):
                outer = Dataset()
                outer.ContentSequence = Sequence([inner])
                inner = outer
            ds.ContentSequence = inner.ContentSequence
            try:
                return _save(ds)
            except RecursionError:  # pydicom cannot write it that deep: build the bytes by hand
                return _deep_bytes(data, depth)

        yield Case(f"nested/depth-{depth}", _with(series, nest))


def _deep_bytes(data: bytes, depth: int) -> bytes:
    """``data`` with a ContentSequence (0040,A730) of undefined length nested ``depth`` deep, written by hand."""
    item_start, item_end, seq_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00", \
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    seq_head = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff"
    body = seq_head + item_start
    for _ in range(depth - 1):
        body += seq_head + item_start
    body += (item_end + seq_end) * depth
    pixel_at = next(h for t, h, v, vr, n in _elements(data) if t == 0x7FE00010)
    return data[:pixel_at] + body + data[pixel_at:]


def _dims(series):
    for rows, cols in ((46341, 46341), (65535, 65535), (0, 128), (128, 0)):
        for everywhere in (False, True):
            yield Case(f"dims/{rows}x{cols}-{'all' if everywhere else 'one'}",
                       _with(series, _edit(Rows=rows, Columns=cols), everywhere))


def _bits(series):
    for label, attrs in (("stored-20-of-16", {"BitsStored": 20, "HighBit": 19}),
                         ("allocated-8", {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}),
                         ("allocated-1", {"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0}),
                         ("allocated-12", {"BitsAllocated": 12}),
                         ("allocated-64", {"BitsAllocated": 64}),
                         ("representation-2", {"PixelRepresentation": 2}),
                         ("samples-3", {"SamplesPerPixel": 3}),
                         ("no-bits", {"BitsAllocated": None})):
        yield Case(f"bits/{label}", _with(series, _edit(**attrs), everywhere=True))


def _pixels(series):
    def resize(data, n):
        ds = _dataset(data)
        pixels = ds.PixelData
        ds.PixelData = pixels[:n] if n < len(pixels) else pixels + b"\0" * (n - len(pixels))
        return _save(ds)

    size = 128 * 128 * 2
    for label, n in (("empty", 0), ("one-byte", 2), ("half", size // 2), ("short-2", size - 2),
                     ("long-1000", size + 1000), ("double", size * 2)):
        yield Case(f"pixels/{label}", _with(series, lambda b, n=n: resize(b, n)))
    yield Case("pixels/absent", _with(series, _edit(PixelData=None)))


def _compressed(series):
    from pydicom.encaps import generate_fragments

    syntaxes = (("rle", RLELossless), ("jpeg-ls", JPEGLSLossless), ("jpeg2000", JPEG2000Lossless))

    def mangle(data, syntax, how):
        ds = _dataset(data)
        ds.compress(syntax)
        fragment = next(generate_fragments(ds.PixelData))
        if how == "truncated":
            fragment = fragment[: len(fragment) // 3]
        elif how == "header-zeroed":
            fragment = b"\0" * 64 + fragment[64:]
        elif how == "tail-garbage":
            fragment = fragment[: len(fragment) // 2] + bytes(range(256)) * 4
        elif how == "tiny":
            fragment = fragment[:8]
        elif how == "empty":
            fragment = b""
        fragment += b"\0" * (len(fragment) % 2)
        ds.PixelData = (b"\xfe\xff\x00\xe0\0\0\0\0" + b"\xfe\xff\x00\xe0" + struct.pack("<I", len(fragment))
                        + fragment + b"\xfe\xff\xdd\xe0\0\0\0\0")  # offset table, one fragment, end
        return _save(ds)

    for label, syntax in syntaxes:
        for how in ("truncated", "header-zeroed", "tail-garbage", "tiny", "empty"):
            yield Case(f"compressed/{label}-{how}", _with(series, lambda b, s=syntax, h=how: mangle(b, s, h)))

    def claim(data, syntax):
        ds = _dataset(data)
        ds.file_meta.TransferSyntaxUID = syntax
        return _save_raw_claim(ds, data)

    for label, syntax in syntaxes:
        yield Case(f"compressed/{label}-claimed-on-raw", _with(series, lambda b, s=syntax: claim(b, s)))


def _save_raw_claim(ds, data: bytes) -> bytes:
    """``data`` (explicit VR LE) with only its TransferSyntaxUID changed to ``ds``'s: the pixels stay raw."""
    uid = str(ds.file_meta.TransferSyntaxUID).encode()
    uid += b"\0" * (len(uid) % 2)
    for tag, head, value, vr, length in _elements(data):
        if tag == 0x00020010:
            new = data[:head + 6] + struct.pack("<H", len(uid)) + uid + data[value + length:]
            delta = len(uid) - length
            for t2, h2, v2, vr2, n2 in _elements(data):
                if t2 == 0x00020000:  # group length
                    old = struct.unpack("<I", data[v2:v2 + 4])[0]
                    new = new[:v2] + struct.pack("<I", old + delta) + new[v2 + 4:]
            return new
    raise ValueError("no TransferSyntaxUID")


def _deflate(series):
    def deflated(data, payload=None, corrupt=False):
        ds = _dataset(data)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        out = _save(ds)
        meta_end = 132 + 12 + struct.unpack("<I", out[140:144])[0]
        if payload is not None:
            c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            out = out[:meta_end] + c.compress(payload) + c.flush()
        if corrupt:
            out = out[:meta_end] + b"\xff" * 64 + out[meta_end + 64:]
        return out

    yield Case("deflate/bomb-80MiB-zeros", _with(series, lambda b: deflated(b, payload=b"\0" * (80 << 20))))
    yield Case("deflate/bomb-256MiB-streamed", _with(series, _deflate_bomb))
    yield Case("deflate/corrupt", _with(series, lambda b: deflated(b, corrupt=True)))
    yield Case("deflate/truncated", _with(series, lambda b: deflated(b)[: len(deflated(b)) // 2]))


def _deflate_bomb(data: bytes) -> bytes:
    """A deflated data set that inflates to 256 MiB, made by streaming zeros through the compressor."""
    ds = _dataset(data)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = _save(ds)
    meta_end = 132 + 12 + struct.unpack("<I", out[140:144])[0]
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block, parts = b"\0" * (1 << 20), []
    for _ in range(256):
        parts.append(c.compress(block))
    parts.append(c.flush())
    return out[:meta_end] + b"".join(parts)


def _zip(series):
    def archive(members: dict[str, bytes], level=9) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()

    good = series[VICTIM]
    yield Case("zip/path-traversal", _with(series, lambda b: archive({"../../etc/evil.dcm": good})))
    yield Case("zip/absolute-path", _with(series, lambda b: archive({"/tmp/evil.dcm": good})))
    yield Case("zip/bomb", _with(series, lambda b: archive({"big.dcm": b"\0" * (64 << 20)})))
    yield Case("zip/whole-series", [archive({f"{i}.dcm": s for i, s in enumerate(series)})])


def _geometry(series):
    nan, inf = float("nan"), float("inf")
    values = {
        "PixelSpacing": ([nan, 0.8], [inf, 0.8], [0, 0], [-0.8, 0.8], [0.8]),
        "RescaleSlope": (nan, inf, 0, -1),
        "RescaleIntercept": (nan, -inf),
        "ImagePositionPatient": ([nan, 0, 0], [0, inf, 0], [0, 0]),
        "ImageOrientationPatient": ([nan, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1], [1, 0, 0]),
    }
    for keyword, variants in values.items():
        for k, value in enumerate(variants):
            yield Case(f"geometry/{keyword}-{k}", _with(series, _edit(**{keyword: value}), everywhere=True))
    yield Case("geometry/all-at-one-position", _with(series, _edit(ImagePositionPatient=[0, 0, 0]), everywhere=True))


def _polyglot(series):
    for label, body in (("zip", b"PK\x03\x04" + b"\0" * 200), ("html", b"<html><script>x</script></html>" * 8),
                        ("elf", b"\x7fELF\x02\x01\x01" + b"\0" * 300), ("random", bytes(range(256)) * 3)):
        yield Case(f"polyglot/dicm-over-{label}", _with(series, lambda b, body=body: b"\0" * 128 + b"DICM" + body))


def _modality(series):
    for modality in ("MR", "CR", "OT", None):
        yield Case(f"modality/{modality or 'absent'}", _with(series, _edit(Modality=modality), everywhere=True))
    yield Case("modality/multi-frame", _with(series, _edit(NumberOfFrames=2), everywhere=True))


CLASSES = (_truncated, _length, _vr, _nested, _dims, _bits, _pixels, _compressed, _deflate, _zip, _geometry,
           _polyglot, _modality)


def cases(series_dir: Path) -> list[Case]:
    """Every case, built from the instances of ``series_dir`` (6 slices, sorted by file name)."""
    series = []
    for path in sorted(Path(series_dir).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # the byte-level classes assume it
        series.append(_save(ds))
    return [case for make in CLASSES for case in make(series)]
