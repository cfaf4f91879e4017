"""`make fuzz`: atheris on each target of tests/fuzz/targets.py for a bounded time.

    python tests/fuzz/run.py [--seconds N] [--target scan|request]

Seeds: the bundled CT's instances and their malformed-corpus variants (scan), serialised requests
(request). A crash is written to tests/fuzz/regressions/TARGET/ by libFuzzer; commit it, and
tests/test_fuzz_regressions.py replays it in `make test` from then on. Exit status non-zero if any
target found something.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent


def _seeds(target: str, folder: Path) -> None:
    sys.path[:0] = [str(TESTS), str(HERE)]
    if target == "scan":
        from malformed_corpus import cases
        from service_support import make_small_series

        import pydicom

        series = make_small_series(folder / "series", n=6)
        for f in series.glob("*.dcm"):  # findings are committed: no patient name, ID, date or time in them
            ds = pydicom.dcmread(f)
            for elem in list(ds.iterall()):
                if elem.VR in ("PN", "DA", "DT", "TM") or elem.keyword in ("PatientID", "AccessionNumber", "StudyID"):
                    elem.value = ""
            ds.save_as(f)
        for k, case in enumerate(cases(series)[::7]):
            (folder / f"seed-{k:04d}").write_bytes(case.instances[min(2, len(case.instances) - 1)])
    else:
        from coviax_api.coviax.v1 import coviax_pb2 as pb

        header = pb.Header(options=pb.SegmentOptions(lungs="auto", outputs=["report", "seg"], max_blobs=5),
                           idempotency_key="k", study_label="s", expected_instances=3)
        for k, message in enumerate((pb.SegmentRequest(header=header), pb.ListJobsRequest(state=2, page_token="100"),
                                     pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=1, data=b"x" * 40)),
                                     pb.GetJobRequest(job_id="0" * 32))):
            (folder / f"seed-{k}").write_bytes(message.SerializeToString())


def _harness(target: str, seconds: int, seeds: Path) -> int:
    artifacts = HERE / "regressions" / target
    artifacts.mkdir(parents=True, exist_ok=True)
    code = f"""
import sys
sys.path[:0] = {[str(TESTS), str(HERE)]!r}
import atheris
with atheris.instrument_imports():  # the code under test is imported here, so that it is instrumented
    import coviax.io, coviax_service.convert, coviax_service.jobs.model, coviax_service.servicer  # noqa: E401
    import targets
    targets._allowed()
atheris.Setup(sys.argv, targets.TARGETS[{target!r}])
atheris.Fuzz()
"""
    cmd = [sys.executable, "-c", code, f"-max_total_time={seconds}", f"-artifact_prefix={artifacts}/",
           "-rss_limit_mb=2560", "-timeout=25", str(seeds)]
    return subprocess.run(cmd).returncode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--target", choices=("scan", "request"), action="append")
    args = parser.parse_args()
    failed = 0
    for target in args.target or ["scan", "request"]:
        with tempfile.TemporaryDirectory() as tmp:
            seeds = Path(tmp) / "seeds"
            seeds.mkdir()
            _seeds(target, Path(tmp) if target == "scan" else seeds)
            if target == "scan":
                for f in Path(tmp).glob("seed-*"):
                    f.rename(seeds / f.name)
            rc = _harness(target, args.seconds, seeds)
            print(f"fuzz {target}: {'no finding' if rc == 0 else f'finding (exit {rc}), see tests/fuzz/regressions/'}")
            failed |= rc != 0
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
