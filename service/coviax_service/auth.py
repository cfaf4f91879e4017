"""Bearer-token authentication: a server interceptor over every RPC except health checks.

Clients send ``authorization: Bearer TOKEN`` metadata. Tokens come from
``COVIAX_TOKENS_FILE`` (one per line) and ``COVIAX_TOKENS``; with no token
configured, authentication is off. The health service stays open so that
Kubernetes probes (which send no token) work. Tokens are compared in constant
time and never logged.
"""

from __future__ import annotations

import hmac
import logging

import grpc

log = logging.getLogger("coviax.service")

OPEN_METHODS_PREFIX = ("/grpc.health.v1.Health/",)


def _deny_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    async def deny_unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def deny_stream(request_or_iterator, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    kwargs = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: frozenset[str]):
        self._tokens = tuple(t.encode() for t in tokens)

    def _valid(self, presented: str) -> bool:
        candidate = presented.encode()
        ok = False
        for token in self._tokens:  # no early exit: the time does not tell which token matched
            ok |= hmac.compare_digest(candidate, token)
        return ok

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHODS_PREFIX):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        value = metadata.get("authorization", "")
        if not value:
            return _deny_handler(handler, "missing bearer token: send metadata 'authorization: Bearer TOKEN'")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not self._valid(token.strip()):
            log.info("rejected a call to %s: unknown bearer token", handler_call_details.method)
            return _deny_handler(handler, "unknown bearer token")
        return handler
