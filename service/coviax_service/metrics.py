"""Prometheus metrics, served on their own port (``--metrics-port``, ``COVIAX_METRICS_PORT``).

No label ever carries a patient name, ID or UID: labels are stage names and
status-code names only.

=========================  =========  ======================================
coviax_scans_in_flight     gauge      scans holding a slot (uploading to a
                                      Segment stream or being analysed)
coviax_queue_depth         gauge      slices waiting for the lesion engine
coviax_stage_seconds       histogram  seconds per stage (label ``stage``:
                                      upload, inference, read, lungs,
                                      lesions, quantities, exports, total)
coviax_results_total       counter    finished jobs by status code (label
                                      ``code``: OK, INVALID_ARGUMENT, ...)
coviax_slices_total        counter    slices through the lesion engine;
                                      ``rate(coviax_slices_total[1m])`` is
                                      slices per second
coviax_model_info          info       engine, model, weights_sha256, device
=========================  =========  ======================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


class Metrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.scans_in_flight = Gauge("coviax_scans_in_flight", "Scans holding a slot (uploading or analysed)", registry=r)
        self.queue_depth = Gauge("coviax_queue_depth", "Slices waiting for the lesion engine", registry=r)
        self.stage_seconds = Histogram(
            "coviax_stage_seconds", "Seconds spent per stage", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.results = Counter("coviax_results", "Finished jobs by gRPC status code", ["code"], registry=r)
        self.slices = Counter("coviax_slices", "Slices through the lesion engine (rate = slices/s)", registry=r)
        self.model_info = Info("coviax_model", "The lesion engine this server runs", registry=r)
        self._http = None

    def serve(self, port: int, host: str = "[::]") -> int:
        """Start the /metrics HTTP endpoint on ``host`` (the gRPC bind address, ``[::]`` or ``127.0.0.1``
        style); returns the bound port (0 picks a free one)."""
        addr = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            result = start_http_server(port, addr=addr, registry=self.registry)
        except OSError:
            if addr != "::":
                raise
            result = start_http_server(port, addr="0.0.0.0", registry=self.registry)  # a host without IPv6
        self._http = result[0] if isinstance(result, tuple) else None
        return self._http.server_port if self._http is not None else port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
