"""grpc.health.v1 spoken without the grpcio-health-checking package: the request and the response
have one field each, so they are encoded by hand."""

from __future__ import annotations

_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    length, prefix = len(data), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(prefix) + data


def decode_response(raw: bytes) -> str:
    # HealthCheckResponse { ServingStatus status = 1; }: tag 0x08 then a varint
    if len(raw) >= 2 and raw[0] == 0x08:
        return _HEALTH_STATUS.get(raw[1] & 0x7F, "UNKNOWN")
    return "UNKNOWN"
