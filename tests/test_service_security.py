"""Bearer tokens, TLS and mutual TLS (certificates made in the test with openssl), configuration, retention."""

from __future__ import annotations

import shutil

import pytest

from service_support import make_certificates, make_small_series, running_server, wait_for

pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_client import CoviaxClient, CoviaxClientError  # noqa: E402


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    return make_small_series(tmp_path_factory.mktemp("small") / "series", n=12)


def test_bearer_tokens(tmp_path, small_series):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nsecret-token-1\n\nsecret-token-2\n")
    with running_server(tmp_path / "data", tokens_file=str(tokens)) as st:
        target = f"127.0.0.1:{st.port}"
        with CoviaxClient(target, retries=0, timeout=30) as anonymous:
            with pytest.raises(CoviaxClientError) as err:
                anonymous.segment(small_series, outputs=["report"])
            assert err.value.code == "UNAUTHENTICATED"
            with pytest.raises(CoviaxClientError) as err:
                anonymous.list_jobs()
            assert err.value.code == "UNAUTHENTICATED"
            assert anonymous.health() == "SERVING"  # probes need no token
        with CoviaxClient(target, token="wrong", retries=0, timeout=30) as wrong:
            with pytest.raises(CoviaxClientError) as err:
                wrong.get_job("x")
            assert err.value.code == "UNAUTHENTICATED" and "wrong" not in err.value.message
        with CoviaxClient(target, token="secret-token-2", retries=0, timeout=60) as good:
            result = good.segment(small_series, outputs=["report"])
            assert good.get_job(result.job_id).state == pb.DONE


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make test certificates")
def test_tls_and_mutual_tls_round_trip(tmp_path, small_series):
    certs = make_certificates(tmp_path / "certs")
    common = dict(tls_cert=str(certs["server.pem"]), tls_key=str(certs["server.key"]))
    with running_server(tmp_path / "tls", **common) as st:
        with CoviaxClient(f"127.0.0.1:{st.port}", tls_ca=certs["ca.pem"], tls_server_name="localhost",
                          retries=0, timeout=60) as c:
            assert c.segment(small_series, outputs=["report"]).report["input"]["slices"] == 12
        with CoviaxClient(f"127.0.0.1:{st.port}", retries=0, timeout=5) as plaintext:
            assert plaintext.health(timeout=3) == "UNAVAILABLE"  # no plaintext on a TLS port
    with running_server(tmp_path / "mtls", tls_client_ca=str(certs["ca.pem"]), tokens=("t0k",), **common) as st:
        target = f"127.0.0.1:{st.port}"
        with CoviaxClient(target, tls_ca=certs["ca.pem"], client_cert=certs["client.pem"],
                          client_key=certs["client.key"], token="t0k", tls_server_name="localhost",
                          retries=0, timeout=60) as c:
            result = c.segment(small_series, outputs=["report"])
            assert c.get_job(result.job_id).state == pb.DONE
        with CoviaxClient(target, tls_ca=certs["ca.pem"], token="t0k", tls_server_name="localhost",
                          retries=0, timeout=5) as no_cert:
            with pytest.raises(CoviaxClientError) as err:
                no_cert.list_jobs()
            assert err.value.code == "UNAVAILABLE"  # the handshake fails without a client certificate


def test_configuration_from_flags_and_environment(tmp_path):
    from coviax.errors import OptionError
    from coviax_service.settings import from_env_and_flags

    env = {"COVIAX_PORT": "6000", "COVIAX_METRICS_PORT": "0", "COVIAX_DATA_DIR": str(tmp_path),
           "COVIAX_ENGINE": "unet", "COVIAX_DEVICE": "cpu", "COVIAX_LUNGS": "classical",
           "COVIAX_MAX_CONCURRENT_SCANS": "3", "COVIAX_WORKERS": "1", "COVIAX_TOKENS": "a, b"}
    config = from_env_and_flags({"port": 7000, "engine": None}, env)
    assert (config.port, config.metrics_port, config.engine, config.lungs) == (7000, 0, "unet", "classical")
    assert config.max_concurrent_scans == 3 and config.workers == 1 and config.load_tokens() == {"a", "b"}
    with pytest.raises(OptionError, match="COVIAX_ENGINE"):
        from_env_and_flags({}, {"COVIAX_ENGINE": "magic"})
    with pytest.raises(OptionError, match="COVIAX_WORKERS"):
        from_env_and_flags({}, {"COVIAX_WORKERS": "two"})
    with pytest.raises(OptionError, match="needs both"):
        from_env_and_flags({}, {"COVIAX_TLS_CERT": str(tmp_path)})


