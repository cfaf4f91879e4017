# COViaX -- one Makefile for everything. `make test` is what CI runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test run bench eval proto clean lint

# The CPU build of torch is pinned first: a bare `torch` requirement would pull a
# multi-GB CUDA build. On a GPU machine see README "GPU install".
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[service,trainer,client,sample,test]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

run: $(STAMP)
	$(BIN)/coviax segment --sample --out out

clean:
	rm -rf out .pytest_cache
