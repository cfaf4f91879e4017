"""Zip archives of a DICOM series, unpacked with care: no path traversal, links or zip bombs."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from coviax.errors import ScanError, UnsafeArchiveError

MAX_ZIP_BYTES = 8 * 1024**3
MAX_ZIP_RATIO = 200


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
