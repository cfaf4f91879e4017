"""Generate the Python stubs of proto/coviax/v1/coviax.proto into clients/coviax_api (``make proto``).

The stubs are committed so that a client needs no grpcio-tools;
tests/test_service_proto.py regenerates them into a temporary folder and
checks that the committed files are identical. Usage::

    python scripts/gen_proto.py [OUT_ROOT]    # default: clients

The proto folder is mapped to the import prefix ``coviax_api`` so that the
generated modules import each other as ``coviax_api.coviax.v1...`` (the core
package is also called ``coviax``; a bare ``coviax.v1`` would collide with it).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("proto/coviax/v1/coviax.proto",)
GENERATED = ("coviax_api/coviax/v1/coviax_pb2.py", "coviax_api/coviax/v1/coviax_pb2.pyi",
             "coviax_api/coviax/v1/coviax_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        "-Icoviax_api=proto",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    import os

    cwd = os.getcwd()
    os.chdir(ROOT)  # the -I mapping and the file names are relative to the repository root
    try:
        code = protoc.main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return [out_root / g for g in GENERATED]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "clients"
    for path in generate(out.resolve()):
        print(path)