def test_serve_is_a_coviax_subcommand():
    from coviax.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "50051", "--metrics-port", "9090", "--data-dir", "/tmp/x"])
    assert (args.port, args.metrics_port, args.data_dir) == (50051, 9090, "/tmp/x")


def test_retention_removes_old_artifacts(tmp_path, small_series):
    with running_server(tmp_path / "data", retention_max_bytes=1) as st:
        with CoviaxClient(f"127.0.0.1:{st.port}", retries=0, timeout=60) as c:
            first = c.segment(small_series, outputs=["report"])
            wait_for(lambda: c.get_job(first.job_id).artifacts_expired, timeout=10, what="retention")
            with pytest.raises(CoviaxClientError) as err:
                c.download(first.job_id, "report", tmp_path)
            assert err.value.code == "NOT_FOUND" and "retention" in err.value.message
            job = c.get_job(first.job_id)
            assert job.state == pb.DONE and job.result.ratios_pct.all == first.ratios_pct["all"]  # numbers stay
            assert not list((st.jobs.store.job_dir(first.job_id)).glob("out-*"))


def test_sdk_retries_unavailable_with_the_same_idempotency_key(tmp_path, small_series):
    """A server that comes up late: the SDK backs off, retries, and the scan goes through once."""
    import threading

    from service_support import free_port, tiny_unet_engine

    pytest.importorskip("torch")
    port = free_port()
    engine, _ = tiny_unet_engine(tmp_path)
    started = threading.Event()
    holder = {}

    def late_start():
        import time

        time.sleep(1.5)
        holder["cm"] = running_server(tmp_path / "data", prebuilt=engine, engine="unet", port=port)
        holder["st"] = holder["cm"].__enter__()
        started.set()

    thread = threading.Thread(target=late_start)
    thread.start()
    try:
        with CoviaxClient(f"127.0.0.1:{port}", retries=6, backoff_s=0.5, timeout=60) as c:
            result = c.segment(small_series, outputs=["report"], idempotency_key="late-server-1")
            assert started.is_set() and result.report["input"]["slices"] == 12
            assert [j.job_id for j in c.list_jobs()] == [result.job_id]  # one job, however many tries
    finally:
        thread.join(30)
        if "cm" in holder:
            holder["cm"].__exit__(None, None, None)


def test_tenants_see_only_their_own_jobs(tmp_path, small_series):
    """Issue 13 item 7: a token maps to a tenant; jobs, batches and artifacts are visible to their tenant only."""
    import hashlib

    tokens = tmp_path / "tokens"
    tokens.write_text("# TOKEN [TENANT] or sha256:HEX [TENANT]\n"
                      "token-a hospital-a\n"
                      f"sha256:{hashlib.sha256(b'token-b').hexdigest()} hospital-b\n"
                      "token-c\n")
    with running_server(tmp_path / "data", tokens_file=str(tokens)) as st:
        target = f"127.0.0.1:{st.port}"
        with CoviaxClient(target, token="token-a", retries=0, timeout=90) as a, \
                CoviaxClient(target, token="token-b", retries=0, timeout=90) as b, \
                CoviaxClient(target, token="token-c", retries=0, timeout=90) as c:
            result = a.segment(small_series, outputs=["report"], idempotency_key="shared-key")
            batch_id, events = a.submit_batch([("p1", small_series)], outputs=["report"])
            a.wait(events[0].accepted.job_id, timeout=90)
            own = {j.job_id for j in a.list_jobs()}
            assert {result.job_id, events[0].accepted.job_id} <= own
            for other in (b, c):
                assert not {j.job_id for j in other.list_jobs()} & own
                assert not other.list_jobs(batch_id=batch_id)
                for call in (lambda: other.get_job(result.job_id), lambda: other.cancel(result.job_id),
                             lambda: other.download(result.job_id, "report", tmp_path / "stolen")):
                    with pytest.raises(CoviaxClientError) as err:
                        call()
                    assert err.value.code == "NOT_FOUND" and f"no job {result.job_id!r}" in err.value.message
            # the same idempotency key in another tenant makes that tenant's own job
            theirs = b.segment(small_series, outputs=["report"], idempotency_key="shared-key")
            assert theirs.job_id != result.job_id and b.get_job(theirs.job_id).state == pb.DONE
            assert a.get_job(result.job_id).state == pb.DONE  # untouched
            assert not (tmp_path / "stolen").exists() or not list((tmp_path / "stolen").iterdir())


def test_a_malformed_token_line_is_refused_at_start(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("sha256:1234 hospital-a\n")
    with pytest.raises(Exception, match="line 1: a sha256: entry needs 64 hex digits"):
        with running_server(tmp_path / "data", tokens_file=str(tokens)):
            pass
