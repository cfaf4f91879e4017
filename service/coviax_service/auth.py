"""Bearer-token authentication and tenants: a server interceptor over every RPC except health checks.

Clients send ``authorization: Bearer TOKEN`` metadata. Tokens come from
``COVIAX_TOKENS_FILE`` and ``COVIAX_TOKENS``; with no token configured,
authentication is off. A line of the tokens file is ``TOKEN`` or
``sha256:HEX`` (the SHA-256 of the token, so that the file holds no secret),
optionally followed by a tenant name: a caller sees only the jobs, batches and
artifacts of its token's tenant (tokens without a tenant share the tenant "").
The health service stays open so that Kubernetes probes (which send no token)
work. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Credential:
    secret: bytes  # the token, or the hex SHA-256 of the token when ``hashed``
    hashed: bool = False
    tenant: str = ""

    @classmethod
    def parse(cls, line: str) -> "Credential":
        """``TOKEN [TENANT]`` or ``sha256:HEX [TENANT]``."""
        secret, _, tenant = line.strip().partition(" ")
        tenant = tenant.strip()
        if secret.startswith("sha256:"):
            digest = secret[len("sha256:"):].lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("a sha256: entry needs 64 hex digits")
            return cls(digest.encode(), True, tenant)
        return cls(secret.encode(), False, tenant)


class Tokens:
    """The known bearer tokens and their tenants."""

    def __init__(self, credentials):
        self.credentials = tuple(credentials)

    def __bool__(self) -> bool:
        return bool(self.credentials)

    def tenant_of(self, presented: str) -> str | None:
        """The tenant of a presented token, or None if it is unknown (constant time over all tokens)."""
        candidate = presented.encode()
        digest = hashlib.sha256(candidate).hexdigest().encode()
        found = None
        for c in self.credentials:  # no early exit: the time does not tell which token matched
            if hmac.compare_digest(digest if c.hashed else candidate, c.secret) and found is None:
                found = c.tenant
        return found

    def tenant_from_metadata(self, metadata) -> str | None:
        """The tenant of a call's ``authorization: Bearer TOKEN`` metadata ("" when authentication is off)."""
        if not self.credentials:
            return ""
        value = dict(metadata or ()).get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tenant_of(token.strip())


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Tokens):
        self._tokens = tokens

    def _valid(self, presented: str) -> bool:
        return self._tokens.tenant_of(presented) is not None

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
