"""The client is its own slim distribution: its wheel requires only grpcio, protobuf and pydicom (the
rest as extras), it imports and runs its CLI with the COViaX core, numpy, SciPy and torch blocked, and
it installs alone into a clean virtual environment where none of those exist."""

from __future__ import annotations

import email
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory) -> Path:
    """The coviax-client wheel built from a copy of clients/ (no build leftovers in the checkout)."""
    tmp = tmp_path_factory.mktemp("client-wheel")
    src = tmp / "clients"
    shutil.copytree(ROOT / "clients", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("coviax_client-*.whl")
    return wheel


def test_client_wheel_requires_only_the_client_dependencies(client_wheel):
    wheel = client_wheel
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


#: Wheels of the client's dependencies, at the versions installed here, kept between runs: only the first
#: run on a machine needs the package index ($COVIAX_WHEEL_CACHE moves the cache).
WHEEL_CACHE = Path(os.environ.get("COVIAX_WHEEL_CACHE", Path.home() / ".cache" / "coviax" / "wheels"))


def _dependency_wheels() -> Path:
    """A folder with wheels of grpcio, protobuf and pydicom (as installed here) and what they require."""
    pins = [f"{name}=={version(name)}" for name in sorted(REQUIRED)]
    key = hashlib.sha256(" ".join(pins + [sys.implementation.cache_tag, sys.platform]).encode()).hexdigest()[:16]
    folder = WHEEL_CACHE / key
    if not (folder / ".complete").is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *pins,
                               "-d", str(folder)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            pytest.skip(f"no cached wheels of {', '.join(pins)} and pip could not download them: "
                        + done.stderr.strip()[-300:])
        (folder / ".complete").write_text("\n".join(pins) + "\n")
    return folder


def test_the_client_installs_alone_in_a_clean_venv(client_wheel, tmp_path):
    """pip installs coviax-client from its wheel and its dependencies' wheels only (no index), into a fresh
    venv; its CLI and SDK work there, and numpy, SciPy, torch and the COViaX core are not installed."""
    wheels = _dependency_wheels()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python, env = venv / "bin" / "python", {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels),
                    str(client_wheel)], check=True, capture_output=True, timeout=300, cwd=tmp_path, env=env)
    helped = subprocess.run([str(venv / "bin" / "coviax-client"), "--help"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=env)
    assert helped.returncode == 0 and "segment" in helped.stdout and "dicom-listener" in helped.stdout, helped.stderr
    code = ("import importlib.util, coviax_client, coviax_client.cli, coviax_client.sdk; "
            "from coviax_client import CoviaxClient; "
            "print(sorted(m for m in ('numpy', 'scipy', 'torch', 'coviax', 'coviax_service', 'SimpleITK', "
            "'highdicom', 'sklearn') if importlib.util.find_spec(m)))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, env=env).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.split()}
    assert installed - {"pip", "setuptools"} <= {"coviax-client", "grpcio", "protobuf", "pydicom", "typing-extensions"}, installed
