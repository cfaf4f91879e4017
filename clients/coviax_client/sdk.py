"""The Python SDK: :class:`CoviaxClient`. Needs grpcio, protobuf, pydicom and numpy only.

    from coviax_client import CoviaxClient

    with CoviaxClient("coviax.example.org:50051", token="...", tls_ca="ca.pem") as client:
        result = client.segment("scans/patient-folder", progress=print)
        print(result.ratios_pct["all"])
        client.download_all(result, "out/")

Every call has a deadline (``timeout``). ``segment`` retries on UNAVAILABLE
(server restarting or draining, connection lost) with exponential backoff,
re-sending the scan under the same idempotency key, so the server never
makes two jobs of one scan. Errors raise :class:`CoviaxClientError` with the
server's status code name and message.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import grpc

from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc
from coviax_client.files import Instance, chunks, collect_instances
from coviax_client.health import decode_response, encode_request
from coviax_client.results import CoviaxClientError, Result

if TYPE_CHECKING:
    import numpy as np

CHUNK_BYTES = 1024 * 1024
MAX_MESSAGE = 8 * 1024 * 1024


def _read(path) -> bytes | None:
    return Path(path).read_bytes() if path else None


class CoviaxClient:
    """A connection to one COViaX server.

    Parameters
    ----------
    target:
        ``host:port`` (or any gRPC target, e.g. ``dns:///coviax-headless:50051``).
    token:
        bearer token sent as ``authorization`` metadata.
    tls_ca:
        CA certificate (PEM file) to verify the server: turns TLS on. ``tls=True``
        without it uses the system roots.
    client_cert, client_key:
        PEM files of this client's certificate, for mutual TLS.
    timeout:
        deadline of each call in seconds (``segment``: of the whole analysis,
        retries included).
    retries:
        attempts after the first on UNAVAILABLE (and on ``retry_codes``).
    """

    def __init__(self, target: str, token: str | None = None, tls_ca=None, client_cert=None, client_key=None,
                 timeout: float = 900.0, retries: int = 4, backoff_s: float = 1.0, tls: bool | None = None,
                 retry_codes: tuple[str, ...] = ("UNAVAILABLE",), chunk_bytes: int = CHUNK_BYTES,
                 tls_server_name: str | None = None):
        self.target = target
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.retry_codes = tuple(retry_codes)
        self.chunk_bytes = chunk_bytes
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls or tls_ca or client_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(client_key), certificate_chain=_read(client_cert))
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.CoviaxStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CoviaxClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --------------------------------------------------------------- helpers

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _client_error(exc) from None

    def _sleep_before_retry(self, attempt: int, deadline: float) -> bool:
        delay = min(30.0, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
        if time.monotonic() + delay >= deadline:
            return False
        time.sleep(delay)
        return True

    # ---------------------------------------------------------------- segment

    def segment(self, source, progress: Callable[[dict], None] | None = None, *, lungs: str = "",
                engine: str = "", outputs: Iterable[str] = (), max_blobs: int | None = None, series_uid: str = "",
                device: str = "", study_label: str = "", idempotency_key: str | None = None, deidentify: bool = False,
                client_ref: str = "", batch_id: str = "", timeout: float | None = None) -> Result:
        """Send a scan (DICOM folder, zip, file list) and wait for its result.

        ``progress`` gets dicts with job_id, stage, slices_sent, slices_received,
        slices_segmented, expected_slices.
        """
        instances = collect_instances(source, deidentify=deidentify)
        header = self._header(lungs, engine, outputs, max_blobs, series_uid, device, study_label, idempotency_key,
                              client_ref, batch_id, expected=len(instances))
        return self._segment_with_retries(lambda stop, sent: self._dicom_requests(header, instances, stop, sent),
                                          progress, timeout)

    def segment_array(self, hu: np.ndarray, spacing_zyx, origin_xyz=(0.0, 0.0, 0.0), direction=None,
                      progress: Callable[[dict], None] | None = None, *, timeout: float | None = None,
                      slices_per_message: int = 4, **options) -> Result:
        """Send a volume held in memory (int16 HU, z y x) as RawSlices; no DICOM SEG is made for it.

        Needs numpy (``pip install 'coviax-client[arrays]'``); nothing else in the client does.
        """
        import numpy as np

        hu = np.ascontiguousarray(hu, dtype="<i2")
        if hu.ndim != 3:
            raise ValueError(f"hu must be 3D (z, y, x); got shape {hu.shape}")
        direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
        header = self._header(options.get("lungs", ""), options.get("engine", ""), options.get("outputs", ()),
                              options.get("max_blobs"), "", options.get("device", ""), options.get("study_label", ""),
                              options.get("idempotency_key"), options.get("client_ref", ""),
                              options.get("batch_id", ""), expected=hu.shape[0])

        def requests(stop: threading.Event, sent: list):
            yield pb.SegmentRequest(header=header)
            for start in range(0, hu.shape[0], slices_per_message):
                if stop.is_set():
                    return
                part = hu[start : start + slices_per_message]
                raw = pb.RawSlices(first_index=start, count=part.shape[0], rows=hu.shape[1], columns=hu.shape[2],
                                   hu=part.tobytes(), total_slices=hu.shape[0])
                if start == 0:
                    raw.spacing_zyx.extend(float(s) for s in spacing_zyx)
                    raw.origin_xyz.extend(float(o) for o in origin_xyz)
                    raw.direction.extend(float(d) for d in direction.ravel())
                sent[0] += part.shape[0]
                yield pb.SegmentRequest(raw=raw)
            yield pb.SegmentRequest(end=pb.EndOfScan())

        return self._segment_with_retries(requests, progress, timeout)

    def _header(self, lungs, engine, outputs, max_blobs, series_uid, device, study_label, idempotency_key, client_ref,
                batch_id, expected: int) -> pb.Header:
        options = pb.SegmentOptions(lungs=lungs, engine=engine, outputs=list(outputs), series_uid=series_uid,
                                    device=device)
        if max_blobs is not None:
            options.max_blobs = max_blobs
        return pb.Header(options=options, idempotency_key=idempotency_key or uuid.uuid4().hex,
                         study_label=study_label, expected_instances=expected, client_ref=client_ref,
                         batch_id=batch_id)

    def _dicom_requests(self, header: pb.Header, instances: list[Instance], stop: threading.Event, sent: list):
        yield pb.SegmentRequest(header=header)
        for index, instance in enumerate(instances):
            if stop.is_set():
                return
            data = instance.read()
            for piece, last in chunks(data, self.chunk_bytes):
                if stop.is_set():
                    return
                yield pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=index, data=piece, last=last))
            sent[0] += 1
        yield pb.SegmentRequest(end=pb.EndOfScan())

    def _segment_with_retries(self, make_requests, progress, timeout: float | None) -> Result:
        deadline = time.monotonic() + (timeout or self.timeout)
        attempt = 0
        while True:
            try:
                return self._segment_once(make_requests, progress, deadline)
            except grpc.RpcError as exc:
                error = _client_error(exc)
                if error.code in self.retry_codes and attempt < self.retries and self._sleep_before_retry(attempt, deadline):
                    attempt += 1
                    continue
                raise error from None

    def _segment_once(self, make_requests, progress, deadline: float) -> Result:
        stop = threading.Event()
        sent = [0]
        call = self.stub.Segment(make_requests(stop, sent), timeout=max(0.1, deadline - time.monotonic()),
                                 metadata=self._metadata)
        job_id, existing, result = "", False, None
        try:
            for event in call:
                which = event.WhichOneof("event")
                if which == "accepted":
                    job_id, existing = event.accepted.job_id, event.accepted.existing
                    if existing:
                        stop.set()  # the server has this scan already: stop uploading
                    if progress:
                        progress({"job_id": job_id, "stage": "accepted", "slices_sent": sent[0], "existing": existing})
                elif which == "progress" and progress:
                    p = event.progress
                    progress({"job_id": job_id, "stage": p.stage, "slices_sent": sent[0],
                              "slices_received": p.slices_received, "slices_segmented": p.slices_segmented,
                              "expected_slices": p.expected_slices, "bytes_received": p.bytes_received})
                elif which == "result":
                    result = event.result
                elif which == "artifacts":
                    return Result.from_messages(result, event.artifacts.artifacts, existing)
        except grpc.RpcError:
            stop.set()
            raise
        finally:
            stop.set()
        if result is not None:
            return Result.from_messages(result, (), existing)
        raise CoviaxClientError("UNKNOWN", "the server closed the stream without a result", job_id)

    # ----------------------------------------------------------------- batch

    def submit_batch(self, scans: Iterable[tuple[str, object]], *, deidentify: bool = False, batch_id: str = "",
                     timeout: float | None = None, **options) -> tuple[str, list[pb.BatchEvent]]:
        """Upload several scans in one SubmitBatch stream; returns (batch_id, one event per scan).

        ``scans``: (client_ref, source) pairs. The jobs run on the server in the
        background: follow them with :meth:`list_jobs` (``batch_id``) or :meth:`wait`.
        """
        scans = list(scans)

        def requests():
            for ref, source in scans:
                try:
                    instances = collect_instances(source, deidentify=deidentify)
                except (OSError, ValueError):
                    instances = []  # the server rejects an empty scan with its own message
                header = self._header(options.get("lungs", ""), options.get("engine", ""),
                                      options.get("outputs", ()), options.get("max_blobs"), "",
                                      options.get("device", ""), options.get("study_label", ""),
                                      options.get("idempotency_key_prefix", "") + ref if options.get("idempotency_key_prefix") else None,
                                      ref, batch_id, expected=len(instances))
                yield pb.SegmentRequest(header=header)
                for index, instance in enumerate(instances):
                    for piece, last in chunks(instance.read(), self.chunk_bytes):
                        yield pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=index, data=piece, last=last))
                yield pb.SegmentRequest(end=pb.EndOfScan())

        try:
            events = list(self.stub.SubmitBatch(requests(), timeout=timeout or self.timeout, metadata=self._metadata))
        except grpc.RpcError as exc:
            raise _client_error(exc) from None
        done = [e for e in events if e.WhichOneof("event") == "done"]
        return (done[0].done.batch_id if done else batch_id), [e for e in events if e.WhichOneof("event") != "done"]

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> pb.Job:
        """Poll a job until it is DONE, FAILED or CANCELLED."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            job = self.get_job(job_id)
            if job.state in (pb.DONE, pb.FAILED, pb.CANCELLED):
                return job
            if time.monotonic() > deadline:
                raise CoviaxClientError("DEADLINE_EXCEEDED", f"job {job_id} not finished after {timeout} s", job_id)
            time.sleep(poll_s)

    # ---------------------------------------------------------------- queries

    def get_job(self, job_id: str) -> pb.Job:
        return self._call(self.stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def list_jobs(self, batch_id: str = "", state: str = "") -> list[pb.Job]:
        jobs, token = [], ""
        while True:
            page = self._call(self.stub.ListJobs, pb.ListJobsRequest(
                batch_id=batch_id, state=pb.JobState.Value(state) if state else 0, page_size=500, page_token=token))
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def cancel(self, job_id: str) -> pb.Job:
        return self._call(self.stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def model_info(self) -> pb.ModelInfo:
        return self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest())

    def result(self, job_id: str) -> Result:
        """The Result of a DONE job (e.g. one submitted with :meth:`submit_batch`)."""
        job = self.get_job(job_id)
        if job.state != pb.DONE:
            if job.error.code:
                raise CoviaxClientError(job.error.code, job.error.message, job_id)
            raise CoviaxClientError("FAILED_PRECONDITION", f"job {job_id} is {pb.JobState.Name(job.state)}", job_id)
        return Result.from_messages(job.result, job.artifacts)

    # -------------------------------------------------------------- artifacts

    def download(self, job_id: str, name: str, dest, timeout: float | None = None) -> Path:
        """Download artifact ``name`` of a job into ``dest`` (a folder, or a file path); checks its SHA-256.

        A partial file left by a broken download is resumed from where it stopped.
        """
        dest = Path(dest)
        partial = None
        offset = 0
        target: Path | None = None if dest.is_dir() or str(dest).endswith("/") else dest
        if target is not None and target.with_name(target.name + ".part").exists():
            partial = target.with_name(target.name + ".part")
            offset = partial.stat().st_size
        try:
            stream = self.stub.DownloadArtifact(pb.DownloadArtifactRequest(job_id=job_id, name=name, offset=offset),
                                                timeout=timeout or self.timeout, metadata=self._metadata)
            out, expected_sha = None, ""
            for chunk in stream:
                if out is None:
                    if target is None:
                        dest.mkdir(parents=True, exist_ok=True)
                        target = dest / chunk.file_name
                    partial = target.with_name(target.name + ".part")
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    out = open(partial, "ab" if offset else "wb")
                    expected_sha = chunk.sha256
                out.write(chunk.data)
            if out is None:
                raise CoviaxClientError("UNKNOWN", f"empty download of {name!r} of job {job_id}", job_id)
            out.close()
        except grpc.RpcError as exc:
            raise _client_error(exc) from None
        digest = hashlib.sha256(partial.read_bytes()).hexdigest()
        if expected_sha and digest != expected_sha:
            partial.unlink()
            raise CoviaxClientError("DATA_LOSS", f"{target.name}: SHA-256 mismatch after download; try again", job_id)
        partial.replace(target)
        return target

    def download_all(self, result: Result, dest) -> dict[str, Path]:
        Path(dest).mkdir(parents=True, exist_ok=True)
        return {a.name: self.download(result.job_id, a.name, Path(dest)) for a in result.artifacts}

    # ----------------------------------------------------------------- health

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The server's grpc.health.v1 status: "SERVING", "NOT_SERVING", ... (a status code name if unreachable).

        Spoken without the grpcio-health-checking package: the two messages have one field each.
        """
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=encode_request,
                                         response_deserializer=decode_response)
        try:
            return check(service, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code().name

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the server reports SERVING."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.health(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
            if status == "SERVING":
                return
            time.sleep(0.5)
        raise CoviaxClientError("UNAVAILABLE", f"{self.target} is not SERVING after {timeout:.0f} s (last: {status})")


def _client_error(exc: grpc.RpcError) -> CoviaxClientError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return CoviaxClientError(code.name if code is not None else "UNKNOWN", details or "")
