"""The malformed-input corpus (tests/malformed_corpus.py) through the gRPC API (issue 13).

Every case must be answered INVALID_ARGUMENT or RESOURCE_EXHAUSTED within 25 s, with a
message that names the problem and no Python exception class or traceback, and the
server must be SERVING after, with no slot taken and no job left active. ``make test``
runs a subset (the first, middle and last case of every class); ``make corpus`` runs
all of them (``COVIAX_CORPUS=full``) and prints the count per class.
"""

from __future__ import annotations

import collections
import os
import resource
import time

import grpc
import pytest

from malformed_corpus import EXPECTED, cases
from service_support import header_identifiers, make_small_series, running_server, sample_value, wait_for

pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc  # noqa: E402
from coviax_client import CoviaxClient  # noqa: E402

FULL = os.environ.get("COVIAX_CORPUS") == "full"
DEADLINE_S = 25
PEAK_RSS_LIMIT = 2.5 * 1024**3
CHUNK = 1 << 20


def _subset(all_cases):
    by_class = collections.defaultdict(list)
    for case in all_cases:
        by_class[case.kind].append(case)
    chosen = []
    for group in by_class.values():
        chosen.extend({id(c): c for c in (group[0], group[len(group) // 2], group[-1])}.values())
    return chosen


def _requests(case):
    yield pb.SegmentRequest(header=pb.Header(options=pb.SegmentOptions(outputs=["report"]),
                                             expected_instances=len(case.instances)))
    for index, data in enumerate(case.instances):
        for start in range(0, max(len(data), 1), CHUNK):
            yield pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=index, data=data[start:start + CHUNK],
                                                        last=start + CHUNK >= len(data)))
    yield pb.SegmentRequest(end=pb.EndOfScan())


@pytest.mark.slow
def _reset_peak_rss() -> None:
    """Start the process's high-water mark (VmHWM) afresh, so the corpus is judged by its own peak and
    not by what earlier tests of the same pytest process loaded (Linux: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident memory since :func:`_reset_peak_rss` (VmHWM), or the process's whole-life peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_malformed_corpus_through_the_api(tmp_path, caplog):
    import logging

    _reset_peak_rss()

    from prometheus_client import generate_latest

    caplog.set_level(logging.DEBUG)
    series = make_small_series(tmp_path / "series", n=6)
    all_cases = cases(series)
    assert len(all_cases) >= 200
    chosen = all_cases if FULL else _subset(all_cases)
    with running_server(tmp_path / "data", workers=2, max_concurrent_scans=2, max_slices=64,
                        max_scan_bytes=64 * 1024**2) as st, \
            CoviaxClient(f"127.0.0.1:{st.port}", timeout=60, retries=0) as client:
        stub = pb_grpc.CoviaxStub(client.channel)
        mishandled, answers, slowest, replies = [], collections.Counter(), 0.0, []
        for case in chosen:
            started = time.monotonic()
            try:
                list(stub.Segment(_requests(case), timeout=DEADLINE_S))
                code, message = "OK", "the scan was analysed"
            except grpc.RpcError as err:
                code, message = err.code().name, err.details() or ""
            replies.append(message)
            seconds = time.monotonic() - started
            slowest = max(slowest, seconds)
            answers[(case.kind, code)] += 1
            if code not in EXPECTED or any(w in message for w in ("Traceback", "<class", "Exception")):
                mishandled.append(f"{case.name}: {code} {message[:200]}")
        print(f"\ncorpus: {len(chosen)} of {len(all_cases)} cases, slowest {slowest:.1f} s, peak RSS "
              f"{_peak_rss_bytes() / 1024**3:.2f} GiB")
        for (kind, code), n in sorted(answers.items()):
            print(f"  {kind:12s} {code:20s} {n}")
        assert not mishandled, "\n".join(mishandled)
        assert _peak_rss_bytes() < PEAK_RSS_LIMIT
        assert client.health() == "SERVING"
        wait_for(lambda: sample_value(st, "coviax_scans_in_flight") == 0, what="slots released")
        active = [j for state in (pb.RECEIVING, pb.QUEUED, pb.RUNNING)
                  for j in stub.ListJobs(pb.ListJobsRequest(state=state), timeout=30).jobs]
        assert not active
        # no patient name, ID, date or time of the inputs in the replies, the server's log or its metrics
        identifiers = header_identifiers(series)
        assert "Lung_Dx-A0001" in identifiers
        said = "\n".join(replies) + caplog.text + generate_latest(st.server.metrics.registry).decode()
        leaked = sorted(v for v in identifiers if v in said)
        assert not leaked, f"identifiers in replies, logs or metrics: {leaked}"
