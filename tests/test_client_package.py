"""The client is its own slim distribution: its wheel requires only grpcio, protobuf and pydicom (the
rest as extras), and it imports and runs its CLI with the COViaX core, numpy, SciPy and torch blocked."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"grpcio", "protobuf", "pydicom"}
BLOCKED = ("coviax", "coviax_service", "coviax_trainer", "coviax_research", "numpy", "scipy", "torch", "sklearn",
           "SimpleITK", "highdicom", "matplotlib", "rich", "pynetdicom")

_BLOCKER = """
import importlib.abc, sys
BLOCKED = %r
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for the client: {name}", name=name)
        return None
sys.meta_path.insert(0, Refuse())
"""


def _client_modules() -> list[str]:
    names = []
    for package in ("coviax_client", "coviax_api"):
        for path in sorted((ROOT / "clients" / package).rglob("*.py")):
            rel = path.relative_to(ROOT / "clients").with_suffix("")
            names.append(".".join(p for p in rel.parts if p != "__init__"))
    return names


def test_client_imports_without_the_core_or_numpy():
    code = _BLOCKER % (BLOCKED,) + """
import importlib
for name in %r:
    importlib.import_module(name)
from coviax_client.cli import build_parser
parser = build_parser()
args = parser.parse_args(["segment", "scan/", "--out", "o", "--server", "h:1", "--lungs", "unet", "--deidentify"])
assert args.lungs == "unet"
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("ok")
""" % (_client_modules(),)
    # run in clients/, so that the client's own folder comes first on sys.path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "clients")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_client_wheel_requires_only_the_client_dependencies(tmp_path):
    src = tmp_path / "clients"
    shutil.copytree(ROOT / "clients", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("coviax_client-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_string(zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = meta.get_all("Requires-Dist") or []
    plain = {r.split(">")[0].split("=")[0].split("<")[0].split(";")[0].strip() for r in requires if "extra ==" not in r}
    assert plain == REQUIRED, requires
    extras = {r.split(";")[0].split(">")[0].strip() for r in requires if "extra ==" in r}
    assert extras <= {"pynetdicom", "rich", "numpy"}, extras
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"coviax_client", "coviax_api"}, tops
    assert "coviax-client = coviax_client.cli:main" in entry_points
