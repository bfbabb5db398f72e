# fedstream: every target sets up what it needs itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov pins packaging<24, which pytest 9 cannot run with: it gets a virtual environment of
# its own, used by the chart tests.
TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed
# pip writes the interpreter's path as invoked into the scripts it installs: through the venv's
# real directory, so that a checkout whose .venv is a link to this one (the docs test's) leaves
# scripts that still run once that checkout is gone.
VENV_PIP = "$$(cd $(VENV) && pwd -P)/bin/python" -m pip
PYPROJECTS := core/pyproject.toml tasks/pyproject.toml cli/pyproject.toml testing/pyproject.toml \
	services/scheduler/pyproject.toml services/aggregator/pyproject.toml services/client-agent/pyproject.toml
PROTOS := $(wildcard proto/fedstream/v1/*.proto)

.PHONY: all demo test test-fast bench fuzz console-screenshots proto openapi settings-doc images push-images check-proto lint typecheck clean system-deps

all: test

$(STAMP): $(PYPROJECTS) requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "fedstream needs Python 3.11 or newer"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(VENV_PIP) install -q --upgrade pip
	# torch==2.13.0 is pinned by the tasks' distribution: a CPU wheel, never an unpinned CUDA build.
	$(VENV_PIP) install -q -r requirements-dev.txt -e core -e tasks -e 'cli[demo,data,plot]' -e testing \
		-e services/scheduler -e 'services/aggregator[distill]' -e services/client-agent
	touch $@

$(TOOLS_STAMP): requirements-tools.txt
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --upgrade pip
	$(TOOLS)/bin/python -m pip install -q -r requirements-tools.txt
	touch $@

# Servers the tests start on loopback ports of their own: Debian's redis-server and prometheus
# (whose promtool checks the alerting rules), and the browser the console's tests drive
# (chromium and chromium-driver: tests/browser, through Selenium). (The S3 server
# is moto's, installed with the Python test requirements.)
system-deps:
	@command -v redis-server >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && \
		test -x /usr/bin/chromium && test -x /usr/bin/chromedriver || { \
		echo "installing redis-server, prometheus, chromium and chromium-driver"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server prometheus \
			chromium chromium-driver >/dev/null; }

demo: $(STAMP)
	$(BIN)/fedstream demo

# The gates first: any lint or type error fails the target before a test runs. system-deps
# installed the browser: its tests fail rather than skip when it is missing.
test: lint typecheck $(STAMP) $(TOOLS_STAMP) system-deps
	FEDSTREAM_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q

# The unit tier: no process, no server, no socket; under a minute. It runs the gates too: ruff
# takes well under a second and mypy a few seconds from its cache (about a minute on a cold one).
test-fast: lint typecheck $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# bench/wan.py needs root (network namespaces, tc): without, it says why it skipped and passes.
bench: $(STAMP) system-deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/strategies.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/scale.py --state redis
	$(BIN)/python bench/api_load.py
	$(BIN)/python bench/state_writes.py
	$(BIN)/python bench/wan.py
	$(BIN)/python bench/async.py
	$(BIN)/python bench/secagg.py

# Screenshots of the web console for docs/console.md: a real federation driven in headless
# Chromium; writes docs/console/*.png.
console-screenshots: $(STAMP) system-deps
	$(BIN)/python tools/console_screenshots.py --out docs/console

# Regenerates the Python code of the wire contracts; a test fails when it is stale.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=core/src --pyi_out=core/src \
		--grpc_python_out=core/src $(PROTOS)

# Coverage-guided fuzzing (atheris) of the chunk decoder, the layout parser, the receiver and the
# headers of uploads and downloads,
# for FUZZ_SECONDS; new coverage goes to fuzz/corpus-work/, inputs that find bugs belong in
# fuzz/corpus/ (replayed by tests/unit/test_fuzz_corpus.py).
FUZZ_SECONDS ?= 120
fuzz: $(STAMP)
	mkdir -p fuzz/corpus-work
	$(BIN)/python fuzz/fuzz_wire.py -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 fuzz/corpus-work fuzz/corpus

# Container images (docker/*.Dockerfile), built from the repository root. Needs a Docker engine.
# Named [IMAGE_REGISTRY/]fedstream-<service>:IMAGE_TAG, as the charts name them from their values
# image.registry and image.tag (docs/deploy.md, "Images"): `make images push-images
# IMAGE_REGISTRY=registry.example.com/fedstream` builds and pushes what a release with
# image.registry=registry.example.com/fedstream pulls.
IMAGE_REGISTRY ?=
IMAGE_TAG ?= 0.1.0
IMAGE_PREFIX := $(if $(IMAGE_REGISTRY),$(IMAGE_REGISTRY)/)fedstream-
IMAGE_NAMES := $(IMAGE_PREFIX)scheduler:$(IMAGE_TAG) $(IMAGE_PREFIX)aggregator:$(IMAGE_TAG) \
	$(IMAGE_PREFIX)aggregator:$(IMAGE_TAG)-distill $(IMAGE_PREFIX)agent:$(IMAGE_TAG) $(IMAGE_PREFIX)agent:$(IMAGE_TAG)-cpu
images:
	docker build -f docker/scheduler.Dockerfile -t $(IMAGE_PREFIX)scheduler:$(IMAGE_TAG) .
	docker build -f docker/aggregator.Dockerfile -t $(IMAGE_PREFIX)aggregator:$(IMAGE_TAG) .
	docker build -f docker/aggregator.Dockerfile --build-arg EXTRAS=distill -t $(IMAGE_PREFIX)aggregator:$(IMAGE_TAG)-distill .
	docker build -f docker/agent.Dockerfile -t $(IMAGE_PREFIX)agent:$(IMAGE_TAG) .
	docker build -f docker/agent.Dockerfile --build-arg VARIANT=cpu -t $(IMAGE_PREFIX)agent:$(IMAGE_TAG)-cpu .

# Pushes what `make images` built (the same IMAGE_REGISTRY and IMAGE_TAG) after `docker login`.
push-images:
	@test -n "$(IMAGE_REGISTRY)" || { echo "push-images needs IMAGE_REGISTRY (e.g. IMAGE_REGISTRY=registry.example.com/fedstream)"; exit 2; }
	for image in $(IMAGE_NAMES); do docker push $$image || exit 1; done

# The admin API's OpenAPI document, committed as the contract (a test fails when it is stale).
openapi: $(STAMP)
	$(BIN)/python -m fedstream_scheduler.api.openapi > docs/openapi.json

# Every service's settings, generated from the settings models (a test fails when it is stale).
SETTINGS := fedstream_scheduler.settings:SchedulerSettings fedstream_aggregator.settings:AggregatorSettings \
	fedstream_agent.settings:AgentSettings
settings-doc: $(STAMP)
	$(BIN)/python -m fedstream.settings_doc $(SETTINGS) > docs/settings.md

# ruff over the whole tree (tests and benchmarks included). The rule set, and the reason for each
# rule family and each ignore, is in pyproject.toml under [tool.ruff.lint].
lint: $(STAMP)
	$(BIN)/ruff check .

# mypy --strict over core, tasks, cli, testing and the services (generated code aside), with the
# pydantic plugin; configured once in pyproject.toml under [tool.mypy].
typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
