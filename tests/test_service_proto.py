"""The committed gRPC stubs (clients/coviax_api) are what `make proto` makes from proto/coviax/v1/coviax.proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _gen_module():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    gen = _gen_module()
    fresh = gen.generate(tmp_path)
    for path, rel in zip(fresh, gen.GENERATED):
        committed = ROOT / "clients" / rel
        assert committed.is_file(), f"{committed} missing: run `make proto` and commit the stubs"
        assert committed.read_bytes() == path.read_bytes(), f"{rel} is stale: run `make proto` and commit the stubs"


def test_stubs_describe_the_service():
    from coviax_api.coviax.v1 import coviax_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Coviax"]
    assert service.full_name == "coviax.v1.Coviax"
    assert {m.name for m in service.methods} == {
        "Segment", "SubmitBatch", "GetJob", "ListJobs", "CancelJob", "DownloadArtifact", "GetModelInfo"}
    segment = service.methods_by_name["Segment"]
    assert segment.client_streaming and segment.server_streaming


def test_client_package_imports_neither_torch_nor_the_core():
    import subprocess
    import sys

    code = ("import sys, coviax_client, coviax_client.cli, coviax_client.batch, coviax_client.listener; "
            "bad = [m for m in sys.modules if m == 'torch' or m == 'coviax' or m.startswith(('torch.', 'coviax.'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
