# consul-sd-operator: one entry point for developers and CI.
#   make test   lint (ruff, mypy --strict, import-linter) and every test tier
#   make demo   the main job end to end (see README)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml simulator/pyproject.toml | sha256sum | cut -c1-12)
PYTEST_ARGS ?=

.PHONY: venv lint test test-unit generate bins cluster cluster-down demo demo-down bench bench-field-report bench-discover-once bench-churn bench-http-sd bench-freshness clean

# The Consul simulator (simulator/, distribution consul-sd-simulator) is a test and benchmark
# dependency installed here, in the same pip command as the product so one resolver sees both.
# It is deliberately NOT in pyproject.toml's dev extra: it is not published, so a dev extra naming
# it would make `pip install -e '.[dev]'` alone fetch whatever squats that name on PyPI
# (dependency confusion).
venv: $(STAMP)
$(STAMP): pyproject.toml simulator/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./simulator -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $@

lint: venv
	$(BIN)/ruff check operator simulator tests benchmarks hack tools
	$(BIN)/ruff format --check operator simulator tests benchmarks hack tools
	$(BIN)/mypy
	$(BIN)/mypy tests benchmarks tools hack/demo.py --explicit-package-bases
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

# Regenerate what is generated from the spec model (tests fail when these drift).
generate: venv
	$(BIN)/python -m tools.crd --write
	$(BIN)/python -m tools.docs --write

bins:
	hack/bins/build.sh all

cluster: venv
	$(BIN)/python -m tests.support.components cluster-up

cluster-down: venv
	$(BIN)/python -m tests.support.components cluster-down

# The whole benchmark suite (~33 minutes on 2 cores; see docs/benchmarks.md): the field report
# side by side with Prometheus plus the cost curve, then discover_once. BENCH_ARGS go to the first
# (e.g. BENCH_ARGS="--services 7000 --anchor-runs 3 --default-limit-run"), ONCE_ARGS to the second.
BENCH_ARGS ?=
ONCE_ARGS ?= --services 7000 --instances 3 --runs 3
bench: bench-field-report bench-discover-once

bench-field-report: venv
	$(BIN)/python -m benchmarks.field_report $(BENCH_ARGS)

bench-discover-once: venv
	$(BIN)/python -m benchmarks.discover_once $(ONCE_ARGS)

# Health churn at 7000 services (a check flips every 10 s), 3 runs, 270 s windows (~70 minutes):
# the steady cost to Consul once the change gate narrows a moved checks index.
# The three output forms side by side at 7000 x 3 on real prometheus-operator and Prometheus
# (~10 minutes; see docs/benchmarks.md, "Delivery at scale").
bench-http-sd: venv
	$(BIN)/python -m benchmarks.http_sd_delivery $(BENCH_ARGS)

# Issue 15: change latency per kind under ~1 change/s of mixed churn at 7000 x 3, side by side
# (Prometheus consul_sd, Polling with and without wakeOnChange, an idle reference), with the cost
# to Consul; medians of 3 runs (~2.5 hours; see benchmarks/freshness.py). E.g.
# FRESHNESS_ARGS="--services 500 --runs 1 --churn-seconds 60" for a smoke run.
FRESHNESS_ARGS ?=
bench-freshness: venv
	$(BIN)/python -m benchmarks.freshness $(FRESHNESS_ARGS)

bench-churn: venv
	$(BIN)/python -m benchmarks.field_report --services 7000 --anchor-runs 3 \
		--systems prometheus,blocking,polling-100,prometheus-file --window 270 \
		--blocking-window 270 --no-probe --flap 10 $(BENCH_ARGS)

demo: venv
	hack/demo.sh up

demo-down:
	hack/demo.sh down

clean:
	rm -rf $(VENV) .local .mypy_cache .ruff_cache .pytest_cache
