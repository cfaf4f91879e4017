"""gRPC server reflection: v1 (what grpcurl asks for first) as well as v1alpha, on an in-process server."""

from __future__ import annotations

import pytest

from service_support import running_server

pytest.importorskip("grpc_reflection")


def _list_services(channel, version: str) -> set[str]:
    from grpc_reflection.v1alpha import reflection_pb2  # the v1 messages are field for field the same

    call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    reply = next(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    return {s.name for s in reply.list_services_response.service}


def test_reflection_v1_and_v1alpha_list_the_same_services(tmp_path):
    import grpc

    from coviax_api.coviax.v1 import coviax_pb2 as pb
    from grpc_reflection.v1alpha import reflection_pb2

    with running_server(tmp_path / "data") as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        v1, v1alpha = _list_services(channel, "v1"), _list_services(channel, "v1alpha")
        assert v1 == v1alpha
        assert {"coviax.v1.Coviax", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection"} <= v1
        # v1 describes our service too (what `grpcurl describe coviax.v1.Coviax` needs)
        call = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        reply = next(call(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="coviax.v1.Coviax")]),
                          timeout=10))
        assert reply.file_descriptor_response.file_descriptor_proto
        assert pb.DESCRIPTOR.name.encode() in b"".join(reply.file_descriptor_response.file_descriptor_proto)
