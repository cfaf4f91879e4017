"""The grpc.aio server: TLS / mTLS, bearer tokens, health, reflection, metrics, drain on SIGTERM.

Start-up order: bind the port with health NOT_SERVING (probes get an answer),
build the engine and warm it up with a dummy inference (and the worker
processes with a dummy job), resume the jobs of the last run, then SERVING.
On SIGTERM (or SIGINT): NOT_SERVING at once, no new scans (UNAVAILABLE),
the scans in flight get ``drain_seconds`` to finish, then the server stops;
whatever did not finish is on disk and resumes at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_service.auth import BearerTokenInterceptor, Tokens
from coviax_service.config import ServiceConfig
from coviax_service.errors import PortInUseError
from coviax_service.jobs import JobManager
from coviax_service.metrics import Metrics
from coviax_service.servicer import CoviaxServicer, add_to_server

log = logging.getLogger("coviax.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coviax"].full_name  # "coviax.v1.Coviax"


class CoviaxServer:
    def __init__(self, config: ServiceConfig, engine=None):
        self.config = config
        self.metrics = Metrics()
        self.jobs = JobManager(config, self.metrics, engine=engine)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = False

    async def start(self) -> int:
        """Bind, warm up, then report SERVING. Returns the bound gRPC port."""
        self._stopped = asyncio.Event()
        self.jobs.open_store()
        tokens = Tokens(self.config.load_credentials())
        interceptors = [BearerTokenInterceptor(tokens)] if tokens else []
        message_limit = self.config.max_chunk_bytes + 1024 * 1024
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        add_to_server(CoviaxServicer(self.jobs, tokens), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME,
                 "grpc.reflection.v1.ServerReflection")
        reflection.enable_server_reflection(names, self.server)
        # Reflection v1 too (grpcurl asks for it first): grpcio-reflection ships only v1alpha stubs, and the v1
        # messages are field for field the same, so the v1alpha servicer answers v1 under its own name.
        v1 = reflection.aio.ReflectionServicer(names)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "grpc.reflection.v1.ServerReflection", {"ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                v1.ServerReflectionInfo, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)}),))
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._bind_grpc()
        await self.server.start()
        self._serve_metrics()
        log.info("listening on %s:%d (%s), auth %s; warming up the %s engine",
                 self.config.host, self.port, "TLS" + (" + client certificates" if self.config.tls_client_ca else "")
                 if self.config.tls_cert else "plaintext", "on" if tokens else "off", self.config.engine)
        await self.jobs.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("SERVING (engine %s, model %s, device %s, %d workers)", self.jobs.model_info.engine,
                 self.jobs.model_info.model, self.jobs.model_info.device, self.config.workers)
        return self.port

    def _bind_grpc(self) -> None:
        """Bind the gRPC port (TLS when configured); PortInUseError names the setting to change."""
        address = f"{self.config.host}:{self.config.port}"
        try:
            if self.config.tls_cert:
                client_ca = Path(self.config.tls_client_ca).read_bytes() if self.config.tls_client_ca else None
                credentials = grpc.ssl_server_credentials(
                    [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())],
                    root_certificates=client_ca, require_client_auth=bool(self.config.tls_client_ca),
                )
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises "Failed to bind" where older versions returned 0
            self.port = 0
        if not self.port:
            raise PortInUseError(f"cannot listen for gRPC on {address}: the port is taken or the address is not "
                                 "this machine's; pick another with --port (COVIAX_PORT)")

    def _serve_metrics(self) -> None:
        """Start /metrics when a port is configured; PortInUseError names the setting to change."""
        if self.config.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(self.config.metrics_port, host=self.config.host)
            except OSError as exc:  # e.g. a second server, or Prometheus itself, on 9090
                raise PortInUseError(
                    f"cannot serve /metrics on port {self.config.metrics_port} ({exc.strerror or exc}): pick another "
                    "with --metrics-port (COVIAX_METRICS_PORT; the default 9090 is also Prometheus's own port), "
                    "or 0 to turn the metrics endpoint off") from None

    async def stop(self, drain_seconds: float | None = None) -> None:
        """Drain (NOT_SERVING, no new scans, wait for those in flight), then stop everything."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        drain = self.config.drain_seconds if drain_seconds is None else drain_seconds
        await self.health.enter_graceful_shutdown()
        log.info("draining (up to %.0f s)", drain)
        if self.jobs.ready and drain > 0:
            await self.jobs.drain(drain)
        self.jobs.draining = True
        self.jobs.closing = True
        if self.server is not None:
            await self.server.stop(grace=1.0)
        await self.jobs.close()
        self.metrics.stop()
        log.info("stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def serve(config: ServiceConfig) -> int:
    """``coviax serve``: run until SIGTERM / SIGINT, then drain and exit 0."""

    async def main() -> None:
        server = CoviaxServer(config)
        loop = asyncio.get_running_loop()
        stop_task: list[asyncio.Task] = []

        def on_signal(signame: str) -> None:
            if not stop_task:
                log.info("%s received", signame)
                stop_task.append(asyncio.create_task(server.stop()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        try:
            await server.start()
        except BaseException:
            await server.stop(drain_seconds=0)
            raise
        await server.wait_stopped()

    asyncio.run(main())
    return 0


class ServerThread:
    """A server on its own event loop in a background thread (tests, notebooks, embedding)."""

    def __init__(self, config: ServiceConfig, engine=None):
        self.server = CoviaxServer(config, engine=engine)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coviax-server", daemon=True)

    def start(self, timeout: float = 120) -> int:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            self.stop()
            raise

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, drain_seconds: float = 0, timeout: float = 60) -> None:
        try:
            self.call(self.server.stop(drain_seconds=drain_seconds), timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()

    @property
    def port(self) -> int | None:
        return self.server.port

    @property
    def jobs(self) -> JobManager:
        return self.server.jobs
