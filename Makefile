# The two commands: `make demo` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench clean

venv: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. torch is pinned first so
# that the CPU build on local disk is used instead of a multi-GB CUDA download.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) -m streamer.demo

# Each prints JSON; figures worth keeping go to benchmarks/RESULTS.md with date and machine.
bench: venv
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/swinir.py --quick
	$(PY) benchmarks/uformer.py --quick
	$(PY) benchmarks/rvrt.py --quick
	$(PY) benchmarks/pipeline.py --quick
	$(PY) benchmarks/cli_e2e.py --frames 30
	$(PY) -m pipelines.weights.evaluate

clean:
	rm -rf $(VENV) build *.egg-info
