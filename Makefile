# Two entry points for a fresh machine: `make serve` runs the studio, `make test` runs the test suite (everything
# but the tests marked `long`, which repeat bounded tests at length; `make test-all` runs those too).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 5006
# test processes (pytest-xdist): one per core of the 2-core CI machine, each with one torch thread (tests/conftest.py)
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed

.PHONY: serve test test-all fuzz install browser postgres bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch and torchvision first, as the pinned pair: PyPI's torchvision wheels need torch's CUDA build (on this machine's
# disk for torch 2.14.1 / torchvision 0.29.1; it runs on the CPU too), and a bare requirement could pull another one
$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

# a browser that works offline: Debian's chromium (playwright drives it through executable_path)
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed: browser tests will be skipped"

# PostgreSQL for the design search's multi-machine test (Debian's server package; the test starts its own server
# in a temporary folder on a loopback port and stops it)
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || echo "postgresql could not be installed: the PostgreSQL search test will be skipped"

serve: $(STAMP)
	$(VENV)/bin/tnstudio serve --port $(PORT)

test: $(STAMP) browser postgres
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not long"

test-all: $(STAMP) browser postgres
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# the property-based tests with fresh random examples: `make test` draws the same ones on every run (a hash of each
# test, tests/conftest.py) so that what lands stays green; this is the adversarial search, run before a change lands
FUZZ_FILES := $(shell grep -l "^from hypothesis" tests/test_*.py)
fuzz: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not long" -p no:cacheprovider --hypothesis-profile=fuzz $(FUZZ_FILES)

bench: $(STAMP)
	$(PY) benchmarks/cost_latency.py
	$(PY) benchmarks/layer_speed.py
	$(PY) benchmarks/conv_speed.py
	$(PY) benchmarks/generator_speed.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
